"""Pyramid Pooling Module (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.aspp import check_pooled_batch
from segzoo.layers.conv import ConvNormAct
from segzoo.layers.upsampled_conv import UpsampledConcatConv, conv_norm_affine


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


class PyramidPoolingConv(nn.Module):
    """``norm(conv(pyramid_pooling(x)))`` without the concatenation: the inference form of a
    :class:`PyramidPooling` followed by a ``k x k`` convolution (PSPNet's and UPerNet's bottleneck).

    The convolution over ``cat(x, Up(p_1), ..., Up(p_n))`` (``p_i`` the stages' ``b x b`` outputs)
    is an :class:`~segzoo.layers.upsampled_conv.UpsampledConcatConv`: the input's share stays a
    convolution over ``x`` (a plain ``nn.Conv2d``, which :mod:`segzoo.prepack` may pack) and each
    bin's share runs on its pooled map (``k * k * out_channels`` values per bin cell), spread to
    ``H x W`` by the interpolation matrices (its ``"matrix"`` way, the faster one for grids of a few
    cells). The same numbers up to float rounding, at ``out * k^2 * 3 * sum(bins)`` multiply-adds per
    output pixel in place of ``out * k^2 * len(bins) * channels`` (18k instead of 9.4M for PSPNet-R50).
    All bins' average pooling comes from one pass over ``x`` (:func:`_pool`).

    Input ``N x C x H x W``; output what ``norm(conv(ppm(x)))`` gives, ``N x out_channels x H x W``.

    Args:
        ppm: the pyramid pooling module; its stages (pool -> 1x1 conv -> norm -> ReLU) are kept.
        conv: the convolution over ``ppm``'s output: stride 1, one group, odd kernel, zero padding
            that keeps the size (``dilation * (k - 1) / 2``), ``ppm.out_channels`` input channels.
        norm: an eval ``BatchNorm2d`` (or ``Identity``) after ``conv`` to fold in; None: ``conv`` alone.
        spread: how the bins' shares are spread (:class:`~segzoo.layers.upsampled_conv.UpsampledConcatConv`).
    """

    def __init__(self, ppm: PyramidPooling, conv: nn.Conv2d, norm: nn.Module | None = None, *,
                 spread: str = "matrix") -> None:
        super().__init__()
        k, d = conv.kernel_size, conv.dilation
        same = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
        if (type(conv) is not nn.Conv2d or conv.groups != 1 or conv.stride != (1, 1) or conv.padding_mode != "zeros"
                or isinstance(conv.padding, str) or tuple(conv.padding) != same or any(kk % 2 == 0 for kk in k)
                or conv.in_channels != ppm.out_channels):
            raise ValueError(f"PyramidPoolingConv takes a stride-1, one-group, odd-kernel nn.Conv2d with size-keeping "
                             f"zero padding over the {ppm.out_channels} pooled channels; got {conv}")
        if norm is None:
            weight, bias = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
        else:
            affine = conv_norm_affine(conv, norm)
            if affine is None:
                raise ValueError(f"PyramidPoolingConv folds an eval BatchNorm2d or an Identity, got {norm}")
            weight, bias = (t.to(conv.weight.dtype) for t in affine)
        widths = [stage[1].out_channels for stage in ppm.stages]
        self.stages, self.bins = ppm.stages, ppm.bins
        self.conv = UpsampledConcatConv(weight, bias, [ppm.out_channels - sum(widths), *widths], dilation=d,
                                        spread=[spread] * len(widths))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 1 in self.bins:
            check_pooled_batch(x, self.stages[self.bins.index(1)][2], "PyramidPooling's 1x1 bin")
        pooled = [stage[1:](p) for stage, p in zip(self.stages, _pool(x, self.bins))]  # (N, c, b, b) each
        return self.conv(x, pooled)


def _pool(x: torch.Tensor, bins: Sequence[int]) -> list[torch.Tensor]:
    """``adaptive_avg_pool2d(x, b)`` for every ``b`` in ``bins`` from one pass over ``x``: the averaging
    matrices of all bins stacked (``sum(bins)`` rows each way), then each bin's block. Export-friendly
    (matrix products with dynamic height and width), one path for eager and export."""
    rows = torch.cat([_bin_matrix(x.shape[-2], b, x) for b in bins])  # (B, H), B = sum(bins)
    cols = torch.cat([_bin_matrix(x.shape[-1], b, x) for b in bins])  # (B, W)
    if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        pooled = torch.matmul(torch.matmul(x, cols.T).transpose(-1, -2), rows.T)  # (N, C, B cols, B rows)
    else:  # channels_last: the same products on the (N, H, W, C) storage, without copying x
        n, c, h, _ = x.shape
        y = torch.matmul(cols, x.permute(0, 2, 3, 1))  # (N, H, B cols, C)
        y = torch.matmul(rows, y.reshape(n, h, -1))  # (N, B rows, B cols C)
        pooled = y.view(n, rows.shape[0], cols.shape[0], c).permute(0, 3, 2, 1)  # (N, C, B cols, B rows)
    starts = [sum(bins[:i]) for i in range(len(bins))]
    return [pooled[:, :, s:s + b, s:s + b].transpose(-1, -2) for s, b in zip(starts, bins)]


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
