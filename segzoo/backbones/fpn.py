"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017) over any backbone's C2-C5, with P6 by max-pooling P5 as Mask R-CNN uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FPN(nn.Module):
    """Top-down pathway with lateral 1x1 and output 3x3 convolutions.

    Input: the backbone's feature maps, finest first (C2-C5 at strides 4-32 for a
    ResNet). Output: one map per input level with ``out_channels`` channels
    (P2-P5), plus P6 (``F.max_pool2d(P5, 1, stride=2)``) when ``extra_pool``.
    ``channels`` and ``strides`` describe the outputs, as for a backbone.

    Args:
        in_channels: channels of each input level.
        in_strides: stride of each input level (used only to describe the outputs).
        out_channels: channels of every output level.
        extra_pool: add the P6 level by max-pooling the coarsest output.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        in_strides: Sequence[int],
        out_channels: int = 256,
        extra_pool: bool = True,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError(f"got {len(in_channels)} in_channels but {len(in_strides)} in_strides")
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.layer_blocks = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.extra_pool = extra_pool
        strides = tuple(int(s) for s in in_strides)
        if extra_pool:
            strides = strides + (strides[-1] * 2,)
        self.strides: tuple[int, ...] = strides
        self.channels: tuple[int, ...] = (out_channels,) * len(strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(features) != len(self.inner_blocks):
            raise ValueError(f"FPN expects {len(self.inner_blocks)} feature maps, got {len(features)}")
        last = self.inner_blocks[-1](features[-1])
        outs = [self.layer_blocks[-1](last)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.inner_blocks[i](features[i])
            last = lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.layer_blocks[i](last))
        if self.extra_pool:
            outs.append(F.max_pool2d(outs[-1], 1, 2, 0))
        return outs
