"""HRNetV2 (Sun et al., "High-Resolution Representations for Labeling Pixels and Regions",
2019) for semantic segmentation, and HRNet + OCR (Yuan et al., "Object-Contextual
Representations for Semantic Segmentation", ECCV 2020).

The body (:class:`~segzoo.backbones.hrnet.HRNetBackbone`) returns its four parallel
branches; the first step of both heads here is the HRNetV2 representation: the branches
upsampled bilinearly to stride 4 and concatenated (``HRNetBackbone.representation``).
Module names follow the official code and timm, so timm ImageNet weights load into
``backbone`` as they are and the key map of the official checkpoints (:func:`map_hrnet_official`,
at the end) only has to rename the heads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones.hrnet import ARCHS, HRNetArch, HRNetBackbone, hrnet_arch
from segzoo.hub.published import WeightsEntry, register_converter, register_weights
from segzoo.layers.conv import OneDNNPointwiseConv2d
from segzoo.layers.ocr import OCRHead
from segzoo.models.base import SegmentationModel
from segzoo.models.converters import load_converted
from segzoo.registry import build, create, entry_class, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD


def _variant(arch: HRNetArch) -> str:
    """The name of a variant's numbers (for messages), ``"hrnet"`` for custom ones."""
    return next((name for name, a in ARCHS.items() if a == arch), "hrnet")


class _HRNetSegBase(SegmentationModel):
    align_corners: bool = False

    def fold_for_inference(self) -> bool:
        """Run every plain 1x1 convolution of the model on oneDNN (:class:`OneDNNPointwiseConv2d`: the same
        numbers to float rounding; HRNet's fusion layers and heads are full of them). Returns whether
        any was switched (float32 CPU models with oneDNN)."""
        return OneDNNPointwiseConv2d.swap_in(self.modules()) > 0

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


# ---------------------------------------------------------------------------- key maps
# Official HRNet-Semantic-Segmentation checkpoints: ``seg_hrnet.py`` (pytorch-v1.1 branch: HRNetV2
# W18-Small-v1/v2, W18, W32, W48) and ``seg_hrnet_ocr.py`` (HRNet-OCR branch: HRNet-W48 + OCR). The
# body's key names are the same in both code bases; only the heads are renamed. Released
# checkpoints are the training wrapper's state dict, so every key starts with ``model.`` and the
# loss's class weights (``loss.criterion.weight``) come along; some are wrapped in
# ``{"state_dict": ...}`` and those saved by old PyTorch have no ``num_batches_tracked``. All of this
# is handled. The official pipeline feeds RGB images in [0, 1] normalised with the ImageNet
# mean/std, which is what segzoo models do inside, so converted models take plain [0, 1] RGB input.

BODY_PREFIXES = ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition", "stage")

PLAIN_HEAD = (("last_layer.", "head."),)


def _attention_renames(src: str, dst: str, two_layers: bool) -> list[tuple[str, str]]:
    # official: Sequential(conv, Sequential(BN, ReLU), [conv, Sequential(BN, ReLU)]);
    # segzoo flattens it: Sequential(conv, BN, ReLU, [conv, BN, ReLU])
    base = "ocr_distri_head.object_context_block."
    out = [(f"{base}{src}.0.", f"head.attention.{dst}.0."), (f"{base}{src}.1.0.", f"head.attention.{dst}.1.")]
    if two_layers:
        out += [(f"{base}{src}.2.", f"head.attention.{dst}.3."),
                (f"{base}{src}.3.0.", f"head.attention.{dst}.4.")]
    return out


OCR_HEAD = (
    ("aux_head.", "head.aux."),
    ("conv3x3_ocr.", "head.bottleneck."),
    ("cls_head.", "head.classifier."),
    ("ocr_distri_head.conv_bn_dropout.0.", "head.fuse.0."),
    ("ocr_distri_head.conv_bn_dropout.1.0.", "head.fuse.1."),
    *_attention_renames("f_pixel", "query", True),
    *_attention_renames("f_object", "key", True),
    *_attention_renames("f_down", "value", False),
    *_attention_renames("f_up", "project", False),
)


def clean_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``, strip ``module.``/``model.`` and drop the loss's keys."""
    state = state_dict
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "model."):
            k = k.removeprefix(prefix)
        if k.startswith("loss."):  # e.g. loss.criterion.weight: class weights of the loss
            continue
        out[k] = v
    return out


def map_hrnet_official(state_dict: dict) -> tuple[dict[str, torch.Tensor], int, bool]:
    """Rename an official HRNet state dict to segzoo's names.

    Returns:
        ``(segzoo state dict, num_classes, is_ocr)``. ``num_batches_tracked`` entries that
        the source lacks are added (as 0).

    Raises:
        KeyError: naming every key that belongs to neither the body nor a known head.
    """
    state = clean_state_dict(state_dict)
    is_ocr = "cls_head.weight" in state
    if not is_ocr and "last_layer.3.weight" not in state:
        raise KeyError(
            "no segmentation head (last_layer.3.weight or cls_head.weight) in the state dict: "
            "this is not an official HRNet-Semantic-Segmentation checkpoint (for ImageNet HRNet "
            "weights use segzoo.build(name, backbone_weights=path))"
        )
    renames = sorted(OCR_HEAD if is_ocr else PLAIN_HEAD, key=lambda r: -len(r[0]))
    out, unknown = {}, []
    for k, v in state.items():
        if k.startswith(BODY_PREFIXES):
            out["backbone." + k] = v
            continue
        for src, dst in renames:
            if k.startswith(src):
                out[dst + k.removeprefix(src)] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(
            f"{len(unknown)} keys of the state dict belong to no HRNet layer: {', '.join(unknown[:10])}"
        )
    for k in list(out):
        if k.endswith(".running_mean"):
            out.setdefault(k.removesuffix("running_mean") + "num_batches_tracked",
                           torch.tensor(0, dtype=torch.long))
    num_classes = int(state["cls_head.weight" if is_ocr else "last_layer.3.weight"].shape[0])
    return out, num_classes, is_ocr


def from_hrnet_official(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo HRNet ``name`` holding an official HRNet-Semantic-Segmentation checkpoint.

    Args:
        state_dict: the checkpoint as read by ``torch.load(path, weights_only=True)`` (or
            :func:`segzoo.checkpoint.read_state_dict`).
        name: ``"hrnet_w18_small"``, ``"hrnet_w18_small_v2"``, ``"hrnet_w18"``,
            ``"hrnet_w32"``, ``"hrnet_w48"`` or ``"hrnet_w48_ocr"``.
        **build_kwargs: extra builder arguments; ``num_classes`` is read from the source.

    Returns:
        The model in eval mode, with ``model.spec`` set.
    """
    cls = entry_class(name)  # a clear KeyError for unknown names
    if not issubclass(cls, (HRNet, HRNetOCR)):
        raise ValueError(f"the official HRNet converter builds HRNet models, not {name!r} ({cls.__name__})")
    mapped, num_classes, is_ocr = map_hrnet_official(state_dict)
    wants_ocr = issubclass(cls, HRNetOCR)
    if is_ocr != wants_ocr:
        kind = "an HRNet + OCR" if is_ocr else "a plain HRNetV2"
        raise ValueError(
            f"the checkpoint holds {kind} model but {name!r} is "
            f"{'HRNet + OCR' if wants_ocr else 'plain HRNetV2'}; choose "
            f"{'an HRNet + OCR model (hrnet_w48_ocr)' if is_ocr else 'hrnet_w18_small ... hrnet_w48'}"
        )
    if is_ocr:  # OCR widths as trained (the official configs use 512 and 256)
        mid = int(mapped["head.bottleneck.0.weight"].shape[0])
        key = int(mapped["head.attention.query.0.weight"].shape[0])
        if (mid, key) != (512, 256):
            build_kwargs.setdefault("mid_channels", mid)
            build_kwargs.setdefault("key_channels", key)
    model = build(name, num_classes=num_classes, **build_kwargs)
    width = mapped.get("backbone.transition1.0.0.weight")
    own = model.state_dict().get("backbone.transition1.0.0.weight")
    if width is not None and own is not None and width.shape != own.shape:
        raise ValueError(
            f"the checkpoint's highest-resolution branch has {width.shape[0]} channels but "
            f"{name!r} has {own.shape[0]}; choose the model the checkpoint was trained as "
            "(W18-Small-v1 has 16, W18-Small-v2 and W18 have 18, then 32 and 48)"
        )
    return load_converted(model, mapped)


register_converter("hrnet-official", from_hrnet_official)

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
