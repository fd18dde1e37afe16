"""Region Proposal Network (Ren et al., "Faster R-CNN", NeurIPS 2015) over FPN levels, batched.

Proposals for the whole batch come out as one flat ``(R, 4)`` tensor with an ``(R,)``
image index, grouped by image and sorted by decreasing objectness inside each image:
the layout ``torchvision.ops.roi_align`` takes, with no per-image loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.detection.anchors import AnchorGenerator
from segzoo.detection.box_coder import BoxCoder
from segzoo.detection.boxes import (
    clip_boxes,
    group_major_order,
    min_size_mask,
    nms_by_group,
    pairwise_iou,
    rank_in_group,
)
from segzoo.detection.matcher import BELOW_LOW, BETWEEN, BalancedSampler, Matcher


@dataclasses.dataclass(frozen=True)
class TrainTest:
    """A count that differs between train mode and eval mode (torchvision's ``{"training": n, "testing": n}``)."""

    training: int
    testing: int

    def __call__(self, training: bool) -> int:
        return self.training if training else self.testing


class RPNHead(nn.Module):
    """A 3x3 conv + ReLU shared by all levels, then 1x1 convs to objectness and box offsets.

    Input: list of ``N x C x h x w`` maps. Output: per level ``N x A x h x w`` objectness
    logits and ``N x 4A x h x w`` offsets.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in (self.conv, self.cls_logits, self.bbox_pred):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for f in features:
            t = F.relu(self.conv(f))
            logits.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return logits, deltas


def _flatten_level(logits: torch.Tensor, deltas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, A, h, w)`` and ``(N, 4A, h, w)`` -> ``(N, h*w*A)`` and ``(N, h*w*A, 4)``, anchor order."""
    n, a, h, w = logits.shape
    logits = logits.permute(0, 2, 3, 1).reshape(n, -1)  # (N, h*w*A)
    deltas = deltas.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)  # (N, h*w*A, 4)
    return logits, deltas


class RegionProposalNetwork(nn.Module):
    """RPN: anchors, head, proposal filtering and (with targets) its two losses.

    Filtering per image and level keeps the ``pre_nms_top_n`` best anchors, decodes them,
    clips them to the image, drops boxes under ``min_size`` or scoring under
    ``score_thresh``, runs NMS per level at ``nms_thresh`` and keeps the
    ``post_nms_top_n`` best per image; all images and levels go through one
    ``batched_nms``.

    Args:
        in_channels: channels of the FPN levels.
        anchor_sizes: one anchor size per level.
        aspect_ratios: anchor height / width ratios.
        pre_nms_top_n: anchors kept per level before NMS, in train and in eval mode.
        post_nms_top_n: the same for proposals kept per image after NMS.
        nms_thresh: IoU threshold of the NMS.
        fg_iou_thresh: anchors with IoU >= this are positive.
        bg_iou_thresh: anchors with IoU < this are negative.
        batch_size_per_image: anchors sampled per image for the losses.
        positive_fraction: largest share of positives among them.
        score_thresh: minimum objectness probability of a proposal.
        min_size: minimum proposal width and height in pixels.
    """

    def __init__(
        self,
        *,
        in_channels: int = 256,
        anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
        aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        pre_nms_top_n: TrainTest = TrainTest(training=2000, testing=1000),
        post_nms_top_n: TrainTest = TrainTest(training=2000, testing=1000),
        nms_thresh: float = 0.7,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
    ) -> None:
        super().__init__()
        self.anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        self.head = RPNHead(in_channels, len(aspect_ratios))
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = pre_nms_top_n
        self.post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size

    def forward(
        self,
        features: Sequence[torch.Tensor],
        image_shape: Sequence[int],
        image_sizes: torch.Tensor,
        targets: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Propose regions.

        Args:
            features: FPN maps, finest first.
            image_shape: ``(H, W)`` of the padded batch.
            image_sizes: ``(N, 2)`` height and width of each image before padding.
            targets: padded ground truth (``boxes`` ``(N, G, 4)``, ``valid`` ``(N, G)``)
                to compute the losses.

        Returns:
            ``proposals`` ``(R, 4)``, ``image_idx`` ``(R,)`` and a dict of losses (empty
            without targets).
        """
        logits, deltas = self.head(features)
        anchors = self.anchor_generator(
            image_shape, [f.shape[-2:] for f in features], features[0].dtype, features[0].device)
        flat = [_flatten_level(lg, dl) for lg, dl in zip(logits, deltas)]
        proposals, image_idx = self.filter_proposals(
            [lg.detach() for lg, _ in flat], [dl.detach() for _, dl in flat], anchors, image_sizes)
        losses = {}
        if targets is not None:
            all_logits = torch.cat([lg for lg, _ in flat], dim=1)  # (N, total anchors)
            all_deltas = torch.cat([dl for _, dl in flat], dim=1)  # (N, total anchors, 4)
            losses = self.losses(all_logits, all_deltas, torch.cat(anchors), targets)
        return proposals, image_idx, losses

    def filter_proposals(
        self, logits: list[torch.Tensor], deltas: list[torch.Tensor], anchors: list[torch.Tensor],
        image_sizes: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Best anchors per level -> decoded, clipped, filtered, NMS'd proposals per image."""
        n = logits[0].shape[0]
        pre_n = self.pre_nms_top_n(self.training)
        boxes, scores, levels = [], [], []
        for lvl, (lg, dl, anc) in enumerate(zip(logits, deltas, anchors)):
            k = min(pre_n, lg.shape[1])
            top, idx = lg.topk(k, dim=1)  # (N, k)
            sel = torch.gather(dl, 1, idx[..., None].expand(-1, -1, 4))  # (N, k, 4)
            boxes.append(self.box_coder.decode(sel, anc[idx]))
            scores.append(top)
            levels.append(torch.full((k,), lvl, dtype=torch.int64, device=lg.device))
        boxes = clip_boxes(torch.cat(boxes, dim=1), image_sizes)  # (N, T, 4)
        scores = torch.sigmoid(torch.cat(scores, dim=1))  # (N, T)
        levels = torch.cat(levels)  # (T,)
        keep = min_size_mask(boxes, self.min_size) & (scores >= self.score_thresh)  # (N, T)
        img = torch.arange(n, device=boxes.device)[:, None].expand_as(scores)
        group = img * len(logits) + levels[None, :]  # NMS within each (image, level)
        boxes, scores, img, group = boxes[keep], scores[keep], img[keep], group[keep]
        order = nms_by_group(boxes, scores, group, self.nms_thresh)  # decreasing score
        order = order[rank_in_group(img[order], n) < self.post_nms_top_n(self.training)]
        order = order[group_major_order(img[order])]  # group by image, scores still decreasing
        return boxes[order], img[order]

    def losses(
        self, logits: torch.Tensor, deltas: torch.Tensor, anchors: torch.Tensor,
        targets: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Objectness BCE and smooth-L1 box loss on sampled anchors.

        Args:
            logits: ``(N, P)``; deltas: ``(N, P, 4)``; anchors: ``(P, 4)``.
            targets: ``boxes`` ``(N, G, 4)`` and ``valid`` ``(N, G)``.
        """
        n, p = logits.shape
        gt_boxes, valid = targets["boxes"], targets["valid"]
        iou = pairwise_iou(gt_boxes, anchors[None].expand(n, -1, -1))  # (N, G, P)
        matches = self.matcher(iou, valid)  # (N, P)
        labels = torch.ones_like(matches)
        labels[matches == BELOW_LOW] = 0
        labels[matches == BETWEEN] = -1
        group = torch.arange(n, device=logits.device)[:, None].expand(n, p)
        pos, neg = self.sampler(labels.reshape(-1), group.reshape(-1), n)
        matched = torch.gather(gt_boxes, 1, matches.clamp(min=0)[..., None].expand(-1, -1, 4))  # (N, P, 4)
        flat_deltas = deltas.reshape(-1, 4)[pos]
        reg_targets = self.box_coder.encode(matched.reshape(-1, 4)[pos], anchors.repeat(n, 1)[pos])
        num_sampled = (pos.sum() + neg.sum()).clamp(min=1)
        box_loss = F.smooth_l1_loss(flat_deltas, reg_targets, beta=1 / 9, reduction="sum") / num_sampled
        sampled = pos | neg
        obj_loss = F.binary_cross_entropy_with_logits(
            logits.reshape(-1)[sampled], pos[sampled].to(logits.dtype))
        return {"loss_objectness": obj_loss, "loss_rpn_box_reg": box_loss}
