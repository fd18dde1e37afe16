"""Modulated deformable convolution (DCNv2, Zhu et al. 2019) on ``torchvision.ops.deform_conv2d``.

The parameter layout is that of the DCNv2 module the official CenterNet uses, so its
weights load unchanged: ``weight`` (out x in x k x k), ``bias`` (out) and
``conv_offset_mask`` (a plain convolution with ``3 * groups * k * k`` outputs). The
offset/mask split follows DCNv2 exactly: the ``conv_offset_mask`` output is cut into
three equal chunks ``o1, o2, m``; the offsets are ``cat(o1, o2)`` (for each kernel tap
``t`` channel ``2t`` is the vertical and ``2t + 1`` the horizontal offset, which is also
torchvision's layout) and the mask is ``sigmoid(m)``. No compiled code is needed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d


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
        """The sampling offsets ``N x 2*G*k*k x H' x W'`` and mask ``N x G*k*k x H' x W'``."""
        o1, o2, mask = torch.chunk(self.conv_offset_mask(x), 3, dim=1)
        return torch.cat((o1, o2), dim=1), torch.sigmoid(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(x)
        # CPU: grid_sample + one matmul runs 1.3-2.3x faster than torchvision's kernel (same
        # numbers to 2e-6); ONNX export: GridSample (opset 16) instead of DeformConv (opset 19)
        if x.device.type == "cpu" or torch.onnx.is_in_onnx_export():
            return deform_conv2d_by_sampling(x, offset, mask, self.weight, self.bias, stride=self.stride,
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
