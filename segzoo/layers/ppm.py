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


class PyramidPoolingConv(nn.Module):
    """``conv(pyramid_pooling(x))`` without the concatenation: the inference form of a
    :class:`PyramidPooling` followed by a ``k x k`` convolution (PSPNet's bottleneck).

    Convolution and bilinear upsampling are both linear, so the convolution of an upsampled
    ``b x b`` map equals the upsampled, shifted sum of its ``k * k`` kernel taps applied on the
    ``b x b`` map. The input's share of the weight stays a convolution over ``x`` (a plain
    ``nn.Conv2d``, which :mod:`segzoo.prepack` may pack); each bin's share runs on its pooled
    map (``k * k * out_channels`` values per bin cell) and is spread to ``H x W`` by two small
    matrix products with the interpolation matrices (rows, then columns; bilinear upsampling is
    separable), shifted per tap and zero outside the map as the convolution's padding is. The
    same numbers up to float rounding, at ``out * k^2 * 3 * sum(bins)`` multiply-adds per output
    pixel in place of ``out * k^2 * len(bins) * channels`` (18k instead of 9.4M for PSPNet-R50).

    Input ``N x C x H x W``; output what ``conv(ppm(x))`` gives, ``N x out_channels x H x W``.

    Args:
        ppm: the pyramid pooling module; its stages (pool -> 1x1 conv -> norm -> ReLU) are kept.
        conv: the convolution over ``ppm``'s output: stride 1, one group, zero padding that keeps
            the size (``dilation * (k - 1) / 2``), ``ppm.out_channels`` input channels.
    """

    def __init__(self, ppm: PyramidPooling, conv: nn.Conv2d) -> None:
        super().__init__()
        k, d = conv.kernel_size, conv.dilation
        same = tuple(dd * (kk - 1) // 2 for kk, dd in zip(k, d))
        if (type(conv) is not nn.Conv2d or conv.groups != 1 or conv.stride != (1, 1) or conv.padding_mode != "zeros"
                or isinstance(conv.padding, str) or tuple(conv.padding) != same or any(kk % 2 == 0 for kk in k)
                or conv.in_channels != ppm.out_channels):
            raise ValueError(f"PyramidPoolingConv takes a stride-1, one-group, odd-kernel nn.Conv2d with size-keeping "
                             f"zero padding over the {ppm.out_channels} pooled channels; got {conv}")
        widths = [stage[1].out_channels for stage in ppm.stages]
        in_channels = ppm.out_channels - sum(widths)
        self.stages, self.bins = ppm.stages, ppm.bins
        self.kernel_size, self.dilation, self.padding = tuple(k), tuple(d), same
        weight = conv.weight.detach()
        self.conv = nn.Conv2d(in_channels, conv.out_channels, k, padding=same, dilation=d, bias=conv.bias is not None,
                              device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(weight[:, :in_channels])
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)
        self.conv.requires_grad_(conv.weight.requires_grad)
        # per bin: (channels, out * kh * kw), columns ordered (out, tap row, tap column)
        starts = [in_channels + sum(widths[:i]) for i in range(len(widths))]
        for i, (start, width) in enumerate(zip(starts, widths)):
            tap = weight[:, start:start + width].permute(1, 0, 2, 3).reshape(width, -1)
            self.register_buffer(f"taps{i}", tap.contiguous().clone())

    def _spread(self, size: int, bins: int, axis: int, like: torch.Tensor) -> torch.Tensor:
        """``size x k x bins``: output position, tap, bin cell -> the upsampled value's weight at
        the tap's shifted position (zero in the padding), from ``F.interpolate`` itself."""
        k, d, pad = self.kernel_size[axis], self.dilation[axis], self.padding[axis]
        eye = torch.eye(bins, device=like.device, dtype=like.dtype)[None, :, :, None]  # one-hot cells, (1, b, b, 1)
        if axis == 0:
            up = F.interpolate(eye, size=(size, 1), mode="bilinear", align_corners=False)[0, :, :, 0].T
        else:
            up = F.interpolate(eye.transpose(2, 3), size=(1, size), mode="bilinear", align_corners=False)[0, :, 0].T
        up = F.pad(up, (0, 0, pad, pad))  # (size + 2 pad, bins): zero rows where the conv pads
        return torch.stack([up[t * d:t * d + size] for t in range(k)], dim=1)  # (size, k, bins)

    def _pool(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``adaptive_avg_pool2d(x, b)`` for every bin from one pass over ``x``: the averaging
        matrices of all bins stacked (``sum(bins)`` rows each way), then each bin's block."""
        rows = torch.cat([_bin_matrix(x.shape[-2], b, x) for b in self.bins])  # (B, H), B = sum(bins)
        cols = torch.cat([_bin_matrix(x.shape[-1], b, x) for b in self.bins])  # (B, W)
        pooled = torch.matmul(torch.matmul(x, cols.T).transpose(-1, -2), rows.T)  # (N, C, B cols, B rows)
        starts = [sum(self.bins[:i]) for i in range(len(self.bins))]
        return [pooled[:, :, s:s + b, s:s + b].transpose(-1, -2) for s, b in zip(starts, self.bins)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if 1 in self.bins:
            check_pooled_batch(x, self.stages[self.bins.index(1)][2], "PyramidPooling's 1x1 bin")
        n, _, h, w = x.shape
        out = self.conv(x)  # (N, O, H, W): the input's share, with the bias
        o = out.shape[1]
        kh, kw = self.kernel_size
        rows_spread, cols = [], []
        for i, (b, stage, pooled) in enumerate(zip(self.bins, self.stages, self._pool(x))):
            p = stage[1:](pooled)  # (N, c, b, b): the stage's 1x1 conv -> norm -> ReLU
            taps = getattr(self, f"taps{i}").to(p.dtype)  # (c, O kh kw)
            q = torch.matmul(p.flatten(2).transpose(1, 2), taps).view(n, b, b, o, kh, kw)  # (N, b rows, b cols, O, ...)
            q = q.permute(0, 3, 4, 1, 5, 2).reshape(n, o, kh * b, kw * b)  # (N, O, (tap row, b row), (tap col, b col))
            rows = self._spread(h, b, 0, q).reshape(h, kh * b)  # (H, (tap row, b row))
            rows_spread.append(torch.matmul(rows, q))  # (N, O, H, (tap col, b col))
            cols.append(self._spread(w, b, 1, q).reshape(w, kw * b))
        spread = torch.cat(rows_spread, dim=-1).reshape(n * o * h, kw * sum(self.bins))  # (N O H, S)
        cols_t = torch.cat(cols, dim=-1).T  # (S, W)
        if out.is_contiguous():  # one product and sum: (N O H, W) + (N O H, S) @ (S, W)
            return torch.addmm(out.view(n * o * h, w), spread, cols_t).view(n, o, h, w)
        return out + (spread @ cols_t).view(n, o, h, w)  # channels_last convolution output


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
