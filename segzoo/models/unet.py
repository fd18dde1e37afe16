"""U-Net (Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015).

Two forms:

- :class:`UNet` (``unet``): the original network with padded convolutions (and BatchNorm)
  so that the output has the input size: double 3x3 conv blocks of 64 to 1024 channels,
  four 2x2 max-pool downsamplings, four 2x2 up-convolutions that halve the channels, skip
  concatenation and a 1x1 classifier.
- :class:`UNetTimm` (``unet_resnet34``, ...): a timm encoder and a decoder of upsample ->
  concatenate skip -> two 3x3 conv blocks, one block per factor of 2 down to full
  resolution (the layout of segmentation_models_pytorch's ``Unet``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones import make_backbone
from segzoo.layers import ConvNormAct
from segzoo.layers.checkpoint import checkpoint_module
from segzoo.models.base import SegmentationModel
from segzoo.registry import create, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


class DoubleConv(nn.Sequential):
    """Two ``3x3 conv -> BN -> ReLU`` layers (padded: the spatial size is kept)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3),
            ConvNormAct(out_channels, out_channels, 3),
        )


class UpBlock(nn.Module):
    """2x2 up-convolution halving the channels, skip concatenation, double conv.

    Input: ``N x in_channels x h x w`` and the skip ``N x out_channels x 2h x 2w``.
    Output: ``N x out_channels x 2h x 2w``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))  # (N, 2 * out_channels, 2h, 2w)


class UNet(SegmentationModel):
    """The original U-Net, padded so that the output size equals the input size.

    Input and output as in :class:`~segzoo.models.base.SegmentationModel`. Inputs whose
    sides are not multiples of ``2 ** (len(channels) - 1)`` (16 by default) are padded
    inside the model and the logits are cropped back.

    Args:
        num_classes: classes including background.
        channels: widths of the encoder levels, from full resolution to the bottleneck
            (64, 128, 256, 512, 1024 in the paper); one max-pool between levels.
        ignore_index: label ignored by the loss.
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
        dice_weight: weight of a Dice loss added to the cross-entropy (0: none).
        **loss_options: ``class_weights``, ``ohem_thresh``, ``ohem_min_kept`` and ``loss`` of
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("classifier",)
    grad_checkpointing = False

    def __init__(
        self,
        num_classes: int = 21,
        *,
        channels: Sequence[int] = (64, 128, 256, 512, 1024),
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         dice_weight=dice_weight, **loss_options)
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2 or min(channels) < 1:
            raise ValueError(
                f"channels must list at least two positive widths (one per level), got {channels}"
            )
        self.size_divisibility = 2 ** (len(channels) - 1)
        self.stem = DoubleConv(3, channels[0])
        self.down = nn.ModuleList(
            DoubleConv(cin, cout) for cin, cout in zip(channels[:-1], channels[1:])
        )
        self.up = nn.ModuleList(
            UpBlock(cin, cout) for cin, cout in zip(channels[:0:-1], channels[-2::-1])
        )
        self.classifier = nn.Conv2d(channels[0], num_classes, 1)

    def set_grad_checkpointing(self, enable: bool = True) -> UNet:
        """Recompute every encoder and decoder block after the stem in backward."""
        self.grad_checkpointing = bool(enable)
        return self

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.stem(x)
        skips = []
        for block in self.down:
            skips.append(x)
            x = checkpoint_module(block, F.max_pool2d(x, 2), enabled=self.grad_checkpointing)
        for block, skip in zip(self.up, reversed(skips)):
            x = checkpoint_module(block, x, skip, enabled=self.grad_checkpointing)
        return self.classifier(x), None


class DecoderBlock(nn.Module):
    """Upsample x2 (nearest), concatenate the skip if any, two ``3x3 conv -> BN -> ReLU``.

    Input: ``N x in_channels x h x w`` and an optional skip ``N x skip_channels x 2h x 2w``.
    Output: ``N x out_channels x 2h x 2w``.
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)  # (N, in + skip channels, 2h, 2w)
        return self.conv(x)


class UNetTimm(SegmentationModel):
    """U-Net with a timm encoder.

    The decoder starts at the deepest feature map (stride ``S``) and has one
    :class:`DecoderBlock` per factor of 2 down to stride 1 (``log2(S)`` blocks); a block
    concatenates the encoder feature at its output stride when the encoder has one.
    A 3x3 conv gives the logits at full resolution. Inputs are padded to a multiple of
    ``S`` inside the model and the logits are cropped back.

    Input and output as in :class:`~segzoo.models.base.SegmentationModel`.

    Args:
        num_classes: classes including background.
        backbone: a timm model name (``features_only`` support) whose strides are powers
            of 2.
        decoder_channels: widths of the decoder blocks, deepest first, one per factor of 2
            (5 for stride-32 encoders); by default the first ``log2(S)`` of
            (256, 128, 64, 32, 16).
        backbone_weights: local timm weights file for the encoder, or a timm tag (``"imagenet"``).
        ignore_index: label ignored by the loss.
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
        dice_weight: weight of a Dice loss added to the cross-entropy (0: none).
        **loss_options: ``class_weights``, ``ohem_thresh``, ``ohem_min_kept`` and ``loss`` of
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("head",)

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet34",
        *,
        decoder_channels: Sequence[int] | None = None,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         dice_weight=dice_weight, **loss_options)
        self.backbone = make_backbone(backbone, 32, backbone_weights)
        strides, chs = self.backbone.strides, self.backbone.channels
        deepest = strides[-1]
        if any(s & (s - 1) for s in strides) or max(strides) != deepest:
            raise ValueError(
                f"U-Net needs an encoder whose strides are powers of 2 with the deepest last; "
                f"{backbone!r} has strides {tuple(strides)}"
            )
        steps = int(math.log2(deepest))
        if decoder_channels is None:
            decoder_channels = (256, 128, 64, 32, 16, 16, 16)[:steps]
        decoder_channels = tuple(int(c) for c in decoder_channels)
        if len(decoder_channels) != steps:
            raise ValueError(
                f"decoder_channels has {len(decoder_channels)} widths but encoder {backbone!r} "
                f"has stride {deepest}, which needs {steps} (one per factor of 2), e.g. "
                f"{(256, 128, 64, 32, 16, 16, 16)[:steps]}"
            )
        self.size_divisibility = deepest
        # skip_index[k]: encoder level concatenated by decoder block k (None if no level
        # has that stride); the last level with a stride wins
        self.skip_index: list[int | None] = []
        blocks, in_ch, stride = [], chs[-1], deepest
        for out_ch in decoder_channels:
            stride //= 2
            idx = max((i for i, s in enumerate(strides[:-1]) if s == stride), default=None)
            self.skip_index.append(idx)
            blocks.append(DecoderBlock(in_ch, 0 if idx is None else chs[idx], out_ch))
            in_ch = out_ch
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone(x)
        y = feats[-1]
        for block, idx in zip(self.decoder, self.skip_index):
            y = block(y, None if idx is None else feats[idx])
        return self.head(y), None


@register_model
def unet(**kwargs) -> UNet:
    return create(UNet, "unet", {}, kwargs)


def _unet(name: str, backbone: str, /, **kwargs) -> UNetTimm:
    return create(UNetTimm, name, {"backbone": backbone}, kwargs)


@register_model
def unet_resnet18(**kwargs) -> UNetTimm:
    return _unet("unet_resnet18", "resnet18", **kwargs)


@register_model
def unet_resnet34(**kwargs) -> UNetTimm:
    return _unet("unet_resnet34", "resnet34", **kwargs)


@register_model
def unet_resnet50(**kwargs) -> UNetTimm:
    return _unet("unet_resnet50", "resnet50", **kwargs)


@register_model
def unet_efficientnet_b0(**kwargs) -> UNetTimm:
    return _unet("unet_efficientnet_b0", "efficientnet_b0", **kwargs)


@register_model
def unet_convnext_tiny(**kwargs) -> UNetTimm:
    return _unet("unet_convnext_tiny", "convnext_tiny", **kwargs)


@register_model
def unet_mobilenetv2(**kwargs) -> UNetTimm:
    """U-Net on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return _unet("unet_mobilenetv2", "mobilenetv2_100", **kwargs)
