"""HRNetV2 (Sun et al., "High-Resolution Representations for Labeling Pixels and Regions",
2019) for semantic segmentation, and HRNet + OCR (Yuan et al., "Object-Contextual
Representations for Semantic Segmentation", ECCV 2020).

The body (:class:`~segzoo.backbones.hrnet.HRNetBackbone`) returns its four parallel
branches; the first step of both heads here is the HRNetV2 representation: the branches
upsampled bilinearly to stride 4 and concatenated (``HRNetBackbone.representation``).
Module names follow the official code and timm, so timm ImageNet weights load into
``backbone`` as they are and :mod:`segzoo.convert.hrnet` only has to rename the heads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones.hrnet import ARCHS, HRNetArch, HRNetBackbone, hrnet_arch
from segzoo.layers.ocr import OCRHead
from segzoo.models.base import SegmentationModel
from segzoo.published import WeightsEntry, register_weights
from segzoo.registry import create, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


def _variant(arch: HRNetArch) -> str:
    """The name of a variant's numbers (for messages), ``"hrnet"`` for custom ones."""
    return next((name for name, a in ARCHS.items() if a == arch), "hrnet")


class _HRNetSegBase(SegmentationModel):
    align_corners: bool = False

    def _resize(self, t: torch.Tensor, h: int, w: int, always: bool = False) -> torch.Tensor:
        # the official pipeline upsamples logits with the model's align_corners
        if not always and t.shape[-2:] == (h, w):
            return t
        return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=self.align_corners)

    @staticmethod
    def _init_head(module: nn.Module) -> None:
        # as the official HRNetV2: N(0, 0.001) convolutions
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class HRNet(_HRNetSegBase):
    """HRNetV2: the HRNet body, its four branches concatenated at stride 4, a small head.

    Head: the branches upsampled to stride 4 and concatenated (15C channels), then
    ``1x1 conv (15C -> 15C, bias) -> BN -> ReLU -> 1x1 conv to classes``; logits at
    stride 4 are upsampled bilinearly to the input size. Input and output as in
    :class:`~segzoo.models.base.SegmentationModel` (losses: ``loss_ce``, ``loss``).

    Args:
        num_classes: classes including background (19 for Cityscapes).
        width, stage1_blocks, stage1_channels, stage_modules, stage_blocks: the variant
            (see :class:`HRNetArch`).
        fuse_mode: ``"bilinear"`` (official segmentation HRNet) or ``"nearest"`` (timm).
        align_corners: of every bilinear upsampling; False as in the official HRNetV2.
        backbone_weights: local timm-format HRNet ImageNet weights for the body, or a timm tag (``"imagenet"``).
        ignore_index: label ignored by the loss.
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
        dice_weight: weight of a Dice loss added to the cross-entropy (0: none).
        **loss_options: ``class_weights``, ``ohem_thresh``, ``ohem_min_kept`` and ``loss`` of
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("head.3",)

    def __init__(
        self,
        num_classes: int = 19,
        *,
        width: int = 18,
        stage1_blocks: int = 4,
        stage1_channels: int = 64,
        stage_modules: Sequence[int] = (1, 4, 3),
        stage_blocks: int = 4,
        fuse_mode: str = "bilinear",
        align_corners: bool = False,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         dice_weight=dice_weight, **loss_options)
        arch = HRNetArch(width, stage1_blocks, stage1_channels, tuple(stage_modules), stage_blocks)
        self.align_corners = align_corners
        self.backbone = HRNetBackbone(arch, fuse_mode, align_corners, backbone_weights, name=_variant(arch))
        c = sum(self.backbone.channels)  # the HRNetV2 representation: 15C
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, num_classes, 1)
        )
        self._init_head(self.head)

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone.representation(self.backbone(x))  # (N, 15C, H/4, W/4)
        return self.head(feats), None


class HRNetOCR(_HRNetSegBase):
    """HRNet + OCR: object-contextual representations on the HRNetV2 features.

    An auxiliary head predicts soft object regions, the regions pool object
    representations, each pixel attends to them and the context is fused with the pixel
    features before the classifier (:class:`~segzoo.layers.ocr.OCRHead`). With targets the
    losses are ``loss_ce`` (OCR logits), ``loss_aux`` (soft regions, weight
    ``aux_weight``) and ``loss``.

    Args:
        num_classes: classes including background (19 for Cityscapes).
        width, stage1_blocks, stage1_channels, stage_modules, stage_blocks: the body.
        mid_channels: channels of the pixel and object representations (512).
        key_channels: channels of the attention's queries and keys (256).
        dropout: dropout after the context fusion (0.05).
        aux_weight: weight of the soft-region loss (0.4).
        fuse_mode: ``"bilinear"`` (official) or ``"nearest"`` (timm).
        align_corners: True as in the official OCR configs.
        backbone_weights: local timm-format HRNet ImageNet weights for the body, or a timm tag (``"imagenet"``).
        ignore_index, mean, std, dice_weight, **loss_options: as in :class:`HRNet`; with
            ``ohem_thresh`` OHEM applies to the OCR logits and the soft-region loss stays a
            (class-weighted) cross-entropy, as in the official HRNet-OCR code.
    """

    class_layers = ("head.aux.3", "head.classifier")

    def __init__(
        self,
        num_classes: int = 19,
        *,
        width: int = 48,
        stage1_blocks: int = 4,
        stage1_channels: int = 64,
        stage_modules: Sequence[int] = (1, 4, 3),
        stage_blocks: int = 4,
        mid_channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.05,
        aux_weight: float = 0.4,
        fuse_mode: str = "bilinear",
        align_corners: bool = True,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         aux_weight=aux_weight, dice_weight=dice_weight, **loss_options)
        arch = HRNetArch(width, stage1_blocks, stage1_channels, tuple(stage_modules), stage_blocks)
        self.align_corners = align_corners
        self.backbone = HRNetBackbone(arch, fuse_mode, align_corners, backbone_weights, name=_variant(arch))
        self.head = OCRHead(sum(self.backbone.channels), num_classes, mid_channels=mid_channels,
                            key_channels=key_channels, dropout=dropout)

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone.representation(self.backbone(x))  # (N, 15C, H/4, W/4)
        out, aux = self.head(feats)
        return out, (aux if with_aux else None)


def _hrnet(name: str, arch: str | None = None, cls: type = HRNet, **kwargs) -> nn.Module:
    defaults = hrnet_arch(arch or name)._asdict()
    return create(cls, name, defaults, kwargs)


@register_model
def hrnet_w18_small(**kwargs) -> HRNet:
    return _hrnet("hrnet_w18_small", **kwargs)


@register_model
def hrnet_w18_small_v2(**kwargs) -> HRNet:
    return _hrnet("hrnet_w18_small_v2", **kwargs)


@register_model
def hrnet_w18(**kwargs) -> HRNet:
    return _hrnet("hrnet_w18", **kwargs)


@register_model
def hrnet_w32(**kwargs) -> HRNet:
    return _hrnet("hrnet_w32", **kwargs)


@register_model
def hrnet_w48(**kwargs) -> HRNet:
    return _hrnet("hrnet_w48", **kwargs)


@register_model
def hrnet_w48_ocr(**kwargs) -> HRNetOCR:
    return _hrnet("hrnet_w48_ocr", arch="hrnet_w48", cls=HRNetOCR, **kwargs)


# ---------------------------------------------------------------------------- published weights
# the official releases (OneDrive, Baidu, GitHub releases) are manual sources: segzoo names the
# page and the file; neither size nor checksum is published (the converter checks the layout)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)
_HRNET_V11 = "https://github.com/HRNet/HRNet-Semantic-Segmentation/tree/pytorch-v1.1"
_HRNET_OCR = "https://github.com/HRNet/HRNet-Semantic-Segmentation/tree/HRNet-OCR"
_OCR_RELEASE = "https://github.com/hsfzxjy/models.storage/releases/download/HRNet-OCR/"


def _official(model: str, tag: str, file_name: str, miou: float, split: str, page: str, link: str) -> WeightsEntry:
    return WeightsEntry(
        model=model, tag=tag, source="manual", converter="hrnet-official",
        dataset="Cityscapes (19 train ids)", classes=CITYSCAPES_CLASSES, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        metrics=(("miou", miou),), metric_source=f"official HRNet-Semantic-Segmentation README ({split})",
        licence="MIT (HRNet-Semantic-Segmentation); Cityscapes terms of use (non-commercial) apply",
        file_name=file_name, page=page, link=link,
    )


register_weights(
    _official("hrnet_w18_small", "cityscapes", "hrnet_w18_small_v1_cityscapes_cls19_1024x2048_trainset.pth", 70.3,
           "trained on train, val single scale", _HRNET_V11 + "#small-models",
           "https://1drv.ms/u/s!Aus8VCZ_C_33gSEsg-2sxTmZL2AT?e=AqHbjh"),
    _official("hrnet_w18_small_v2", "cityscapes", "hrnet_w18_small_v2_cityscapes_cls19_1024x2048_trainset.pth", 76.2,
           "trained on train, val single scale", _HRNET_V11 + "#small-models",
           "https://1drv.ms/u/s!Aus8VCZ_C_33gSAL4OurOW0RX4JH?e=ptLwpW"),
    _official("hrnet_w48", "cityscapes", "hrnet_w48_cityscapes_cls19_1024x2048_trainset.pth", 81.1,
           "trained on train, val single scale", _HRNET_V11 + "#big-models",
           "https://1drv.ms/u/s!Aus8VCZ_C_33gSlK7Fju_sXCxFUt?e=WZ96Ck"),
    _official("hrnet_w48_ocr", "cityscapes", "hrnet_ocr_cs_8162_torch11.pth", 81.6,
           "trained on train, val single scale", _HRNET_OCR + "#segmentation-models",
           _OCR_RELEASE + "hrnet_ocr_cs_8162_torch11.pth"),
    _official("hrnet_w48_ocr", "cityscapes_trainval", "hrnet_ocr_cs_trainval_8227_torch11.pth", 82.3,
           "trained on train+val, test set multi-scale + flip", _HRNET_OCR + "#segmentation-models",
           _OCR_RELEASE + "hrnet_ocr_cs_trainval_8227_torch11.pth"),
)
