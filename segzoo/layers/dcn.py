"""Modulated deformable convolution (DCNv2, Zhu et al. 2019) on ``torchvision.ops.deform_conv2d``.

The parameter layout is that of the DCNv2 module the official CenterNet uses, so its
weights load unchanged: ``weight`` (out x in x k x k), ``bias`` (out) and
``conv_offset_mask`` (a plain convolution with ``3 * groups * k * k`` outputs). The
offset/mask split follows DCNv2 exactly: the ``conv_offset_mask`` output is cut into
three equal chunks ``o1, o2, m``; the offsets are ``cat(o1, o2)`` (for each kernel tap
``t`` channel ``2t`` is the vertical and ``2t + 1`` the horizontal offset, which is also
torchvision's layout) and the mask is ``sigmoid(m)``. No compiled code is needed: on CUDA the
layer calls torchvision's kernel, on the CPU :func:`deform_conv2d_by_gather`, and in ONNX export
:func:`deform_conv2d_by_sampling`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

from segzoo.layers.tracing import is_tracing


class ModulatedDeformConv2d(nn.Module):
    """A DCNv2 layer: offsets and modulation mask predicted from the input itself.

    Input ``N x in_channels x H x W``; output ``N x out_channels x H' x W'`` with the
    same output size as ``nn.Conv2d`` with these arguments. The offset branch starts
    at zero (offsets 0, mask 0.5), as in DCNv2.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: kernel size (int or pair).
        stride: stride.
        padding: zero padding.
        dilation: dilation.
        deformable_groups: channel groups that share one set of offsets and masks.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        deformable_groups: int = 1,
    ) -> None:
        super().__init__()
        if in_channels % deformable_groups:
            raise ValueError(
                f"in_channels={in_channels} is not divisible by deformable_groups="
                f"{deformable_groups}; choose a group count that divides the channels")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset_mask = nn.Conv2d(
            in_channels, 3 * deformable_groups * taps, self.kernel_size, self.stride,
            self.padding, self.dilation, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DCNv2's initialisation: uniform weights, zero bias, a zero offset branch."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The sampling offsets ``N x 2*G*k*k x H' x W'`` and mask ``N x G*k*k x H' x W'``.

        DCNv2's ``cat(o1, o2)`` of the first two thirds is the first ``2*G*k*k`` channels themselves: a slice of
        the branch's output, made NCHW first (a channels_last output, as in an optimized model, would leave every
        per-tap plane strided by the channel count for the sampling arithmetic that reads it).
        """
        out = self.conv_offset_mask(x).contiguous()
        split = 2 * out.shape[1] // 3
        return out[:, :split], torch.sigmoid(out[:, split:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        # ONNX export: grid_sample + one matmul (GridSample, opset 16, instead of DeformConv, opset
        # 19). CPU: a gather into a tap image + one strided oneDNN convolution, 0.34-0.59x the time
        # of the grid_sample path forward and 0.49-0.67x with backward (benchmarks.speed.dcn_paths),
        # itself faster than torchvision's CPU kernel; the same numbers to float rounding
        if torch.onnx.is_in_onnx_export():
            return deform_conv2d_by_sampling(x, offset, mask, self.weight, self.bias, stride=self.stride,
                                             padding=self.padding, dilation=self.dilation)
        if x.device.type == "cpu":
            return deform_conv2d_by_gather(x, offset, mask, self.weight, self.bias, stride=self.stride,
                                           padding=self.padding, dilation=self.dilation)
        return deform_conv2d(
            x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
            dilation=self.dilation, mask=mask)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"deformable_groups={self.deformable_groups}")


def deform_conv2d_by_sampling(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Modulated deformable convolution from ``grid_sample`` and one matrix product.

    The same numbers as ``torchvision.ops.deform_conv2d`` (DCNv2 sampling: bilinear, zero
    outside the image), built from ops every exporter knows (ONNX ``GridSample``).
    Shapes as in :func:`torchvision.ops.deform_conv2d`.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    k = kh * kw
    g = offset.shape[1] // (2 * k)  # deformable groups
    off = offset.reshape(n * g, k, 2, ho, wo)  # per tap: (dy, dx)
    ar = dict(device=x.device, dtype=x.dtype)
    base_y = (torch.arange(ho, **ar) * stride[0] - padding[0]).view(1, 1, ho, 1)
    base_x = (torch.arange(wo, **ar) * stride[1] - padding[1]).view(1, 1, 1, wo)
    tap_y = (torch.arange(kh, **ar) * dilation[0]).repeat_interleave(kw).view(1, k, 1, 1)
    tap_x = (torch.arange(kw, **ar) * dilation[1]).repeat(kh).view(1, k, 1, 1)
    py = base_y + tap_y + off[:, :, 0]  # (N*G, k, Ho, Wo) sampling rows in pixels
    px = base_x + tap_x + off[:, :, 1]
    # pixel index -> grid_sample's [-1, 1] with align_corners=False
    grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], dim=-1).view(n * g, k * ho, wo, 2)
    cols = F.grid_sample(x.reshape(n * g, c // g, h, w), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)  # (N*G, C/G, k*Ho, Wo)
    cols = cols.view(n, g, c // g, k, ho * wo)
    mask = mask.reshape(n, g, 1, k, ho * wo)
    if torch.is_grad_enabled() and (cols.requires_grad or mask.requires_grad):
        cols = cols * mask  # autograd needs the sampled values for the mask's gradient
    else:
        cols = cols.mul_(mask)  # inference: in place, no second k-times-larger tensor to allocate and fill
    out = weight.reshape(o, c * k) @ cols.reshape(n, c * k, ho * wo)  # (N, O, Ho*Wo)
    return out.view(n, o, ho, wo) + bias.view(1, o, 1, 1)


# the tap image is built and convolved band by band of output rows, so that a band stays in cache between the
# gather that writes it and the convolution that reads it: about _BAND_BYTES of taps a band, but about
# _BAND_MIN_PIXELS output pixels or more (a narrower band leaves oneDNN's convolution too few rows to block);
# as many bands as that asks, of equal heights (within one row: no sliver of a last band). Chosen by paired
# timings of whole layers at CenterNet's shapes (64 ch at 128 x 128 to 512 ch at 16 x 16, one thread): against
# the former fixed 4 MB bands 0.75-0.98x alone, but only 0.98-0.99x inside the optimized ResDCN-18 and DLA-34
_BAND_BYTES = 2 << 20
_BAND_MIN_PIXELS = 384


def _band_starts(rows: int, width: int, row_bytes: int) -> list[int]:
    """Where the bands start, and ``rows`` last: ``rows`` output rows of ``width`` pixels whose taps take
    ``row_bytes`` bytes a pixel, in as many bands as the two bounds ask, of heights that differ by one row at most."""
    band = max(1, _BAND_BYTES // (row_bytes * width), -(-_BAND_MIN_PIXELS // width))
    bands = -(-rows // band)
    return [i * rows // bands for i in range(bands + 1)]


def deform_conv2d_by_gather(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Modulated deformable convolution from a gather of channel vectors and a strided convolution.

    The same numbers as ``torchvision.ops.deform_conv2d`` (DCNv2 sampling: bilinear, a corner
    outside the image counts as zero), faster on CPU than :func:`deform_conv2d_by_sampling`.
    The four bilinear corners of every kernel tap are found once, with the modulation mask
    folded into their weights; every sample is one weighted sum of four contiguous channel
    vectors of the channels-last input (``embedding_bag``). The samples of output pixel
    ``(i, j)`` and tap ``(a, b)`` go to pixel ``(kh*i + a, kw*j + b)`` of a tap image, so that
    the weight applied with stride ``(kh, kw)`` (one oneDNN convolution) gives the output.
    The input gets a zero border (one pixel before, two after) and sampling positions are
    clamped into ``[-1, H] x [-1, W]``, which changes no value (no position outside that range
    has a corner inside the image) and keeps every corner inside the bordered image.
    Differentiable in all its inputs. Shapes as in :func:`torchvision.ops.deform_conv2d`.
    """
    n, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    if n * ho * wo == 0:  # nothing to sample: the sampling path gives the empty output (and its autograd graph)
        return deform_conv2d_by_sampling(x, offset, mask, weight, bias, stride=stride, padding=padding,
                                         dilation=dilation)
    k = kh * kw
    g = offset.shape[1] // (2 * k)  # deformable groups
    hp, wp = h + 3, w + 3  # the zero-bordered image
    ar = dict(device=x.device, dtype=x.dtype)
    off = offset.view(n, g, kh, kw, 2, ho, wo)
    base_y = (torch.arange(ho, **ar) * stride[0] + (1 - padding[0])).view(ho, 1)  # bordered pixels
    base_x = (torch.arange(wo, **ar) * stride[1] + (1 - padding[1])).view(1, wo)
    tap_y = (torch.arange(kh, **ar) * dilation[0]).view(kh, 1, 1, 1)
    tap_x = (torch.arange(kw, **ar) * dilation[1]).view(kw, 1, 1)
    # (N, G, kh, kw, Ho, Wo): positions in the bordered image, clamped; their floor and fraction
    py = (off[..., 0, :, :] + (base_y + tap_y)).clamp_(0, h + 1)
    px = (off[..., 1, :, :] + (base_x + tap_x)).clamp_(0, w + 1)
    y0, x0 = py.floor(), px.floor()
    ly, lx = py - y0, px - x0
    m = mask.view(n, g, kh, kw, ho, wo)
    wy = (m - m * ly, m * ly)  # mask folded into the vertical weights
    wx = (1 - lx, lx)
    itype = torch.int32 if n * hp * wp * g < 2**31 else torch.int64
    first = (y0.to(itype) * wp + x0.to(itype)) * g
    first += (torch.arange(n, device=x.device, dtype=itype) * (hp * wp * g)).view(n, 1, 1, 1, 1, 1)
    first += torch.arange(g, device=x.device, dtype=itype).view(1, g, 1, 1, 1, 1)
    # (N, Ho, kh, Wo, kw, G, 4): one bag of four (row, weight) pairs per sample, in tap-image order
    corners = ((0, 0), (0, 1), (1, 0), (1, 1))
    to_place = (0, 4, 2, 5, 3, 1, 6)  # (N, G, kh, kw, Ho, Wo, 4) -> (N, Ho, kh, Wo, kw, G, 4)
    if is_tracing() or (torch.is_grad_enabled() and (offset.requires_grad or mask.requires_grad)):
        # autograd and compilers take no strided out= writes: stacked, then reordered
        rows = torch.stack([first + (dy * wp + dx) * g for dy, dx in corners], -1).permute(to_place)
        weights = torch.stack([wy[dy] * wx[dx] for dy, dx in corners], -1).permute(to_place)
    else:  # eager inference: each corner written straight into its place
        rows = torch.empty(n, ho, kh, wo, kw, g, 4, device=x.device, dtype=itype)
        weights = torch.empty(n, ho, kh, wo, kw, g, 4, **ar)
        for i, (dy, dx) in enumerate(corners):
            torch.add(first, (dy * wp + dx) * g, out=rows[..., i].permute(0, 5, 2, 4, 1, 3))
            torch.mul(wy[dy], wx[dx], out=weights[..., i].permute(0, 5, 2, 4, 1, 3))
    bordered = x.new_empty(n, hp, wp, c)  # only the border zeroed: the inside is written once, by the copy
    bordered[:, 1:h + 1, 1:w + 1] = x.permute(0, 2, 3, 1)
    for edge in (bordered[:, :1], bordered[:, h + 1:], bordered[:, 1:h + 1, :1], bordered[:, 1:h + 1, w + 1:]):
        edge.zero_()
    table = bordered.view(n * hp * wp * g, c // g)
    per_row = kh * wo * kw * g * 4  # bag entries of one output row
    rows, weights = rows.reshape(n * ho, per_row), weights.reshape(n * ho, per_row)
    starts = _band_starts(n * ho, wo, k * c * x.element_size())  # output rows (of all images, stacked)
    outs = []
    for r, end in zip(starts, starts[1:]):
        taps = F.embedding_bag(rows[r:end].view(-1, 4), table, mode="sum",
                               per_sample_weights=weights[r:end].view(-1, 4))
        image = taps.view(1, (end - r) * kh, wo * kw, c).permute(0, 3, 1, 2)  # channels-last tap image
        outs.append(F.conv2d(image, weight, bias, stride=(kh, kw)))
    out = torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]  # (1, O, N*Ho, Wo)
    return out.view(o, n, ho, wo).transpose(0, 1) if out.is_contiguous() else (
        out.permute(0, 2, 3, 1).reshape(n, ho, wo, o).permute(0, 3, 1, 2))
