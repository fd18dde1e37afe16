"""Convolution blocks, the plain FCN head, and a 1x1 convolution that runs on oneDNN at inference."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from segzoo.layers.tracing import is_tracing


class ConvNormAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU``; keys ``0`` (conv), ``1`` (norm) as in torchvision.

    The one conv-norm-act block of segzoo. Where a layout keeps the three modules flat in a
    larger ``nn.Sequential`` (official HRNet-OCR, torchvision's ASPP and FCN head), unpack
    it: ``nn.Sequential(*ConvNormAct(...), nn.Dropout(0.1))``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size; padding keeps the spatial size (times dilation).
        stride: convolution stride.
        dilation: convolution dilation (atrous rate).
        act: append a ReLU.
        bias: give the convolution a bias (the official OCR head has one before its norm).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        dilation: int = 1,
        act: bool = True,
        bias: bool = False,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                      bias=bias),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class FCNHead(nn.Sequential):
    """The FCN head (Long et al. 2015, torchvision layout).

    ``3x3 conv to in/4 (no bias) -> BN -> ReLU -> Dropout -> 1x1 conv to classes``, with
    torchvision's module indices (``0``, ``1``, ``4``) so converted weights map directly.
    Used as the main FCN head and as the auxiliary head of FCN, DeepLabV3 and PSPNet.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, channels: int | None = None, dropout: float = 0.1
    ) -> None:
        channels = channels or in_channels // 4
        super().__init__(
            *ConvNormAct(in_channels, channels, 3),
            nn.Dropout(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )


class SeparableConvNormAct(nn.Sequential):
    """Atrous separable convolution (DeepLabV3+): depthwise ``k x k`` conv -> BN -> ReLU ->
    pointwise 1x1 conv -> BN -> ReLU. Keys ``0``-``2`` depthwise, ``3``-``5`` pointwise.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: depthwise kernel size; padding keeps the spatial size.
        dilation: depthwise dilation (atrous rate).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, in_channels, kernel_size, padding=padding, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class OneDNNPointwiseConv2d(nn.Conv2d):
    """A 1x1, stride-1, ungrouped ``nn.Conv2d`` that runs on oneDNN (``torch.mkldnn_convolution``) at inference.

    PyTorch's CPU dispatch sends such convolutions at batch < 16 on one thread to its native
    (BLAS) kernel, which took twice oneDNN's time on the AMD EPYC measured for HRNet's wide 1x1
    convolutions (720 -> 720 channels at 64 x 64: 152 against 72 ms) and keeps channels_last
    outputs either way. The same weights and parameters (the ``state_dict`` is unchanged); float32
    CPU inputs with gradients off and no autocast or tracing take oneDNN, anything else
    ``nn.Conv2d``'s own forward.
    """

    @staticmethod
    def eligible(conv: nn.Module) -> bool:
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.padding in ((0, 0), "valid") and conv.dilation == (1, 1) and conv.groups == 1
                and conv.padding_mode == "zeros")

    @classmethod
    def swap_in(cls, modules: Iterable[nn.Module]) -> int:
        """Switch every :meth:`eligible` float32 CPU convolution among ``modules`` to this class in place (the
        same parameters and ``state_dict`` keys); how many. None without oneDNN."""
        if not torch.backends.mkldnn.is_available():
            return 0
        done = 0
        for m in modules:
            if cls.eligible(m) and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu":
                m.__class__ = cls
                done += 1
        return done

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dtype == torch.float32 and x.device.type == "cpu" and self.weight.dtype == torch.float32
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and not is_tracing()):
            return torch.mkldnn_convolution(x, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1)
        return super().forward(x)
