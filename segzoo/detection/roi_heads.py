"""Box and mask heads of Faster / Mask R-CNN (He et al., "Mask R-CNN", ICCV 2017), batched.

Regions travel as one flat ``(R, 4)`` tensor with an ``(R,)`` image index. Class index
conventions inside the heads: the classifier has ``num_classes + 1`` outputs with
background at 0 (object class ``c`` is output ``c + 1``, torchvision's layout); the box
regressor has ``4 * num_classes`` outputs and the mask predictor ``num_classes``
channels, indexed by the 0-based class directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from segzoo.detection.box_coder import BoxCoder
from segzoo.detection.boxes import pairwise_iou
from segzoo.detection.matcher import BalancedSampler, Matcher
from segzoo.detection.poolers import MultiLevelRoIAlign
from segzoo.detection.postprocess import detect, paste_masks
from segzoo.layers.packed_linear import PackedLinears, can_pack


def mask_targets(masks: torch.Tensor, rois: torch.Tensor, mask_idx: torch.Tensor, image_hw: torch.Tensor,
                 size: int) -> torch.Tensor:
    """Ground-truth masks sampled in each region (``size x size``), batched over the images.

    The same values as torchvision's ``project_masks_on_boxes``, which runs RoIAlign (not
    aligned, adaptive sampling) on each image's own masks. There, a sample point in the last
    pixel row (``H - 1 < y <= H``) takes the edge row's value and one below (``y > H``)
    counts 0 (likewise for columns). Here all images share one canvas: ``masks`` are
    edge-padded beyond their image, which gives the first rule; the second only happens to
    regions under one pixel high (a region of height ``h >= 1`` ends at ``y2 <= H`` and
    samples strictly inside), where RoIAlign takes a single sample per output row, so the
    output rows whose sample lies below the image are zeroed (and columns alike).

    Args:
        masks: ``(K, Hp, Wp)`` float masks on the batch canvas, each edge-padded beyond its
            image (``F.pad(..., mode="replicate")``).
        rois: ``(F, 4)`` xyxy regions, clipped to their images.
        mask_idx: ``(F,)`` row of ``masks`` each region samples.
        image_hw: ``(F, 2)`` height and width of each region's image.
        size: output side (28 for Mask R-CNN).

    Returns:
        ``(F, size, size)`` targets in [0, 1].
    """
    boxes = torch.cat([mask_idx[:, None].to(rois.dtype), rois], dim=1)  # (F, 5)
    out = roi_align(masks[:, None], boxes, (size, size), 1.0)[:, 0]  # (F, M, M)
    # the sample centre of each output row/column, computed as RoIAlign does (same float ops)
    start = rois[:, :2]  # (F, 2) x1, y1
    extent = torch.clamp(rois[:, 2:] - start, min=1.0)  # (F, 2) RoIAlign's roi width, height
    step = extent / size  # (F, 2)
    cells = torch.arange(size, device=rois.device, dtype=rois.dtype)
    centre = start[:, :, None] + cells * step[:, :, None] + 0.5 * step[:, :, None]  # (F, 2, M)
    inside = centre <= image_hw.flip(1).to(rois.dtype)[:, :, None]  # (F, 2, M): x vs W, y vs H
    return out * (inside[:, 1, :, None] & inside[:, 0, None, :])  # rows by y, columns by x


class BoxHead(nn.Module):
    """Two fully connected layers with ReLU (``fc6``, ``fc7``) on flattened pooled features."""

    packed: PackedLinears | None = None  # set by fold_for_inference

    def __init__(self, in_features: int, representation_size: int = 1024) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def fold_for_inference(self) -> bool:
        """Keep ``fc6`` and ``fc7`` in oneDNN's layout for float32 CPU inference (:mod:`segzoo.layers.packed_linear`):
        the same products to float rounding, about half the time of the eager layers on one thread.
        Returns whether it applied (float32 CPU layers, oneDNN present)."""
        if not can_pack([self.fc6, self.fc7]):
            return False
        self.packed = PackedLinears([self.fc6, self.fc7], relu=True)
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (R, C*7*7)
        if self.packed is not None and self.packed.usable(x):
            return self.packed(x)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class BoxPredictor(nn.Module):
    """Classification (``num_classes + 1``, background first) and class-specific box offsets."""

    packed: tuple[PackedLinears, PackedLinears] | None = None  # set by fold_for_inference

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, num_classes * 4)

    def fold_for_inference(self) -> bool:
        """Both layers in oneDNN's packed layout for float32 CPU inference, as :meth:`BoxHead.fold_for_inference`."""
        if not can_pack([self.cls_score, self.bbox_pred]):
            return False
        self.packed = (PackedLinears([self.cls_score], relu=False), PackedLinears([self.bbox_pred], relu=False))
        return True

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a copy unpickled where the layers cannot be packed holds None for each: then the layers themselves run
        if self.packed is not None and all(p is not None and p.usable(x) for p in self.packed):
            return self.packed[0](x), self.packed[1](x)
        return self.cls_score(x), self.bbox_pred(x)


class MaskHead(nn.Module):
    """Mask branch: 3x3 convs + ReLU, a 2x2 stride-2 deconvolution + ReLU, 1x1 conv to classes.

    Input ``(R, C, 14, 14)`` pooled features; output ``(R, num_classes, 28, 28)`` logits.
    """

    def __init__(self, in_channels: int, num_classes: int, layers: Sequence[int] = (256,) * 4) -> None:
        super().__init__()
        convs, c = [], in_channels
        for width in layers:
            convs.append(nn.Conv2d(c, width, 3, padding=1))
            c = width
        self.convs = nn.ModuleList(convs)
        self.deconv = nn.ConvTranspose2d(c, c, 2, stride=2)
        self.mask_logits = nn.Conv2d(c, num_classes, 1)
        for mod in [*self.convs, self.deconv, self.mask_logits]:
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(mod.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(R, C, 14, 14)`` pooled features -> ``(R, C, 28, 28)`` features before the class layer."""
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)  # in place: no second (R, 256, 14, 14) buffer per layer
        return F.relu(self.deconv(x), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_logits(self.features(x))

    def forward_labels(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits of one class per region, ``(R, 28, 28)``: ``forward(x)[arange(R), labels]``
        without computing the other classes (the 1x1 class layer is 90 % of the head's output)."""
        feats = self.features(x)  # (R, C, 28, 28)
        weight = self.mask_logits.weight[labels, :, 0, 0]  # (R, C)
        out = torch.bmm(weight[:, None, :], feats.flatten(2))  # (R, 1, 28*28)
        return out.view(feats.shape[0], *feats.shape[-2:]) + self.mask_logits.bias[labels, None, None]


class RoIHeads(nn.Module):
    """Box head and box predictor (Faster R-CNN), with training targets and losses, and for
    Mask R-CNN the mask branch (``mask_layers``).

    Args:
        num_classes: object classes (background implicit).
        in_channels: channels of the FPN levels.
        strides: strides of the levels pooled from (P2-P5).
        representation_size: width of the two fully connected layers.
        roi_aligned: the ``aligned`` flag of RoIAlign (False as in torchvision).
        fg_iou_thresh: regions with IoU >= this are foreground.
        bg_iou_thresh: regions with IoU < this are background.
        batch_size_per_image: regions sampled per image for the losses.
        positive_fraction: largest share of foreground among them.
        score_thresh: keep detections scoring above this.
        nms_thresh: per-class NMS threshold.
        detections_per_img: most detections per image.
        mask_layers: widths of the mask head's 3x3 convs: with them, the mask branch (14x14
            RoIAlign and a :class:`MaskHead`); None: no mask branch (Faster R-CNN).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 256,
        strides: Sequence[int] = (4, 8, 16, 32),
        representation_size: int = 1024,
        roi_aligned: bool = False,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_layers: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_roi_pool = MultiLevelRoIAlign(strides, output_size=7, sampling_ratio=2, aligned=roi_aligned)
        self.box_head = BoxHead(in_channels * 7 * 7, representation_size)
        self.box_predictor = BoxPredictor(representation_size, num_classes)
        self.mask_roi_pool: MultiLevelRoIAlign | None = None
        self.mask_head: MaskHead | None = None
        if mask_layers is not None:
            self.mask_roi_pool = MultiLevelRoIAlign(strides, output_size=14, sampling_ratio=2, aligned=roi_aligned)
            self.mask_head = MaskHead(in_channels, num_classes, mask_layers)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def forward(
        self,
        features: Sequence[torch.Tensor],
        proposals: torch.Tensor,
        image_idx: torch.Tensor,
        image_sizes: torch.Tensor,
        targets: dict[str, torch.Tensor] | None = None,
        canvas: tuple[int, int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Detections (no targets) or losses (with padded targets).

        Args:
            canvas: ``(H, W)`` on which masks are pasted; the largest image size by default.

        Returns:
            Without targets: ``boxes`` ``(D, 4)``, ``scores``, ``labels`` (0-based),
            ``image_idx`` and, with the mask branch, ``masks`` ``(D, H, W)`` pasted on the
            canvas. With targets: ``loss_classifier``, ``loss_box_reg`` and ``loss_mask``.
        """
        if targets is not None:
            return self.losses(features, proposals, image_idx, targets, image_sizes)
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_idx)))
        r = proposals.shape[0]
        boxes = self.box_coder.decode(deltas.view(r, self.num_classes, 4), proposals[:, None, :])  # (R, C, 4)
        scores = F.softmax(logits, dim=-1)[:, 1:]  # (R, C), background dropped
        boxes, scores, labels, img = detect(
            boxes, scores, image_idx, image_sizes, score_thresh=self.score_thresh, nms_thresh=self.nms_thresh,
            detections_per_img=self.detections_per_img)
        out = {"boxes": boxes, "scores": scores, "labels": labels, "image_idx": img}
        if self.mask_head is not None:
            probs = self.mask_head.forward_labels(self.mask_roi_pool(features, boxes, img), labels).sigmoid()
            h, w = canvas if canvas is not None else image_sizes.max(dim=0).values.tolist()
            out["masks"] = paste_masks(probs, boxes, h, w)
        return out

    def losses(
        self, features: Sequence[torch.Tensor], proposals: torch.Tensor, image_idx: torch.Tensor,
        targets: dict[str, torch.Tensor], image_sizes: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Sample regions (ground-truth boxes added), match them and compute the losses.

        Args:
            targets: ``boxes`` ``(N, G, 4)``, ``labels`` ``(N, G)`` (0-based), ``valid``
                ``(N, G)`` and, for masks, ``masks`` ``(N * G, Hp, Wp)`` float, each
                edge-padded beyond its image (see :func:`mask_targets`).
            image_sizes: ``(N, 2)`` height and width of each image before padding.
        """
        gt_boxes, gt_labels, valid = targets["boxes"], targets["labels"], targets["valid"]
        n, g = valid.shape
        gt_img = torch.arange(n, device=valid.device)[:, None].expand(n, g)
        proposals = torch.cat([proposals, gt_boxes[valid]])
        image_idx = torch.cat([image_idx, gt_img[valid]])
        iou = pairwise_iou(proposals[:, None, :], gt_boxes[image_idx])  # (R, 1, G)
        matches = self.matcher(iou.transpose(1, 2), valid[image_idx])[:, 0]  # (R,): each region alone
        matched = matches.clamp(min=0)
        labels = torch.where(matches >= 0, gt_labels[image_idx, matched] + 1, 0)  # 0 = background
        labels = torch.where(matches == -2, -1, labels)
        pos, neg = self.sampler(labels, image_idx, n)
        keep = torch.nonzero(pos | neg).squeeze(1)
        rois, roi_img, roi_labels, roi_match = proposals[keep], image_idx[keep], labels[keep], matched[keep]
        logits, deltas = self.box_predictor(self.box_head(self.box_roi_pool(features, rois, roi_img)))
        loss_cls = F.cross_entropy(logits, roi_labels, reduction="sum") / max(len(rois), 1)
        fg = torch.nonzero(roi_labels > 0).squeeze(1)
        fg_cls = roi_labels[fg] - 1
        fg_deltas = deltas.view(len(rois), -1, 4)[fg, fg_cls]  # (F, 4)
        reg_targets = self.box_coder.encode(gt_boxes[roi_img[fg], roi_match[fg]], rois[fg])
        loss_box = F.smooth_l1_loss(fg_deltas, reg_targets, beta=1 / 9, reduction="sum") / max(len(rois), 1)
        losses = {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        if self.mask_head is not None:
            fg_rois, fg_img = rois[fg], roi_img[fg]
            mask_logits = self.mask_head(self.mask_roi_pool(features, fg_rois, fg_img))  # (F, C, M, M)
            m = mask_logits.shape[-1]
            gt_index = fg_img * g + roi_match[fg]  # row in masks (N*G, Hp, Wp)
            target = mask_targets(targets["masks"], fg_rois, gt_index, image_sizes[fg_img], m)  # (F, M, M)
            fg_logits = mask_logits[torch.arange(len(fg), device=fg.device), fg_cls]
            losses["loss_mask"] = F.binary_cross_entropy_with_logits(
                fg_logits, target, reduction="sum") / max(fg_logits.numel(), 1)  # 0 without objects
        return losses
