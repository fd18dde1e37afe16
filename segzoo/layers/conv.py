"""Convolution blocks and the plain FCN head."""

from __future__ import annotations

from torch import nn


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
