"""Pyramid Pooling Module (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.aspp import check_pooled_batch
from segzoo.layers.conv import ConvNormAct


class PyramidPooling(nn.Module):
    """Average-pool the feature map into ``b x b`` bins for each ``b`` in ``bins``, reduce
    each with 1x1 conv -> BN -> ReLU, upsample back and concatenate with the input.

    Input: ``N x in_channels x H x W``. Output: ``N x out_channels x H x W`` with
    ``out_channels = in_channels + len(bins) * channels``.

    Args:
        in_channels: input channels (2048 for a ResNet-50).
        bins: pooled grid sizes (1, 2, 3, 6 in the paper).
        channels: channels per bin after the 1x1 reduction; ``in_channels // len(bins)``
            by default (512 for 2048 channels and four bins, as in the paper).
    """

    def __init__(
        self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), channels: int | None = None
    ) -> None:
        super().__init__()
        bins = tuple(int(b) for b in bins)
        if not bins or min(bins) < 1:
            raise ValueError(f"PyramidPooling bins must be positive ints, got {bins}")
        channels = channels or in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *ConvNormAct(in_channels, channels, 1)) for b in bins
        )
        self.bins = bins
        self.out_channels = in_channels + len(bins) * channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 1 in self.bins:
            check_pooled_batch(x, self.stages[self.bins.index(1)][2], "PyramidPooling's 1x1 bin")
        size = x.shape[-2:]
        exporting = torch.compiler.is_exporting()
        pooled = [
            F.interpolate(stage[1:](adaptive_avg_pool(x, b)) if exporting else stage(x), size=size,
                          mode="bilinear", align_corners=False)
            for b, stage in zip(self.bins, self.stages)
        ]
        return torch.cat([x, *pooled], dim=1)  # (N, C + len(bins) * channels, H, W)


def _bin_matrix(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``bins x size``: row ``i`` averages ``[floor(i size / bins), ceil((i + 1) size / bins))``,
    the windows of ``adaptive_avg_pool2d``."""
    i = torch.arange(bins, device=like.device)
    start = i * size // bins
    end = ((i + 1) * size + bins - 1) // bins
    pos = torch.arange(size, device=like.device)
    inside = (pos >= start[:, None]) & (pos < end[:, None])  # (bins, size)
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def adaptive_avg_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, bins)`` written as two averaging matrices.

    The same windows and values (up to summation order) from ops that export with dynamic
    height and width: ONNX has no adaptive pooling, and the exporter's decomposition fixes
    the windows to the traced size. Input ``N x C x H x W``; output ``N x C x bins x bins``.
    """
    rows = _bin_matrix(x.shape[-2], bins, x)  # (bins, H)
    cols = _bin_matrix(x.shape[-1], bins, x)  # (bins, W)
    return torch.einsum("ih,nchw,jw->ncij", rows, x, cols)
