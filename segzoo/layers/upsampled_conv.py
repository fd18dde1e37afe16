"""A convolution over upsampled maps, computed on the small maps (an exact inference rewrite).

Heads such as PSPNet's and UPerNet's pyramid-pooling bottleneck, UPerNet's fuse layer and SegFormer's
fuse layer run a ``k x k`` convolution over ``cat(x_0, Up(x_1), ..., Up(x_n))`` where ``Up`` is
bilinear resizing to ``x_0``'s size. The convolution splits into one term per input, and in each term
the channel mixing commutes with the resizing (both are linear, the resizing acts on each channel
alone)::

    conv(Up(x))[o] = sum_t W_t Up(x)[o + d t] = sum_t Up(W_t x)[o + d t]     t: the kernel taps, d: dilation

so :class:`UpsampledConcatConv` applies the tap matrices ``W_t`` as ``1 x 1`` convolutions on the
small map (an ``s^2``-fold smaller matrix product for an ``s``-fold resize), then resizes and shifts
the results and adds them; a shift fills zeros where a tap falls outside the map, which is the
convolution's zero padding. Bilinear resizing is separable (rows, then columns), and there are two
ways to resize and shift a small map; each head takes the one measured faster for its maps
(``python -m benchmarks.speed.spread``, docs/performance-optimize.md): PSPNet's and UPerNet's pyramid
bins ``"matrix"``, UPerNet's fuse layer ``"resize"``, SegFormer's fuse layer ``"auto"``.

- ``"matrix"``: the resize-and-shift of each axis is one matrix (output position x (tap, cell)),
  taken from ``F.interpolate`` itself on one-hot maps, so the rows are one matrix product and the
  columns of all such maps one more, added into the output (in its own layout, contiguous or
  channels_last). Best for small grids (pyramid pooling's ``b x b`` bins): its cost grows with the
  grid's side.
- ``"resize"``: ``F.interpolate`` along the columns of each tap row's result, shifted and summed,
  then along the rows, shifted into the output (``k`` full-size resizes per map). Best for large
  feature maps (its cost does not grow with the map's side).
- ``"auto"``: the matrices for a map of at most :data:`MATRIX_MAX_SIDE` cells a side, else resizing,
  chosen per call from the map's size (an export, whose sizes are symbolic, resizes).

Both give the same numbers as the convolution over the upsampled concatenation up to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

__all__ = ["MATRIX_MAX_SIDE", "SPREADS", "UpsampledConcatConv", "conv_norm_affine"]

SPREADS = ("matrix", "resize", "auto")

# "auto": the matrices for small maps up to this side, resizing above (eager; an export resizes): on
# SegFormer-B0's 1x1 fuse conv, one thread, the matrices took 7-10 ms against 17-18 resizing at 256 px
# (maps of 8-32 px) and the same within noise for the 32 px map at 512 px, while resizing was as fast or
# faster for the 64 px one (python -m benchmarks.speed.spread, docs/performance-optimize.md)
MATRIX_MAX_SIDE = 32


@torch.no_grad()
def conv_norm_affine(conv: nn.Conv2d, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Weight and bias (float64) of ``norm(conv(x))`` for an eval ``BatchNorm2d`` or ``Identity`` norm, else None."""
    weight = conv.weight.double()
    bias = conv.bias.double() if conv.bias is not None else weight.new_zeros(conv.out_channels)
    if isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats:
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = norm.bias.double() if norm.bias is not None else torch.zeros_like(scale)
        return weight * scale.view(-1, 1, 1, 1), (bias - norm.running_mean.double()) * scale + shift
    if isinstance(norm, nn.Identity):
        return weight, bias
    return None


def _shift_add(out: torch.Tensor, u: torch.Tensor, d: int, dim: int) -> None:
    """``out[..., o, ...] += u[..., o + d, ...]`` along ``dim`` (nothing where ``o + d`` is outside)."""
    n = out.shape[dim]
    if abs(d) >= n:
        return
    if d >= 0:
        out.narrow(dim, 0, n - d).add_(u.narrow(dim, d, n - d))
    else:
        out.narrow(dim, -d, n + d).add_(u.narrow(dim, 0, n + d))


class UpsampledConcatConv(nn.Module):
    """``conv(cat(x_0, Up(x_1), ..., Up(x_n)))`` from ``x_0`` and the small ``x_i`` (see the module docstring).

    Args:
        weight: ``C_out x sum(channels) x kh x kw`` (float; odd ``kh``, ``kw``), the convolution's:
            stride 1, one group, zero padding that keeps the size (``dilation * (k - 1) / 2``).
        bias: ``C_out``, or None.
        channels: the channels of ``x_0, ..., x_n`` in the concatenation's order.
        dilation: the convolution's (int or pair).
        align_corners: that of the bilinear ``Up``.
        spread: per small map, ``"matrix"``, ``"resize"`` or ``"auto"`` (module docstring); all ``"resize"``
            by default.

    ``forward(x0, smalls)``: ``x0`` at the output size, ``smalls`` the maps that the original resizes
    to it. Output ``N x C_out x H x W`` (``x0``'s size). Inference only (no gradients to the weights).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, channels: Sequence[int], *,
                 dilation: int | Sequence[int] = 1, align_corners: bool = False,
                 spread: Sequence[str] | None = None) -> None:
        super().__init__()
        out, total, kh, kw = weight.shape
        channels = [int(c) for c in channels]
        if kh % 2 == 0 or kw % 2 == 0 or not channels or sum(channels) != total:
            raise ValueError(f"need an odd kernel over {sum(channels)} channels, got {tuple(weight.shape)}")
        spread = ("resize",) * (len(channels) - 1) if spread is None else tuple(spread)
        if len(spread) != len(channels) - 1 or any(s not in SPREADS for s in spread):
            raise ValueError(f"spread: one of {SPREADS} per small map ({len(channels) - 1}), got {spread}")
        self.kernel_size, self.dilation = (kh, kw), _pair(dilation)
        self.padding = tuple(d * (k - 1) // 2 for k, d in zip(self.kernel_size, self.dilation))
        self.out_channels, self.align_corners, self.spread = out, bool(align_corners), spread
        parts = weight.detach().split(channels, dim=1)
        dtype = torch.float32 if weight.dtype == torch.float64 else weight.dtype
        kwargs = {"device": weight.device, "dtype": dtype}
        self.first = nn.Conv2d(channels[0], out, (kh, kw), padding=self.padding, dilation=self.dilation,
                               bias=bias is not None, **kwargs)
        with torch.no_grad():
            self.first.weight.copy_(parts[0])
            if bias is not None:
                self.first.bias.copy_(bias)
        # per small map, "resize": one 1x1 convolution per tap row, output channels (kx, C_out) of row ky;
        # "matrix": the taps as one 1x1 convolution weight (C_out kh kw, c), rows ordered (C_out, ky, kx)
        self.rows = nn.ModuleList()
        for i, (part, c, mode) in enumerate(zip(parts[1:], channels[1:], spread)):
            convs = nn.ModuleList()
            if mode != "resize":
                taps = part.permute(0, 2, 3, 1).reshape(-1, c, 1, 1)
                self.register_buffer(f"taps{i}", taps.to(**kwargs).contiguous())
            if mode != "matrix":
                for ky in range(kh):
                    conv = nn.Conv2d(c, kw * out, 1, bias=False, **kwargs)
                    with torch.no_grad():  # (C_out, c, kx) -> (kx, C_out, c)
                        conv.weight.copy_(part[:, :, ky, :].permute(2, 0, 1).reshape(kw * out, c, 1, 1))
                    convs.append(conv)
            self.rows.append(convs)
        self.requires_grad_(False)

    def forward(self, x0: torch.Tensor, smalls: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(smalls) != len(self.rows):
            raise ValueError(f"expected {len(self.rows)} small maps, got {len(smalls)}")
        out = self.first(x0)  # (N, O, H, W): x_0's share, with the bias
        # the matrix products in the output's own layout: (N, O, H, W) or channels_last's (N, H, W, O)
        nhwc = not out.is_contiguous() and out.is_contiguous(memory_format=torch.channels_last)
        rows_spread, cols_spread = [], []
        exporting = torch.compiler.is_exporting()
        for i, (convs, mode, x) in enumerate(zip(self.rows, self.spread, smalls)):
            if mode == "auto":
                mode = "resize" if exporting or max(x.shape[-2:]) > MATRIX_MAX_SIDE else "matrix"
            if mode == "resize":
                self._resize_add(out, convs, x)
            else:
                rows, cols = self._matrix_terms(getattr(self, f"taps{i}"), x, out.shape[-2], out.shape[-1], nhwc)
                rows_spread.append(rows)
                cols_spread.append(cols)
        if not rows_spread:
            return out
        n, o, h, w = out.shape
        cols = torch.cat(cols_spread, dim=-1)  # (W, S), S: all maps' (tap column, cell column)
        if nhwc:  # (N H, W, O) += (W, S) @ (N H, S, O), in place on the channels_last storage
            out.permute(0, 2, 3, 1).view(n * h, w, o).add_(torch.matmul(cols, torch.cat(rows_spread, dim=1)))
            return out
        spread = torch.cat(rows_spread, dim=-1).reshape(n * o * h, -1)  # (N O H, S)
        if out.is_contiguous():  # one product and sum: (N O H, W) + (N O H, S) @ (S, W)
            return torch.addmm(out.view(n * o * h, w), spread, cols.T).view(n, o, h, w)
        return out + (spread @ cols.T).view(n, o, h, w)  # another layout

    def _resize_add(self, out: torch.Tensor, convs: nn.ModuleList, x: torch.Tensor) -> None:
        """Add one small map's share to ``out`` in place by ``F.interpolate`` and shifts."""
        size = out.shape[-2:]
        (kh, kw), (dh, dw), c = self.kernel_size, self.dilation, self.out_channels
        rh, rw = kh // 2, kw // 2
        mode, ac = "bilinear", self.align_corners
        if kh == kw == 1:
            out.add_(F.interpolate(convs[0](x), size=size, mode=mode, align_corners=ac))
            return
        for ky, conv in enumerate(convs):
            u = F.interpolate(conv(x), size=(x.shape[-2], size[1]), mode=mode, align_corners=ac)  # columns only
            row = u[:, rw * c:(rw + 1) * c].clone()
            for kx in range(kw):
                if kx != rw:
                    _shift_add(row, u[:, kx * c:(kx + 1) * c], (kx - rw) * dw, 3)
            _shift_add(out, F.interpolate(row, size=size, mode=mode, align_corners=ac), (ky - rh) * dh, 2)

    def _matrix_terms(self, taps: torch.Tensor, x: torch.Tensor, h: int, w: int, nhwc: bool
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """One small map's share as ``rows @ cols.T``: ``cols`` ``W x (kw bw)`` (the column spread) and
        ``rows`` the taps spread over the output rows, ``N x O x H x (kw bw)``, or with ``nhwc``
        ``N H x (kw bw) x O``."""
        (kh, kw), o = self.kernel_size, self.out_channels
        n, _, bh, bw = x.shape
        taps = taps.to(x.dtype)
        if x.is_contiguous():  # (N, bh bw, O kh kw) as one matrix product (the transposed weight: no copy)
            q = torch.matmul(x.flatten(2).transpose(1, 2), taps.flatten(1).T)
        else:  # channels_last: the 1x1 convolution's output is that matrix already (measured faster)
            q = F.conv2d(x, taps).permute(0, 2, 3, 1).flatten(1, 2)
        q = q.unflatten(-1, (o, kh, kw)).unflatten(1, (bh, bw))  # (N, bh, bw, O, kh, kw)
        spread_rows = self._spread(h, bh, 0, q).reshape(h, kh * bh)  # (H, (tap row, cell row))
        if nhwc:
            q = q.permute(0, 4, 1, 5, 2, 3).reshape(n, kh * bh, kw * bw * o)  # (N, (ky, b row), (kx, b col, O))
            rows = torch.matmul(spread_rows, q).view(n * h, kw * bw, o)
        else:
            q = q.permute(0, 3, 4, 1, 5, 2).reshape(n, o, kh * bh, kw * bw)  # (N, O, (ky, b row), (kx, b col))
            rows = torch.matmul(spread_rows, q)  # (N, O, H, (tap col, b col))
        return rows, self._spread(w, bw, 1, q).reshape(w, kw * bw)

    def _spread(self, size: int, cells: int, axis: int, like: torch.Tensor) -> torch.Tensor:
        """``size x k x cells``: output position, tap, cell -> the upsampled value's weight at the
        tap's shifted position (zero in the padding), from ``F.interpolate`` itself."""
        k, d, pad = self.kernel_size[axis], self.dilation[axis], self.padding[axis]
        eye = torch.eye(cells, device=like.device, dtype=like.dtype)[None, :, :, None]  # one-hot cells (1, b, b, 1)
        ac = self.align_corners
        if axis == 0:
            up = F.interpolate(eye, size=(size, 1), mode="bilinear", align_corners=ac)[0, :, :, 0].T
        else:
            up = F.interpolate(eye.transpose(2, 3), size=(1, size), mode="bilinear", align_corners=ac)[0, :, 0].T
        up = F.pad(up, (0, 0, pad, pad))  # (size + 2 pad, cells): zero rows where the conv pads
        return torch.stack([up[t * d:t * d + size] for t in range(k)], dim=1)  # (size, k, cells)
