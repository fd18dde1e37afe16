"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017): a dilated backbone at
output stride 8, the pyramid pooling module on the last stage and an auxiliary head on the
stage before it (loss weight 0.4), as in the paper and its official implementation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segzoo.backbones import make_backbone
from segzoo.layers import ConvNormAct, FCNHead, PyramidPooling
from segzoo.layers.ppm import PyramidPoolingConv
from segzoo.models.base import SegmentationModel
from segzoo.registry import create, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


class PSPHead(nn.Sequential):
    """Pyramid pooling -> 3x3 conv -> BN -> ReLU -> dropout -> 1x1 conv to classes.

    Input: ``N x in_channels x H x W``. Output: ``N x num_classes x H x W``.

    Args:
        in_channels: input channels (2048 for ResNet-50/101).
        num_classes: classes including background.
        bins: pyramid pooling grid sizes.
        channels: channels of the 3x3 conv after pooling (512 in the paper); each bin is
            reduced to ``in_channels // len(bins)``.
        dropout: dropout before the classifier (0.1).
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, bins: Sequence[int] = (1, 2, 3, 6),
        channels: int = 512, dropout: float = 0.1,
    ) -> None:
        ppm = PyramidPooling(in_channels, bins)
        super().__init__(
            ppm,
            ConvNormAct(ppm.out_channels, channels, 3),
            nn.Dropout2d(dropout),
            nn.Conv2d(channels, num_classes, 1),
        )

    def fold_for_inference(self) -> bool:
        """Fuse the pyramid pooling and the 3x3 conv over its concatenation into one
        :class:`~segzoo.layers.ppm.PyramidPoolingConv` (the pooled maps' share of the conv
        computed on the pooled grids): the same outputs to float rounding with the head's pooled
        half of the FLOPs gone. For inference copies (``segzoo.optimize``); False once applied."""
        if not isinstance(self[0], PyramidPooling) or type(self[1][0]) is not nn.Conv2d:
            return False
        self[0] = PyramidPoolingConv(self[0], self[1][0])
        self[1][0] = nn.Identity()  # the conv now runs inside self[0]; norm (or its folded identity) and ReLU stay
        return True


class PSPNet(SegmentationModel):
    """PSPNet: dilated backbone -> PSP head (+ auxiliary FCN head) -> upsampling.

    Input and output as in :class:`~segzoo.models.base.SegmentationModel`; with targets
    the losses are ``loss_ce``, ``loss_aux`` (weight ``aux_weight``) and ``loss``.

    Args:
        num_classes: classes including background.
        backbone: a timm model name (``features_only`` support).
        output_stride: 8 (the paper), 16 or 32.
        bins: pyramid pooling grid sizes (1, 2, 3, 6).
        channels: channels of the head's 3x3 conv (512).
        dropout: dropout before the classifiers (0.1).
        aux_loss: add the auxiliary head (3x3 conv to in/4, 256 for ResNet ``layer3``).
        aux_index: backbone feature level of the auxiliary head (-2: ResNet ``layer3``).
        aux_weight: weight of the auxiliary loss (0.4 in the paper).
        backbone_weights: local timm weights file for the backbone, or a timm tag (``"imagenet"``).
        ignore_index: label ignored by the loss.
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
        dice_weight: weight of a Dice loss added to the cross-entropy (0: none).
        **loss_options: ``class_weights``, ``ohem_thresh``, ``ohem_min_kept`` and ``loss`` of
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("classifier.3", "aux_classifier.4")

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50",
        *,
        output_stride: int = 8,
        bins: Sequence[int] = (1, 2, 3, 6),
        channels: int = 512,
        dropout: float = 0.1,
        aux_loss: bool = True,
        aux_index: int = -2,
        aux_weight: float = 0.4,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         aux_weight=aux_weight if aux_loss else 0.0, dice_weight=dice_weight, **loss_options)
        self.backbone = make_backbone(backbone, output_stride, backbone_weights)
        chs = self.backbone.head_channels  # with an HRNet body: the branches, then their concatenation
        n = len(chs)
        if not -n <= aux_index < n:
            raise ValueError(
                f"aux_index={aux_index} but the backbone returns {n} feature levels (channels "
                f"{tuple(chs)}); pass an index in [{-n}, {n - 1}]"
            )
        self.aux_index = aux_index % n
        self.classifier = PSPHead(chs[-1], num_classes, bins=bins, channels=channels, dropout=dropout)
        self.aux_classifier = (
            FCNHead(chs[self.aux_index], num_classes, dropout=dropout) if aux_loss else None
        )

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone.head_maps(self.backbone(x))
        out = self.classifier(feats[-1])
        aux = None
        if with_aux and self.aux_classifier is not None:
            aux = self.aux_classifier(feats[self.aux_index])
        return out, aux


def _pspnet(name: str, backbone: str, /, **kwargs) -> PSPNet:
    return create(PSPNet, name, {"backbone": backbone}, kwargs)


@register_model
def pspnet_resnet50(**kwargs) -> PSPNet:
    return _pspnet("pspnet_resnet50", "resnet50", **kwargs)


@register_model
def pspnet_resnet101(**kwargs) -> PSPNet:
    return _pspnet("pspnet_resnet101", "resnet101", **kwargs)


@register_model
def pspnet_mobilenetv2(**kwargs) -> PSPNet:
    """PSPNet on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return _pspnet("pspnet_mobilenetv2", "mobilenetv2_100", **kwargs)
