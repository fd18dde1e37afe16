"""A convolution over upsampled maps, computed on the small maps (an exact inference rewrite).

Heads such as UPerNet's fuse layer and pyramid-pooling bottleneck run a ``k x k`` convolution over
``cat(x_0, Up(x_1), ..., Up(x_n))`` where ``Up`` is bilinear resizing (``align_corners=False``) to
``x_0``'s size. The convolution splits into one term per input, and in each term the channel
mixing commutes with the resizing (both are linear, the resizing acts on each channel alone)::

    conv(Up(x))[o] = sum_t W_t Up(x)[o + t] = sum_t Up(W_t x)[o + t]        t: the k*k taps

so :class:`UpsampledConcatConv` applies the ``k*k`` tap matrices ``W_t`` as one ``1 x 1``
convolution on the small map (a ``s^2``-fold smaller matrix product for a ``s``-fold resize), then
resizes and shifts the ``k*k`` results and adds them. The shift fills zeros where a tap falls
outside the map, which is the convolution's zero padding. The resizing is separable (rows, then
columns), so each tap row is resized along the columns together and only ``k`` maps per input are
resized to the full size. Exact to float rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UpsampledConcatConv", "conv_norm_affine"]


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
        weight: ``C_out x sum(channels) x k x k`` (float; ``k`` odd), the convolution's, stride 1,
            no dilation, padding ``k // 2``, one group.
        bias: ``C_out``.
        channels: the channels of ``x_0, ..., x_n`` in the concatenation's order.

    ``forward(x0, smalls)``: ``x0`` at the output size, ``smalls`` the maps that the original
    resizes to it (bilinear, ``align_corners=False``). Inference only.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, channels: Sequence[int]) -> None:
        super().__init__()
        out, total, k, k2 = weight.shape
        if k != k2 or k % 2 == 0 or sum(channels) != total:
            raise ValueError(f"need a square odd kernel over {sum(channels)} channels, got {tuple(weight.shape)}")
        self.k, self.out_channels = k, out
        parts = weight.split(list(channels), dim=1)
        dtype = torch.float32 if weight.dtype == torch.float64 else weight.dtype
        self.first = nn.Conv2d(channels[0], out, k, padding=k // 2).to(device=weight.device, dtype=dtype)
        with torch.no_grad():
            self.first.weight.copy_(parts[0])
            self.first.bias.copy_(bias)
        # per small map, one 1x1 convolution per tap row: output channels (kx, C_out) of row ky
        self.rows = nn.ModuleList()
        for part, c in zip(parts[1:], channels[1:]):
            convs = nn.ModuleList()
            for ky in range(k):
                conv = nn.Conv2d(c, k * out, 1, bias=False).to(device=weight.device, dtype=dtype)
                with torch.no_grad():  # (C_out, c, kx) -> (kx, C_out, c)
                    conv.weight.copy_(part[:, :, ky, :].permute(2, 0, 1).reshape(k * out, c, 1, 1))
                convs.append(conv)
            self.rows.append(convs)
        self.requires_grad_(False)

    def forward(self, x0: torch.Tensor, smalls: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(smalls) != len(self.rows):
            raise ValueError(f"expected {len(self.rows)} small maps, got {len(smalls)}")
        out = self.first(x0)
        size = out.shape[-2:]
        k, r, c = self.k, self.k // 2, self.out_channels
        for convs, x in zip(self.rows, smalls):
            if k == 1:
                out.add_(F.interpolate(convs[0](x), size=size, mode="bilinear", align_corners=False))
                continue
            for ky, conv in enumerate(convs):
                u = F.interpolate(conv(x), size=(x.shape[-2], size[1]), mode="bilinear", align_corners=False)
                row = u[:, r * c:(r + 1) * c].clone()
                for kx in range(k):
                    if kx != r:
                        _shift_add(row, u[:, kx * c:(kx + 1) * c], kx - r, 3)
                full = F.interpolate(row, size=size, mode="bilinear", align_corners=False)
                _shift_add(out, full, ky - r, 2)
        return out
