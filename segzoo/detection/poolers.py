"""Multi-level RoIAlign: each box is pooled from the FPN level that fits its size (FPN paper, eq. 1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from segzoo.detection.boxes import group_major_order, split_sizes


class MultiLevelRoIAlign(nn.Module):
    """RoIAlign from the pyramid level ``k = floor(k0 + log2(sqrt(area) / s0))``.

    ``k`` is clamped to the levels given; ``k0 = canonical_level`` (4) is the level of a
    ``canonical_scale`` (224) pixel box. Input: the FPN maps (only the first
    ``len(strides)`` are used), ``boxes`` ``(R, 4)`` and ``image_idx`` ``(R,)``. Output:
    ``(R, C, output_size, output_size)``.

    Args:
        strides: strides of the levels pooled from (P2-P5: 4, 8, 16, 32).
        output_size: side of the pooled map (7 for the box head, 14 for the mask head).
        sampling_ratio: bilinear samples per bin side (torchvision and detectron2 use 2).
        aligned: shift boxes by half a pixel (Detectron2's ``ROIAlignV2``); False matches
            torchvision's Mask R-CNN.
        canonical_scale: box side that maps to ``canonical_level``.
        canonical_level: pyramid level of a ``canonical_scale`` box.
    """

    def __init__(
        self,
        strides: Sequence[int] = (4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 2,
        aligned: bool = False,
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
    ) -> None:
        super().__init__()
        self.scales = tuple(1.0 / s for s in strides)
        self.k_min = int(round(math.log2(strides[0])))
        self.k_max = int(round(math.log2(strides[-1])))
        if self.k_max - self.k_min + 1 != len(strides):
            raise ValueError(f"strides {tuple(strides)} must be consecutive powers of two")
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level

    def levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(R,)`` level index (0 for the first level) of each box."""
        side = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        k = torch.floor(self.canonical_level + torch.log2(side / self.canonical_scale)
                        + torch.tensor(1e-6, dtype=side.dtype))
        return (k.clamp(self.k_min, self.k_max) - self.k_min).to(torch.int64)

    def forward(self, features: Sequence[torch.Tensor], boxes: torch.Tensor,
                image_idx: torch.Tensor) -> torch.Tensor:
        rois = torch.cat([image_idx[:, None].to(boxes.dtype), boxes], dim=1)  # (R, 5)
        c = features[0].shape[1]
        size = self.output_size
        if len(self.scales) == 1:
            return roi_align(features[0], rois, size, self.scales[0], self.sampling_ratio, self.aligned)
        levels = self.levels(boxes)
        out = boxes.new_zeros((boxes.shape[0], c, size, size), dtype=features[0].dtype)
        # regions grouped by level; the group sizes are the pooler's one host sync (roi_align
        # needs each level's regions as a tensor of known size)
        order = group_major_order(levels)
        sizes = split_sizes(levels, len(self.scales))
        for idx, feats, scale in zip(order.split(sizes), features, self.scales):  # one roi_align per level
            pooled = roi_align(feats, rois[idx], size, scale, self.sampling_ratio, self.aligned)
            out.index_copy_(0, idx, pooled.to(out.dtype))
        return out
