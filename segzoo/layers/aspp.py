"""Atrous Spatial Pyramid Pooling (Chen et al., "Rethinking Atrous Convolution for Semantic
Image Segmentation", 2017), in torchvision's module layout so converted weights map by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.conv import ConvNormAct, SeparableConvNormAct
from segzoo.layers.tracing import is_tracing


def check_pooled_batch(x: torch.Tensor, norm: nn.Module, what: str) -> None:
    """Raise a clear error where BatchNorm on a pooled 1x1 map would see a single value.

    In training mode BatchNorm needs more than one value per channel; an image-level
    pooling branch gives one per image, so a batch of one image cannot be normalised.
    ``norm`` is the branch's normalisation layer (frozen or eval-mode layers are fine).
    """
    training_bn = isinstance(norm, nn.modules.batchnorm._BatchNorm) and norm.training
    if training_bn and x.shape[0] == 1 and not is_tracing():
        raise ValueError(
            f"{what} has a BatchNorm on a 1x1 pooled map, which needs at least 2 images per "
            "batch in training mode; use a batch size >= 2, or call model.eval() (or freeze "
            "BatchNorm) to run one image"
        )


class ASPPPooling(nn.Sequential):
    """Image-level branch: global average pool -> 1x1 conv -> BN -> ReLU -> upsample.

    Keys ``1`` (conv) and ``2`` (BN) as in torchvision.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *ConvNormAct(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_pooled_batch(x, self[2], "ASPP's image pooling branch")
        size = x.shape[-2:]
        y = super().forward(x)  # (N, C, 1, 1)
        return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Parallel 1x1 conv, 3x3 atrous convs and image pooling, concatenated and projected.

    Input: ``N x in_channels x H x W``. Output: ``N x out_channels x H x W``.

    Module layout (torchvision's): ``convs.0`` the 1x1 branch, ``convs.1..k`` one 3x3
    branch per rate, ``convs.k+1`` the pooling branch, ``project`` the 1x1 projection
    of the concatenation followed by dropout.

    Args:
        in_channels: input channels.
        rates: atrous rates of the 3x3 branches: (12, 24, 36) at output stride 8,
            (6, 12, 18) at output stride 16.
        out_channels: channels of every branch and of the output.
        dropout: dropout after the projection (0.5 in torchvision).
        separable: atrous separable convolutions (depthwise + pointwise, DeepLabV3+) in the
            3x3 branches instead of plain atrous convolutions (DeepLabV3).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        rates: Sequence[int] = (12, 24, 36),
        out_channels: int = 256,
        dropout: float = 0.5,
        separable: bool = False,
    ) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if not rates or min(rates) < 1:
            raise ValueError(f"ASPP rates must be positive ints, got {rates}")
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1)]
        # 3x3 atrous branches: torchvision's ASPPConv layout (conv, BN, ReLU)
        branches += [SeparableConvNormAct(in_channels, out_channels, 3, r) if separable
                     else ConvNormAct(in_channels, out_channels, 3, dilation=r) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            *ConvNormAct(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout)
        )
        self.rates = rates
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([branch(x) for branch in self.convs], dim=1)  # (N, (k+2)*C, H, W)
        return self.project(y)
