"""Panoptic FPN (Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks", CVPR 2019):
Mask R-CNN plus a light semantic branch on the same FPN, merged into panoptic segments.

Class convention: ``num_classes`` counts every category, things first and stuff last:
labels ``[0, num_classes - num_stuff)`` are thing classes (what the Mask R-CNN heads detect)
and the last ``num_stuff`` labels are stuff classes. A target's ``labels`` and an output
segment's ``category`` are in this one label space. The semantic head predicts
``num_stuff + 1`` classes in detectron2's layout: 0 is "any thing" and ``1 + s`` is stuff
label ``num_things + s``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from segzoo.detection.boxes import group_counts, rank_in_group
from segzoo.detection.panoptic import combine_panoptic
from segzoo.losses import cross_entropy
from segzoo.models.base import check_num_classes
from segzoo.models.detection_base import image_shapes
from segzoo.models.mask_rcnn import FPN_STRIDES, MaskRCNN
from segzoo.registry import create, register_model

IGNORE = 255  # semantic-target value of void pixels (and of the padding)


class SemanticFPNHead(nn.Module):
    """The semantic branch of Panoptic FPN (detectron2's ``SemSegFPNHead`` layout).

    Each FPN level goes through ``max(1, log2(stride / 4))`` blocks of 3x3 conv (no bias) +
    GroupNorm(32) + ReLU, each block followed by a 2x bilinear upsampling until stride 4;
    the levels are summed and a 1x1 conv gives the class logits at stride 4.

    Input: the FPN levels at ``strides`` (P2-P5). Output: ``(N, num_classes, H/4, W/4)`` logits.

    Args:
        in_channels: channels of the FPN levels.
        strides: stride of each level, finest first.
        num_classes: output classes (detectron2: stuff classes + 1 "things" class).
        channels: width of the 3x3 convs (128 in the paper).
        common_stride: stride of the output.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], num_classes: int, channels: int = 128,
                 common_stride: int = 4) -> None:
        super().__init__()
        if channels % 32:
            raise ValueError(f"sem_seg_channels must be a multiple of 32 (GroupNorm with 32 groups), got {channels}")
        self.common_stride = common_stride
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            ops: list[nn.Module] = []
            for k in range(max(1, int(math.log2(stride) - math.log2(common_stride)))):
                ops += [nn.Conv2d(in_channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                        nn.GroupNorm(32, channels), nn.ReLU(inplace=True)]
                if stride != common_stride:
                    ops.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*ops))
        self.predictor = nn.Conv2d(channels, num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # detectron2's c2_msra_fill
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.scale_heads[0](features[0])
        for head, f in zip(self.scale_heads[1:], features[1:]):
            x = x + head(f)
        return self.predictor(x)


class PanopticFPN(MaskRCNN):
    """Panoptic FPN: :class:`~segzoo.models.mask_rcnn.MaskRCNN` plus :class:`SemanticFPNHead` on
    P2-P5, and detectron2's merge (:func:`segzoo.detection.panoptic.combine_panoptic`).

    Input: as :class:`~segzoo.models.mask_rcnn.FasterRCNN`. Output: one dict per image with

    - ``segments``: ``H x W`` int32 segment ids (0: void);
    - ``segments_info``: a list with one dict per segment, in id order: ``id`` (int),
      ``category`` (0-based label, things first), ``is_thing`` (bool), ``score`` (the
      instance's score; for stuff, the class probability averaged over the segment) and
      ``area`` (pixels);
    - the instance predictions ``boxes``, ``scores``, ``labels`` (thing labels) and ``masks``,
      as Mask R-CNN gives them.

    With ``targets`` (one dict per image: ``boxes`` K x 4, ``labels`` K in
    ``[0, num_classes)``, ``masks`` K x H x W, the image's segments, disjoint, things and stuff;
    optional ``iscrowd`` K), the output is the dict of Mask R-CNN's losses (on the non-crowd
    thing segments), ``loss_sem_seg`` (cross-entropy of the semantic head; every thing pixel,
    crowd included, is the "things" class and uncovered pixels are void) and their sum ``loss``
    with the semantic loss weighted by ``sem_seg_weight``.

    Eager inference makes two host syncs per batch (the detection counts, the segment table).

    Args:
        num_classes: every category, things then stuff (133 for COCO panoptic).
        num_stuff: how many of them (the last ones) are stuff classes (53 for COCO panoptic).
        sem_seg_channels: width of the semantic head (128).
        sem_seg_weight: weight of ``loss_sem_seg`` in ``loss`` (0.5, detectron2's and the paper's
            lambda_s; the instance losses weigh 1).
        combine_overlap_thresh: an instance overlapping the segments already placed by more than
            this fraction of its mask is dropped.
        combine_stuff_area_thresh: smallest stuff segment in pixels (4096 in detectron2, for
            ~800 x 1333 images: scale it with the image area).
        combine_score_thresh: instances scoring below this take no part in the panoptic output.
        mask_layers: widths of the mask head's 3x3 convs.
        **kwargs: :class:`~segzoo.models.mask_rcnn.FasterRCNN`'s arguments (``backbone``,
            ``fpn_channels``, the RPN and box-head settings...).
    """

    task = "panoptic"
    counts = "every category: thing classes first, then the num_stuff stuff classes"
    class_layers = ("roi_heads.box_predictor", "roi_heads.mask_head.mask_logits", "sem_seg_head.predictor")

    def __init__(
        self,
        num_classes: int = 133,
        *,
        num_stuff: int = 53,
        sem_seg_channels: int = 128,
        sem_seg_weight: float = 0.5,
        combine_overlap_thresh: float = 0.5,
        combine_stuff_area_thresh: float = 4096,
        combine_score_thresh: float = 0.5,
        mask_layers: Sequence[int] = (256, 256, 256, 256),
        **kwargs,
    ) -> None:
        num_classes = check_num_classes(num_classes, self.counts)
        if isinstance(num_stuff, bool) or not isinstance(num_stuff, int) or not 1 <= num_stuff < num_classes:
            raise ValueError(f"num_stuff must be an int in [1, num_classes - 1] = [1, {num_classes - 1}] (num_classes "
                             f"counts thing and stuff classes, things first), got {num_stuff!r}")
        if sem_seg_weight < 0 or combine_stuff_area_thresh < 0 or not 0 <= combine_overlap_thresh <= 1:
            raise ValueError("sem_seg_weight and combine_stuff_area_thresh must be >= 0 and combine_overlap_thresh in "
                             f"[0, 1], got {sem_seg_weight}, {combine_stuff_area_thresh}, {combine_overlap_thresh}")
        super().__init__(num_classes - num_stuff, mask_layers=mask_layers, **kwargs)
        self.num_classes = num_classes  # every category; the box and mask heads know num_things
        self.num_things = num_classes - num_stuff
        self.num_stuff = num_stuff
        self.sem_seg_weight = float(sem_seg_weight)
        self.combine_overlap_thresh = float(combine_overlap_thresh)
        self.combine_stuff_area_thresh = float(combine_stuff_area_thresh)
        self.combine_score_thresh = float(combine_score_thresh)
        self.sem_seg_head = SemanticFPNHead(self.fpn.channels[0], FPN_STRIDES, num_stuff + 1, sem_seg_channels)

    # ------------------------------------------------------------------ targets
    def check_targets(self, targets: Sequence[dict], shapes, need_masks: bool = True) -> list[dict]:
        """Mask R-CNN's checks with masks required and labels in ``[0, num_classes)``, plus ``iscrowd``."""
        given = [targets] if isinstance(targets, dict) else list(targets)
        checked = super().check_targets(given, shapes, need_masks=True)
        for i, (t, c) in enumerate(zip(given, checked)):
            k = len(c["labels"])
            crowd = t.get("iscrowd")
            crowd = torch.zeros(k, dtype=torch.bool, device=c["labels"].device) if crowd is None else \
                torch.as_tensor(crowd, device=c["labels"].device).reshape(-1).bool()
            if len(crowd) != k:
                raise ValueError(f"targets[{i}]['iscrowd'] has {len(crowd)} values for {k} segments; give one per "
                                 "segment (or leave it out)")
            c["iscrowd"] = crowd
        return checked

    def _pad_targets(self, targets: list[dict], shape: Sequence[int]) -> dict:
        """Padded targets of every segment -> the semantic target (``semantic``, ``(N, Hp, Wp)``) and
        the instance targets (``valid`` keeps the non-crowd things only)."""
        out = super()._pad_targets(targets, shape)
        n, g = out["valid"].shape
        crowd = pad_sequence([t["iscrowd"] for t in targets], batch_first=True)  # (N, G')
        crowd = F.pad(crowd, (0, g - crowd.shape[1]))
        labels = out["labels"]
        thing = labels < self.num_things
        covered = out["masks"].view(n, g, *shape) > 0.5  # (N, G, Hp, Wp); padding rows are empty
        value = torch.where(thing, 0, labels - self.num_things + 1)  # (N, G) semantic-head class
        first = covered.to(torch.uint8).argmax(1).flatten(1)  # (N, Hp*Wp) the segment of each pixel
        semantic = value.gather(1, first).view(n, *shape)
        out["semantic"] = torch.where(covered.any(1), semantic, IGNORE)
        out["valid"] = out["valid"] & thing & ~crowd
        return out

    # ------------------------------------------------------------------ forward
    def _semantic_logits(self, feats: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        """``(N, num_stuff + 1, Hp, Wp)`` logits of the semantic head at the padded input size."""
        logits = self.sem_seg_head(feats[: len(FPN_STRIDES)])  # P2-P5
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor],
                targets: Sequence[dict] | None = None) -> list[dict] | dict[str, torch.Tensor]:
        if self.is_empty(images):
            return self.empty_result(targets)
        if not isinstance(images, torch.Tensor):
            images = list(images)
        x, sizes = self.preprocess(images)
        shapes = image_shapes(images)  # host ints: no sync
        feats = self.features(x)
        sem_logits = self._semantic_logits(feats, x.shape[-2:])
        if targets is not None:
            padded = self._pad_targets(self.check_targets(targets, shapes), x.shape[-2:])
            proposals, image_idx, losses = self.rpn(feats, x.shape[-2:], sizes, padded)
            losses.update(self.roi_heads(feats, proposals, image_idx, sizes, padded))
            losses["loss_sem_seg"] = cross_entropy(sem_logits, padded["semantic"], IGNORE)
            losses["loss"] = sum(v for k, v in losses.items() if k != "loss_sem_seg") + \
                self.sem_seg_weight * losses["loss_sem_seg"]
            return losses
        proposals, image_idx, _ = self.rpn(feats, x.shape[-2:], sizes)
        canvas = (max(h for h, _ in shapes), max(w for _, w in shapes))
        det = self.roi_heads(feats, proposals, image_idx, sizes, canvas=canvas)
        n = len(shapes)
        above = det["image_idx"][det["scores"] >= self.combine_score_thresh]
        counts = torch.stack([group_counts(det["image_idx"], n), group_counts(above, n)]).tolist()  # host sync 1
        pan = self.merge(det, sem_logits, sizes, canvas, max(counts[1], default=0))
        # the segment table in one copy (scores travel as their int32 bits: MPS has no float64)
        m = pan["labels"].shape[1]
        table = torch.stack([pan["labels"], pan["areas"], pan["scores"].float().view(torch.int32).long(),
                             pan["num_segments"][:, None].expand(n, m)], -1).cpu()  # host sync 2
        seg_scores = table[..., 2].int().view(torch.float32).tolist()
        table = table.tolist()
        keys = ("boxes", "scores", "labels", "masks")
        parts = {k: torch.split(det[k], counts[0]) for k in keys}
        results = []
        for i, (h, w) in enumerate(shapes):
            num = table[i][0][3] if m else 0
            info = [{"id": r + 1, "category": lab, "is_thing": lab < self.num_things, "score": seg_scores[i][r],
                     "area": area} for r, (lab, area, _, _) in enumerate(table[i][:num])]
            out = {k: parts[k][i] for k in keys}
            out["masks"] = out["masks"][:, :h, :w]
            out["segments"] = pan["segments"][i, :h, :w]
            out["segments_info"] = info
            results.append(out)
        return results

    def merge(self, det: dict[str, torch.Tensor], sem_logits: torch.Tensor, image_sizes: torch.Tensor,
              canvas: Sequence[int], k: int) -> dict[str, torch.Tensor]:
        """The panoptic merge of a batch's detections and semantic logits, on an ``H x W`` canvas.

        Args:
            det: :class:`~segzoo.detection.roi_heads.RoIHeads` detections (``masks`` pasted on the
                canvas), grouped by image with decreasing scores.
            sem_logits: ``(N, num_stuff + 1, Hp, Wp)`` semantic logits (``Hp, Wp >= H, W``).
            image_sizes: ``(N, 2)`` height and width of each image; pixels outside stay void.
            canvas: ``(H, W)``.
            k: most instances per image considered (the first ``k`` by score).

        Returns:
            :func:`~segzoo.detection.panoptic.combine_panoptic`'s output.
        """
        h, w = canvas
        n = image_sizes.shape[0]
        logits = sem_logits[..., :h, :w].float()
        top, semantic = logits.max(1)  # (N, H, W)
        prob = torch.exp(top - torch.logsumexp(logits, 1))  # softmax probability of the label
        rows = torch.arange(h, device=logits.device)[None, :, None] < image_sizes[:, 0, None, None]
        cols = torch.arange(w, device=logits.device)[None, None, :] < image_sizes[:, 1, None, None]
        semantic = torch.where(rows & cols, semantic, -1)  # padding of smaller images: never painted
        img = det["image_idx"]
        rank = rank_in_group(img, n)
        rank = torch.where(rank < k, rank, k)  # the rest go to a spare row, dropped below
        masks = torch.zeros(n, k + 1, h, w, dtype=torch.bool, device=logits.device).index_put(
            (img, rank), det["masks"] >= 0.5)[:, :k]
        scores = torch.full((n, k + 1), -1.0, device=logits.device).index_put(
            (img, rank), det["scores"].float())[:, :k]
        labels = torch.zeros(n, k + 1, dtype=torch.int64, device=logits.device).index_put(
            (img, rank), det["labels"])[:, :k]
        return combine_panoptic(masks, scores, labels, semantic, prob, num_things=self.num_things,
                                num_stuff=self.num_stuff, overlap_thresh=self.combine_overlap_thresh,
                                stuff_area_thresh=self.combine_stuff_area_thresh,
                                score_thresh=self.combine_score_thresh)

    def exportable(self, max_detections: int = 100) -> PanopticExport:
        """The inference path with fixed-size outputs, for ``torch.export`` and ONNX."""
        return PanopticExport(self, max_detections)


class PanopticExport(nn.Module):
    """``images (N x 3 x H x W) -> segments, segment_labels, segment_scores, segment_areas, num_segments``.

    ``segments`` ``(N, H, W)`` int32 ids (0: void); row ``r`` of the ``(N, M)`` tables
    (``M = max_detections + num_stuff``) describes segment id ``r + 1``: ``segment_labels``
    int64 category (things ``< num_classes - num_stuff``; -1 for unused rows),
    ``segment_scores`` float, ``segment_areas`` int64 pixels; ``num_segments`` ``(N,)``: rows
    ``>= num_segments`` are unused. The same segments as ``model(images)`` when at most
    ``max_detections`` instances per image score ``>= combine_score_thresh``.
    """

    def __init__(self, model: PanopticFPN, max_detections: int = 100) -> None:
        super().__init__()
        self.model = model
        self.max_detections = max_detections

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        x, sizes = m.preprocess(images)
        feats = m.features(x)
        sem_logits = m._semantic_logits(feats, x.shape[-2:])
        proposals, image_idx, _ = m.rpn(feats, x.shape[-2:], sizes)
        canvas = tuple(images.shape[-2:])
        det = m.roi_heads(feats, proposals, image_idx, sizes, canvas=canvas)
        pan = m.merge(det, sem_logits, sizes, canvas, self.max_detections)
        return pan["segments"], pan["labels"], pan["scores"], pan["areas"], pan["num_segments"]


@register_model
def panoptic_fpn_resnet50(**kwargs) -> PanopticFPN:
    """Panoptic FPN with a ResNet-50 FPN (detectron2's panoptic_fpn_R_50; COCO: 80 things + 53 stuff).
    ``backbone="resnet101"`` gives detectron2's R-101 model."""
    return create(PanopticFPN, "panoptic_fpn_resnet50", {"backbone": "resnet50"}, kwargs)


@register_model
def panoptic_fpn_resnet18(**kwargs) -> PanopticFPN:
    """Panoptic FPN with a ResNet-18 FPN, the size a CPU can train."""
    return create(PanopticFPN, "panoptic_fpn_resnet18", {"backbone": "resnet18"}, kwargs)


@register_model
def panoptic_fpn_mobilenetv2(**kwargs) -> PanopticFPN:
    """Panoptic FPN on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return create(PanopticFPN, "panoptic_fpn_mobilenetv2", {"backbone": "mobilenetv2_100"}, kwargs)
