"""DeepLabV3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation",
2017) and DeepLabV3+ (Chen et al., "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation", ECCV 2018) on any timm backbone.

DeepLabV3 keeps torchvision's head layout (``classifier`` = ASPP -> 3x3 conv -> BN -> ReLU
-> 1x1 conv, ``aux_classifier`` = FCN head), so torchvision weights convert by renaming the
backbone keys only (:func:`map_torchvision`, below).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from segzoo.backbones import make_backbone
from segzoo.hub.published import COCO_VOC, register_weights, torchvision_entry
from segzoo.layers import ASPP, ConvNormAct, FCNHead
from segzoo.layers.blocked import blocked_body, blocked_ready, to_blocked, to_dense
from segzoo.layers.conv import SeparableConvNormAct
from segzoo.models.base import SegmentationModel
from segzoo.models.converters import TORCHVISION, KeyMap, register_key_map
from segzoo.models.fcn import aux_default, describe_torchvision
from segzoo.models.fcn import map_torchvision as map_resnet_torchvision
from segzoo.registry import create, register_model
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD

# ASPP rates of the papers for each output stride
DEFAULT_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def _rates(rates: Sequence[int] | None, output_stride: int) -> tuple[int, ...]:
    return tuple(rates) if rates is not None else DEFAULT_RATES[output_stride]


def _level_index(index: int, channels: Sequence[int], what: str) -> int:
    n = len(channels)
    if not -n <= index < n:
        raise ValueError(
            f"{what}={index} but the backbone returns {n} feature levels (channels "
            f"{tuple(channels)}); pass an index in [{-n}, {n - 1}]"
        )
    return index % n


class BlockedBody:
    """Inference rewrite shared by DeepLabV3 and V3+: a ResNet body run on oneDNN's blocked tensors
    (:mod:`segzoo.layers.blocked`), converted once on the way in and back for the maps the heads read."""

    blocked = False  # set by fold_for_inference

    def fold_for_inference(self) -> bool:
        """After BatchNorm folding (:func:`segzoo.optimize`): run the backbone on blocked tensors where it
        is a plain timm ResNet body. The same oneDNN kernels; the per-convolution reorders and PyTorch's
        NCHW max pooling go. False (unchanged) for other bodies, unfolded BatchNorm or training mode."""
        body = getattr(self.backbone, "body", None)
        self.blocked = bool(
            not self.training and body is not None and not getattr(self.backbone, "channels_last_maps", True)
            and getattr(self, "tv_aux_stage", None) is None and blocked_body(body)
        )
        return self.blocked

    def backbone_maps(self, x: torch.Tensor) -> tuple[list[torch.Tensor], bool]:
        """The backbone's maps, and whether they are blocked (then :func:`to_dense` the ones used)."""
        if self.blocked and blocked_ready(x):
            return self.backbone(to_blocked(x)), True
        return self.backbone(x), False


def match_torchvision_mobilenet(body: nn.Module) -> None:
    """Make a timm MobileNetV3/EfficientNet body compute what torchvision's dilated
    MobileNetV3 computes.

    Two things differ: torchvision's BatchNorm uses ``eps=1e-3, momentum=0.01``, and
    torchvision gives the *first* block of a dilated stage the stage's dilation, where timm
    gives it the previous dilation. Both are fixed in place; the parameters do not change.
    """
    blocks = getattr(body, "blocks", None)
    if blocks is None:
        raise ValueError(
            "tv_mobilenet=True needs a timm MobileNetV3/EfficientNet backbone (a model with "
            "`blocks`); use tv_mobilenet=False for other backbones"
        )
    for m in body.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.01
    for stage in blocks:
        convs = [getattr(b, "conv_dw", None) for b in stage]
        if len(convs) < 2 or convs[0] is None or convs[1] is None:
            continue
        first, second = convs[0], convs[1]
        if second.dilation[0] > first.dilation[0] and first.stride == (1, 1):
            d = second.dilation[0]
            first.dilation = (d, d)
            first.padding = (d * (first.kernel_size[0] - 1) // 2,) * 2


class DeepLabHead(nn.Sequential):
    """ASPP -> 3x3 conv -> BN -> ReLU -> 1x1 conv to classes (torchvision's keys).

    Input: ``N x in_channels x H x W``. Output: ``N x num_classes x H x W``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, rates: Sequence[int] = (12, 24, 36),
        channels: int = 256, dropout: float = 0.5,
    ) -> None:
        super().__init__(
            ASPP(in_channels, rates=rates, out_channels=channels, dropout=dropout),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_classes, 1),
        )


class DeepLabV3(BlockedBody, SegmentationModel):
    """DeepLabV3: dilated backbone -> ASPP head (+ auxiliary FCN head) -> upsampling.

    Input and output as in :class:`~segzoo.models.base.SegmentationModel`; with targets
    the losses are ``loss_ce``, ``loss_aux`` (weight ``aux_weight``) and ``loss``.

    Args:
        num_classes: classes including background.
        backbone: a timm model name (``features_only`` support).
        output_stride: 8 (torchvision's ResNet models), 16 or 32.
        rates: ASPP atrous rates; by default (12, 24, 36) at stride 8, (6, 12, 18) at 16.
        channels: ASPP and head channels.
        aspp_dropout: dropout after the ASPP projection.
        aux_loss: add the auxiliary FCN head on feature level ``aux_index``.
        aux_index: backbone feature level of the auxiliary head (-2: ResNet ``layer3``).
        aux_weight: weight of the auxiliary loss.
        tv_mobilenet: compute what torchvision's dilated MobileNetV3 computes with a timm
            MobileNetV3 body (see :func:`match_torchvision_mobilenet`); the auxiliary head
            then reads the first block of the ``aux_index`` stage, as torchvision does.
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
        rates: Sequence[int] | None = None,
        channels: int = 256,
        aspp_dropout: float = 0.5,
        aux_loss: bool = True,
        aux_index: int = -2,
        aux_weight: float = 0.5,
        tv_mobilenet: bool = False,
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
        self.aux_index = _level_index(aux_index, chs, "aux_index")
        # tv_mobilenet: the aux head reads the first block of this timm stage, as torchvision
        self.tv_aux_stage: int | None = None
        if tv_mobilenet:
            match_torchvision_mobilenet(getattr(self.backbone, "body", self.backbone))
            module = self.backbone.body.feature_info.module_name(self.aux_index)  # "blocks.2"
            self.tv_aux_stage = int(module.split(".")[1])
        self.classifier = DeepLabHead(
            chs[-1], num_classes, rates=_rates(rates, output_stride), channels=channels, dropout=aspp_dropout
        )
        self.aux_classifier = FCNHead(chs[self.aux_index], num_classes) if aux_loss else None

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.tv_aux_stage is not None:
            last, aux_feat = self._tv_mobilenet_features(x)
        else:
            maps, _ = self.backbone_maps(x)
            feats = self.backbone.head_maps(maps)
            last, aux_feat = to_dense(feats[-1]), feats[self.aux_index]
        out = self.classifier(last)
        aux = None
        if with_aux and self.aux_classifier is not None:
            aux = self.aux_classifier(to_dense(aux_feat))
        return out, aux

    def _tv_mobilenet_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last feature map and the output of the first block of stage
        ``tv_aux_stage`` (torchvision's ``features[4]`` for MobileNetV3-Large)."""
        body = self.backbone.body
        x = body.act1(body.bn1(body.conv_stem(x)))  # timm MobileNetV3Features.forward
        aux = x
        for i, stage in enumerate(body.blocks):
            for j, block in enumerate(stage):
                x = block(x)
                if i == self.tv_aux_stage and j == 0:
                    aux = x
        return x, aux


class DeepLabV3PlusDecoder(nn.Module):
    """DeepLabV3+ decoder: ASPP on the deep feature, upsampled to the low-level feature,
    concatenated with its 1x1 projection, refined by two 3x3 convs, classified. With
    ``separable`` (the paper's design) the ASPP's atrous branches and the two 3x3 convs are
    depthwise-separable.

    Input: the deep feature ``N x C_high x h x w`` and the stride-4 feature
    ``N x C_low x 4h' x 4w'``. Output: ``N x num_classes x 4h' x 4w'``.
    """

    def __init__(
        self, high_channels: int, low_channels: int, num_classes: int, *, rates: Sequence[int],
        channels: int = 256, low_proj: int = 48, aspp_dropout: float = 0.1, separable: bool = True,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(high_channels, rates=rates, out_channels=channels, dropout=aspp_dropout, separable=separable)
        self.low_proj = ConvNormAct(low_channels, low_proj, kernel_size=1)
        conv = SeparableConvNormAct if separable else ConvNormAct
        self.fuse = nn.Sequential(
            conv(channels + low_proj, channels, 3),
            conv(channels, channels, 3),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    blocked = False  # set by fold_for_inference

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """``low`` may be blocked (:mod:`segzoo.layers.blocked`) once :meth:`fold_for_inference` applied."""
        y = self.aspp(to_dense(high))
        y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
        y = torch.cat([y, to_dense(self.low_proj(low))], dim=1)  # (N, channels + low_proj, H/4, W/4)
        if self.blocked and blocked_ready(y):
            return to_dense(self.classifier(self.fuse(to_blocked(y))))
        return self.classifier(self.fuse(y))

    def fold_for_inference(self) -> bool:
        """After BatchNorm folding: the stride-4 part (the low-level projection, the two 3x3 blocks and the
        classifier, all convolutions and ReLUs) on oneDNN's blocked tensors; the ASPP, the upsampling and the
        concatenation stay dense. False where a BatchNorm was not folded or in training mode."""
        self.blocked = not self.training and all(blocked_body(m) for m in (self.low_proj, self.fuse, self.classifier))
        return self.blocked


class DeepLabV3Plus(BlockedBody, SegmentationModel):
    """DeepLabV3+: backbone at output stride 16 -> ASPP -> decoder with stride-4 features.

    Input and output as in :class:`~segzoo.models.base.SegmentationModel`; with targets
    the losses are ``loss_ce`` and ``loss``.

    Args:
        num_classes: classes including background.
        backbone: a timm model name (``features_only`` support) or a segzoo body; it must
            return a stride-4 feature map (ResNet ``layer1``, ConvNeXt stage 0, ...). The
            decoder reads what the body's ``decoder_features`` gives: the deepest map and the
            deepest stride-4 map of a pyramid; an HRNet body's HRNetV2 representation and its
            stride-4 branch.
        output_stride: 16 (the paper's default), 8 or 32.
        rates: ASPP atrous rates; by default (6, 12, 18) at stride 16, (12, 24, 36) at 8.
        channels: ASPP and decoder channels.
        low_proj: channels of the 1x1 projection of the stride-4 feature (48 in the paper).
        aspp_dropout: dropout after the ASPP projection.
        separable: atrous separable (depthwise + pointwise) convolutions in the ASPP and the
            decoder, as in the paper (and mmsegmentation, smp); False for plain 3x3 convs.
        backbone_weights: local timm weights file for the backbone, or a timm tag (``"imagenet"``).
        ignore_index: label ignored by the loss.
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
        dice_weight: weight of a Dice loss added to the cross-entropy (0: none).
        **loss_options: ``class_weights``, ``ohem_thresh``, ``ohem_min_kept`` and ``loss`` of
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("decoder.classifier",)

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet50",
        *,
        output_stride: int = 16,
        rates: Sequence[int] | None = None,
        channels: int = 256,
        low_proj: int = 48,
        aspp_dropout: float = 0.1,
        separable: bool = True,
        backbone_weights: str | os.PathLike | None = None,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        dice_weight: float = 0.0,
        **loss_options: Any,
    ) -> None:
        super().__init__(num_classes, mean=mean, std=std, ignore_index=ignore_index,
                         dice_weight=dice_weight, **loss_options)
        self.backbone = make_backbone(backbone, output_stride, backbone_weights)
        strides = self.backbone.strides
        if 4 not in strides:
            raise ValueError(
                f"DeepLabV3+ needs a stride-4 feature map but backbone {backbone!r} returns "
                f"strides {tuple(strides)}; choose a backbone with a stride-4 stage "
                "(ResNet, ConvNeXt, EfficientNet, MobileNet)"
            )
        # the deep and the stride-4 feature as the body gives them (an HRNet body: its HRNetV2
        # representation and its stride-4 branch)
        high, low = self.backbone.decoder_channels(low_stride=4)
        self.decoder = DeepLabV3PlusDecoder(
            high, low, num_classes, rates=_rates(rates, output_stride), channels=channels, low_proj=low_proj,
            aspp_dropout=aspp_dropout, separable=separable,
        )

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        maps, _ = self.backbone_maps(x)
        high, low = self.backbone.decoder_features(maps, low_stride=4)
        # a blocked stride-4 map goes to a blocked decoder as it is (its projection to 48 channels runs blocked)
        return self.decoder(high, low if self.decoder.blocked else to_dense(low)), None


def _deeplabv3(name: str, backbone: str, /, **kwargs) -> DeepLabV3:
    return create(DeepLabV3, name, {"backbone": backbone}, kwargs)


def _deeplabv3plus(name: str, backbone: str, /, **kwargs) -> DeepLabV3Plus:
    return create(DeepLabV3Plus, name, {"backbone": backbone}, kwargs)


@register_model
def deeplabv3_resnet50(**kwargs) -> DeepLabV3:
    return _deeplabv3("deeplabv3_resnet50", "resnet50", **kwargs)


@register_model
def deeplabv3_resnet101(**kwargs) -> DeepLabV3:
    return _deeplabv3("deeplabv3_resnet101", "resnet101", **kwargs)


@register_model
def deeplabv3_mobilenetv3_large(**kwargs) -> DeepLabV3:
    """DeepLabV3 on MobileNetV3-Large in torchvision's layout.

    Dilated last stage (stride 16), rates 12/24/36, aux head on the stride-8 level and
    torchvision's BatchNorm numerics and dilation (``tv_mobilenet=True``, explicit here; pass
    ``tv_mobilenet=False`` with another backbone)."""
    defaults = {"backbone": "mobilenetv3_large_100", "output_stride": 16, "rates": (12, 24, 36),
                "aux_index": 2, "tv_mobilenet": True}
    return create(DeepLabV3, "deeplabv3_mobilenetv3_large", defaults, kwargs)


@register_model
def deeplabv3plus_resnet50(**kwargs) -> DeepLabV3Plus:
    return _deeplabv3plus("deeplabv3plus_resnet50", "resnet50", **kwargs)


@register_model
def deeplabv3plus_resnet101(**kwargs) -> DeepLabV3Plus:
    return _deeplabv3plus("deeplabv3plus_resnet101", "resnet101", **kwargs)


@register_model
def deeplabv3_mobilenetv2(**kwargs) -> DeepLabV3:
    """DeepLabV3 on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return _deeplabv3("deeplabv3_mobilenetv2", "mobilenetv2_100", **kwargs)


@register_model
def deeplabv3plus_mobilenetv2(**kwargs) -> DeepLabV3Plus:
    """DeepLabV3+ on timm's mobilenetv2_100 (ImageNet: torchvision's file, from its wheel)."""
    return _deeplabv3plus("deeplabv3plus_mobilenetv2", "mobilenetv2_100", **kwargs)


# ---------------------------------------------------------------------------- key maps
# torchvision's DeepLabV3 keeps its head layout; a ResNet body maps as FCN's does (segzoo.models.fcn),
# a MobileNetV3-Large body's feature indices are renamed to timm's mobilenetv3_large_100


def _mobilenetv3_conv_names(state: dict, prefix: str) -> dict[int, tuple[str, str]]:
    """timm (conv, BN) names of the conv layers ``block.j`` of one torchvision MobileNetV3
    block, keyed by ``j``.

    A torchvision ``InvertedResidual`` holds conv-BN pairs and an optional
    ``SqueezeExcitation``. Two convs mean no expansion (timm's ``DepthwiseSeparableConv``:
    dw, pw); three mean expand, dw, project (timm's ``InvertedResidual``: pw, dw, pwl).
    """
    convs = [j for j in range(5) if f"{prefix}block.{j}.0.weight" in state]
    if len(convs) == 2:
        names = [("conv_dw", "bn1"), ("conv_pw", "bn2")]
    elif len(convs) == 3:
        names = [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]
    else:
        raise KeyError(f"cannot read the torchvision MobileNetV3 block {prefix!r} ({len(convs)} convs)")
    return dict(zip(convs, names))


def _map_mobilenetv3_features(state: dict, name: str) -> dict[str, torch.Tensor]:
    """torchvision ``mobilenet_v3_large().features.*`` keys (prefix ``backbone.``) -> timm
    ``mobilenetv3_large_100`` ``features_only`` keys (prefix ``backbone.body.``)."""
    body = timm.create_model("mobilenetv3_large_100", features_only=True)
    # timm blocks in order; torchvision features.1..16 are these, features.0 is the stem
    blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(body.blocks) for j in range(len(stage))]
    out = {}
    for k, v in state.items():
        if not k.startswith("backbone."):
            continue
        idx, rest = k.removeprefix("backbone.").split(".", 1)
        idx = int(idx)
        if idx == 0:  # stem: 0 conv, 1 BN
            layer, param = rest.split(".", 1)
            out["backbone.body." + ("conv_stem" if layer == "0" else "bn1") + "." + param] = v
            continue
        if idx > len(blocks):
            raise KeyError(f"unexpected key {k!r} in a torchvision {name} state dict")
        target = "backbone.body." + blocks[idx - 1]
        if not rest.startswith("block."):  # the last 1x1 conv (timm ConvBnAct: conv, bn1)
            layer, param = rest.split(".", 1)
            out[f"{target}.{'conv' if layer == '0' else 'bn1'}.{param}"] = v
            continue
        _, j, layer, param = rest.split(".", 3)  # block.<j>.<layer>.<param>
        if layer in ("fc1", "fc2"):  # squeeze-excitation
            se = "conv_reduce" if layer == "fc1" else "conv_expand"
            out[f"{target}.se.{se}.{param}"] = v
            continue
        conv, bn = _mobilenetv3_conv_names(state, f"backbone.{idx}.")[int(j)]
        out[f"{target}.{conv if layer == '0' else bn}.{param}"] = v
    return out


def map_torchvision(state: dict, name: str) -> tuple[dict[str, torch.Tensor], int]:
    """torchvision DeepLabV3: ResNet (``backbone.layer*``) or MobileNetV3-Large
    (``backbone.<feature index>``) backbone; the heads keep their keys. Returns the state dict and
    ``num_classes``."""
    if "backbone.0.0.weight" not in state:  # ResNet
        return map_resnet_torchvision(state, name)
    out = _map_mobilenetv3_features(state, name)
    for k, v in state.items():
        if k.startswith(("classifier.", "aux_classifier.")):
            out[k] = v
        elif not k.startswith("backbone."):
            raise KeyError(f"unexpected key {k!r} in a torchvision {name} state dict")
    if "classifier.4.weight" not in out:
        raise KeyError("no classifier.4.weight: this is not a torchvision DeepLabV3 state dict")
    return out, int(out["classifier.4.weight"].shape[0])


register_key_map(TORCHVISION, DeepLabV3,
                 KeyMap(map_torchvision, aux_default, describe_torchvision("DeepLabV3", "deeplabv3")))

# ---------------------------------------------------------------------------- published weights
# read from torchvision's Weights enums (URL, hash, categories, metrics); see segzoo.hub.published
register_weights(
    torchvision_entry("deeplabv3_resnet50", "tv_coco_voc", "DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1",
                      COCO_VOC),
    torchvision_entry("deeplabv3_resnet101", "tv_coco_voc", "DeepLabV3_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1",
                      COCO_VOC),
    torchvision_entry("deeplabv3_mobilenetv3_large", "tv_coco_voc",
                      "DeepLabV3_MobileNet_V3_Large_Weights.COCO_WITH_VOC_LABELS_V1", COCO_VOC),
)
