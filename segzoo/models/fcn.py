"""FCN (Long, Shelhamer and Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015), in torchvision's form: a dilated ResNet at output stride 8,
the FCN head on the last stage and an auxiliary FCN head on the stage before it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from segzoo.backbones import make_backbone
from segzoo.hub.published import COCO_VOC, register_weights, torchvision_entry
from segzoo.layers import FCNHead
from segzoo.models.base import SegmentationModel
from segzoo.models.converters import TORCHVISION, KeyMap, register_key_map, resnet_depth
from segzoo.registry import create, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


class FCN(SegmentationModel):
    """FCN: backbone -> FCN head (+ auxiliary FCN head) -> bilinear upsampling.

    Input and output as in :class:`~segzoo.models.base.SegmentationModel`; with targets
    the losses are ``loss_ce``, ``loss_aux`` (weight ``aux_weight``) and ``loss``.

    Args:
        num_classes: classes including background.
        backbone: a timm model name or a segzoo body (``"hrnet_w18"``). The head reads the
            deepest map and the auxiliary head the one before it; with an HRNet body the head
            reads the HRNetV2 representation (all branches at stride 4, concatenated) and the
            auxiliary head the stride-32 branch (see ``Backbone.head_maps``).
        output_stride: 8 (torchvision's FCN), 16 or 32.
        aux_loss: add the auxiliary head on the second-to-last feature level.
        aux_weight: weight of the auxiliary loss.
        dropout: dropout before the classifiers.
        backbone_weights: local timm weights file for the backbone, or a timm tag (``"imagenet"``).
        ignore_index: label ignored by the loss.
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
        dice_weight: weight of a Dice loss added to the cross-entropy (0: none).
        **loss_options: ``class_weights``, ``ohem_thresh``, ``ohem_min_kept`` and ``loss`` of
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("classifier.4", "aux_classifier.4")

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50",
        *,
        output_stride: int = 8,
        aux_loss: bool = True,
        aux_weight: float = 0.5,
        dropout: float = 0.1,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         aux_weight=aux_weight if aux_loss else 0.0, dice_weight=dice_weight, **loss_options)
        self.backbone = make_backbone(backbone, output_stride, backbone_weights, levels=2)
        chs = self.backbone.head_channels
        self.classifier = FCNHead(chs[-1], num_classes, dropout=dropout)
        self.aux_classifier = FCNHead(chs[-2], num_classes, dropout=dropout) if aux_loss else None

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone.head_maps(self.backbone(x))
        out = self.classifier(feats[-1])
        aux = None
        if with_aux and self.aux_classifier is not None:
            aux = self.aux_classifier(feats[-2])
        return out, aux


def _fcn(name: str, defaults: dict, kwargs: dict) -> FCN:
    return create(FCN, name, defaults, kwargs)


@register_model
def fcn_resnet50(**kwargs) -> FCN:
    return _fcn("fcn_resnet50", {"backbone": "resnet50"}, kwargs)


@register_model
def fcn_resnet101(**kwargs) -> FCN:
    return _fcn("fcn_resnet101", {"backbone": "resnet101"}, kwargs)


@register_model
def fcn_mobilenetv2(**kwargs) -> FCN:
    """FCN on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return _fcn("fcn_mobilenetv2", {"backbone": "mobilenetv2_100"}, kwargs)


# ---------------------------------------------------------------------------- key maps
# torchvision's FCN keeps its head layout, so only the ResNet body's prefix changes; its DeepLabV3
# shares the layout (segzoo.models.deeplab uses these)


def map_torchvision(state: dict, name: str) -> tuple[dict[str, torch.Tensor], int]:
    """torchvision FCN (or ResNet DeepLabV3): ``backbone.*`` (IntermediateLayerGetter over ResNet)
    becomes ``backbone.body.*``; the heads keep their keys. Returns the state dict and ``num_classes``."""
    out = {}
    for k, v in state.items():
        if k.startswith("backbone."):
            out["backbone.body." + k.removeprefix("backbone.")] = v
        elif k.startswith(("classifier.", "aux_classifier.")):
            out[k] = v
        else:
            raise KeyError(f"unexpected key {k!r} in a torchvision {name} state dict")
    if "classifier.4.weight" not in out:
        raise KeyError("no classifier.4.weight: this is not a torchvision FCN/DeepLab state dict")
    return out, int(out["classifier.4.weight"].shape[0])


def describe_torchvision(arch: str, entry: str) -> Callable[[dict], tuple[str, str]]:
    """What a torchvision ``arch`` state dict holds and which segzoo ``{entry}_*`` models fit it (for errors)."""

    def describe(state: dict) -> tuple[str, str]:
        if "backbone.0.0.weight" in state:
            return (f"a torchvision {arch} with a MobileNetV3-Large backbone",
                    "convert it into deeplabv3_mobilenetv3_large")
        depth = resnet_depth(state, "backbone.")
        body = f"ResNet-{depth}" if depth else "ResNet"
        return (f"a torchvision {arch} with a {body} backbone",
                f"convert it into {entry}_resnet50/101 (or a {arch} built with backbone='resnet{depth or 50}')")

    return describe


def aux_default(mapped: dict) -> dict[str, Any]:
    """``aux_loss`` as the mapped weights have it (an auxiliary head or not)."""
    return {"aux_loss": any(k.startswith("aux_classifier.") for k in mapped)}


register_key_map(TORCHVISION, FCN, KeyMap(map_torchvision, aux_default, describe_torchvision("FCN", "fcn")))

# ---------------------------------------------------------------------------- published weights
# read from torchvision's Weights enums (URL, hash, categories, metrics); see segzoo.hub.published
register_weights(
    torchvision_entry("fcn_resnet50", "tv_coco_voc", "FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1", COCO_VOC),
    torchvision_entry("fcn_resnet101", "tv_coco_voc", "FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1", COCO_VOC),
)
