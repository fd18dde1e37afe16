"""HRNetV2 (Sun et al., "High-Resolution Representations for Labeling Pixels and Regions",
2019) for semantic segmentation, and HRNet + OCR (Yuan et al., "Object-Contextual
Representations for Semantic Segmentation", ECCV 2020).

The body keeps a stride-4 branch through the whole network and adds branches at strides
8, 16 and 32; every multi-resolution module runs its branches in parallel and then fuses
them (each output branch sums all input branches, resampled). The body computes what the
official segmentation HRNet computes: lower-resolution branches are upsampled
**bilinearly** in the fuse layers, to the exact size of the target branch, so any input
size works. ``fuse_mode="nearest"`` gives the ImageNet classification HRNet instead
(timm's), whose weights were trained with nearest-neighbour fusion.

Module names follow the official code and timm (``conv1``, ``layer1``, ``transition1``,
``stage2.0.fuse_layers.0.1.0`` ...), so timm ImageNet weights load into ``backbone`` as they
are and :mod:`segzoo.convert.hrnet` only has to rename the heads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from segzoo.layers.ocr import OCRHead
from segzoo.models.base import SegmentationModel
from segzoo.registry import IMAGENET_MEAN, IMAGENET_STD, create, register_model

FUSE_MODES = ("bilinear", "nearest")


class HRNetArch(NamedTuple):
    """The numbers of one HRNet variant.

    Attributes:
        width: channels of the stride-4 branch; the others have 2x, 4x and 8x as many.
        stage1_blocks: bottleneck blocks in stage 1 (``layer1``).
        stage1_channels: bottleneck width in stage 1 (output has 4x as many channels).
        stage_modules: multi-resolution modules in stages 2, 3 and 4.
        stage_blocks: basic blocks per branch in each module of stages 2-4.
    """

    width: int
    stage1_blocks: int
    stage1_channels: int
    stage_modules: tuple[int, int, int]
    stage_blocks: int


ARCHS: dict[str, HRNetArch] = {
    "hrnet_w18_small": HRNetArch(16, 1, 32, (1, 1, 1), 2),  # HRNet-W18-Small-v1
    "hrnet_w18_small_v2": HRNetArch(18, 2, 64, (1, 3, 2), 2),
    "hrnet_w18": HRNetArch(18, 4, 64, (1, 4, 3), 4),
    "hrnet_w30": HRNetArch(30, 4, 64, (1, 4, 3), 4),
    "hrnet_w32": HRNetArch(32, 4, 64, (1, 4, 3), 4),
    "hrnet_w40": HRNetArch(40, 4, 64, (1, 4, 3), 4),
    "hrnet_w44": HRNetArch(44, 4, 64, (1, 4, 3), 4),
    "hrnet_w48": HRNetArch(48, 4, 64, (1, 4, 3), 4),
    "hrnet_w64": HRNetArch(64, 4, 64, (1, 4, 3), 4),
}


def _conv_bn(cin: int, cout: int, kernel_size: int, stride: int = 1, relu: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _make_blocks(block: type[nn.Module], cin: int, planes: int, num_blocks: int) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first gets a 1x1 projection if channels change."""
    cout = planes * block.expansion
    downsample = _conv_bn(cin, cout, 1) if cin != cout else None
    layers = [block(cin, planes, downsample=downsample)]
    layers += [block(cout, planes) for _ in range(num_blocks - 1)]
    return nn.Sequential(*layers)


class HRModule(nn.Module):
    """One multi-resolution module: parallel branches of basic blocks, then fusion.

    Input and output: a list of ``n`` feature maps, branch ``i`` at stride ``4 * 2**i``
    with ``channels[i]`` channels. Output branch ``i`` is ``ReLU(sum_j f_ij(x_j))``:
    identity for ``j == i``; 1x1 conv + BN then upsampling to branch ``i``'s size for
    ``j > i``; a chain of stride-2 3x3 conv + BN (ReLU between them) for ``j < i``.

    Args:
        channels: channels of each branch.
        num_blocks: basic blocks per branch.
        fuse_mode: ``"bilinear"`` or ``"nearest"`` upsampling in the fusion.
        align_corners: ``align_corners`` of the bilinear upsampling.
    """

    def __init__(
        self, channels: Sequence[int], num_blocks: int, fuse_mode: str, align_corners: bool
    ) -> None:
        super().__init__()
        n = len(channels)
        self.fuse_mode = fuse_mode
        self.align_corners = align_corners
        self.branches = nn.ModuleList(
            _make_blocks(BasicBlock, c, c, num_blocks) for c in channels
        )
        self.fuse_layers = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j > i:
                    row.append(_conv_bn(channels[j], channels[i], 1))
                elif j == i:
                    row.append(nn.Identity())
                else:  # i - j stride-2 convs; the last changes the channels, no ReLU after it
                    steps = [_conv_bn(channels[j], channels[j], 3, 2, relu=True) for _ in range(i - j - 1)]
                    steps.append(_conv_bn(channels[j], channels[i], 3, 2))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        self.fuse_act = nn.ReLU(inplace=True)

    def _upsample(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.fuse_mode == "nearest":
            return F.interpolate(x, size=size, mode="nearest")
        return F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        xs = [branch(x) for branch, x in zip(self.branches, xs)]
        out = []
        for i, row in enumerate(self.fuse_layers):
            size = xs[i].shape[-2:]
            y = xs[i] if i == 0 else row[0](xs[0])
            for j in range(1, len(xs)):
                if j > i:
                    y = y + self._upsample(row[j](xs[j]), size)
                else:
                    y = y + row[j](xs[j])
            out.append(self.fuse_act(y))
        return out


class HRNetBody(nn.Module):
    """The HRNet body, with segzoo's backbone contract.

    Input: ``N x 3 x H x W`` normalised images (any size). Output: five feature maps: the
    four branches (strides 4, 8, 16, 32; ``C, 2C, 4C, 8C`` channels) and, last, the HRNetV2
    representation: branches 2-4 upsampled bilinearly to branch 1 and concatenated
    (stride 4, ``15C`` channels). Heads that take ``feats[-1]`` get the HRNetV2 features;
    FCN's auxiliary head (``feats[-2]``) gets the stride-32 branch, the deepest one.

    Args:
        arch: the variant's numbers (see :data:`ARCHS`).
        fuse_mode: ``"bilinear"`` (official segmentation HRNet) or ``"nearest"`` (the
            ImageNet classification HRNet, as in timm).
        align_corners: ``align_corners`` of every bilinear upsampling (official: False in
            the plain HRNetV2 configs, True in the OCR configs).
        weights: a local timm-format HRNet weights file (``timm.create_model(name)``'s
            state dict, or the official ImageNet ``hrnetv2_w*_imagenet_pretrained.pth``);
            the classification head's keys are ignored.
    """

    def __init__(
        self,
        arch: HRNetArch,
        fuse_mode: str = "bilinear",
        align_corners: bool = False,
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if fuse_mode not in FUSE_MODES:
            raise ValueError(
                f"fuse_mode must be 'bilinear' (official segmentation HRNet) or 'nearest' "
                f"(timm's ImageNet HRNet), got {fuse_mode!r}"
            )
        if len(arch.stage_modules) != 3 or min(arch.stage_modules) < 1 or min(
                arch.width, arch.stage1_blocks, arch.stage1_channels, arch.stage_blocks) < 1:
            raise ValueError(
                f"invalid HRNet variant {arch}: stage_modules needs 3 positive counts (stages 2-4) "
                "and widths and block counts must be positive; see segzoo.models.hrnet.ARCHS"
            )
        self.fuse_mode = fuse_mode
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act = nn.ReLU(inplace=True)
        self.layer1 = _make_blocks(Bottleneck, 64, arch.stage1_channels, arch.stage1_blocks)

        widths = [arch.width * 2**i for i in range(4)]
        prev = [arch.stage1_channels * Bottleneck.expansion]
        for s, num_modules in enumerate(arch.stage_modules, start=2):
            cur = widths[:s]
            self.add_module(f"transition{s - 1}", self._transition(prev, cur))
            self.add_module(f"stage{s}", nn.Sequential(*(
                HRModule(cur, arch.stage_blocks, fuse_mode, align_corners) for _ in range(num_modules)
            )))
            prev = cur
        self.channels: tuple[int, ...] = (*widths, sum(widths))
        self.strides: tuple[int, ...] = (4, 8, 16, 32, 4)
        self._init_weights()
        if weights is not None:
            self.load_timm_weights(weights)

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        """Adapt the previous stage's branches to the next and add the new branch."""
        layers = nn.ModuleList()
        for i, c in enumerate(cur):
            if i < len(prev):
                layers.append(nn.Identity() if c == prev[i] else _conv_bn(prev[i], c, 3, relu=True))
            else:  # new branch from the lowest-resolution one, one stride-2 conv per step
                steps = [
                    _conv_bn(prev[-1], c if k == i - len(prev) else prev[-1], 3, 2, relu=True)
                    for k in range(i + 1 - len(prev))
                ]
                layers.append(nn.Sequential(*steps))
        return layers

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def branches(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs of the last stage (strides 4, 8, 16, 32)."""
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        xs = [self.layer1(x)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            xs = [
                t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)
            ]
            xs = getattr(self, f"stage{s}")(xs)
        return xs

    def concat(self, xs: list[torch.Tensor]) -> torch.Tensor:
        """HRNetV2 representation: every branch upsampled to branch 1, concatenated."""
        size = xs[0].shape[-2:]
        ups = [
            F.interpolate(x, size=size, mode="bilinear", align_corners=self.align_corners)
            for x in xs[1:]
        ]
        return torch.cat([xs[0], *ups], dim=1)  # (N, 15C, H/4, W/4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        xs = self.branches(x)
        return [*xs, self.concat(xs)]

    def load_timm_weights(self, path: str | os.PathLike) -> None:
        """Load timm-format HRNet ImageNet weights (the classification head is skipped)."""
        from pathlib import Path

        from segzoo.checkpoint import CheckpointError, read_state_dict

        if not Path(path).exists():
            raise FileNotFoundError(
                f"backbone weights not found: {path}; pass a local timm HRNet weights file "
                "(segzoo never downloads weights)"
            )
        state = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
        own = self.state_dict()
        missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
        bad = [f"{k}: file {tuple(state[k].shape)} vs body {tuple(own[k].shape)}"
               for k in own if k in state and state[k].shape != own[k].shape]
        if missing or bad:
            raise CheckpointError(
                f"{path} does not fit this HRNet body: "
                + (f"missing {len(missing)} keys ({', '.join(missing[:6])}) " if missing else "")
                + (f"mis-shaped: {'; '.join(bad[:6])} " if bad else "")
                + "; pass the timm weights of the same variant (e.g. hrnet_w18 for hrnet_w18)"
            )
        self.load_state_dict({k: state.get(k, own[k]) for k in own})

    def freeze(self, bn: bool = True, params: bool = True) -> HRNetBody:
        """Stop training the body: frozen BatchNorm statistics and/or no gradients."""
        if bn:
            from timm.layers import freeze_batch_norm_2d

            for name, child in list(self.named_children()):
                setattr(self, name, freeze_batch_norm_2d(child))
        if params:
            for p in self.parameters():
                p.requires_grad_(False)
        return self


def _arch(name: str) -> HRNetArch:
    if name not in ARCHS:
        raise ValueError(f"unknown HRNet {name!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[name]


def hrnet_backbone(
    name: str, weights: str | os.PathLike | None = None, fuse_mode: str = "bilinear",
    align_corners: bool = False,
) -> HRNetBody:
    """HRNet body by name (``"hrnet_w18"`` ...) for other families' heads.

    Its outputs are the four branches and the HRNetV2 concatenation (see
    :class:`HRNetBody`); the body always ends at stride 4, so ``output_stride`` does
    not apply to it.
    """
    return HRNetBody(_arch(name), fuse_mode=fuse_mode, align_corners=align_corners, weights=weights)


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

    Head: ``1x1 conv (15C -> 15C, bias) -> BN -> ReLU -> 1x1 conv to classes``; logits at
    stride 4 are upsampled bilinearly to the input size. Input and output as in
    :class:`~segzoo.models.base.SegmentationModel` (losses: ``loss_ce``, ``loss``).

    Args:
        num_classes: classes including background (19 for Cityscapes).
        width, stage1_blocks, stage1_channels, stage_modules, stage_blocks: the variant
            (see :class:`HRNetArch`).
        fuse_mode: ``"bilinear"`` (official segmentation HRNet) or ``"nearest"`` (timm).
        align_corners: of every bilinear upsampling; False as in the official HRNetV2.
        backbone_weights: local timm-format HRNet ImageNet weights for the body.
        ignore_index: label ignored by the loss.
        mean: per-channel mean subtracted from [0, 1] RGB input.
        std: per-channel std the input is divided by.
        dice_weight: weight of a Dice loss added to the cross-entropy (0: none).
        **loss_options: ``class_weights``, ``ohem_thresh`` and ``ohem_min_kept`` of
            :class:`~segzoo.models.base.SegmentationModel`.
    """

    class_layers = ("head.3",)

    def __init__(
        self,
        num_classes: int = 19,
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
        super().__init__(num_classes, mean, std, ignore_index, dice_weight=dice_weight, **loss_options)
        arch = HRNetArch(width, stage1_blocks, stage1_channels, tuple(stage_modules), stage_blocks)
        self.align_corners = align_corners
        self.backbone = HRNetBody(arch, fuse_mode, align_corners, backbone_weights)
        c = self.backbone.channels[-1]
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, num_classes, 1)
        )
        self._init_head(self.head)

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone.concat(self.backbone.branches(x))
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
        backbone_weights: local timm-format HRNet ImageNet weights for the body.
        ignore_index, mean, std, dice_weight, **loss_options: as in :class:`HRNet`; with
            ``ohem_thresh`` OHEM applies to the OCR logits and the soft-region loss stays a
            (class-weighted) cross-entropy, as in the official HRNet-OCR code.
    """

    class_layers = ("head.aux.3", "head.classifier")

    def __init__(
        self,
        num_classes: int = 19,
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
        super().__init__(num_classes, mean, std, ignore_index, aux_weight, dice_weight=dice_weight,
                         **loss_options)
        arch = HRNetArch(width, stage1_blocks, stage1_channels, tuple(stage_modules), stage_blocks)
        self.align_corners = align_corners
        self.backbone = HRNetBody(arch, fuse_mode, align_corners, backbone_weights)
        self.head = OCRHead(self.backbone.channels[-1], num_classes, mid_channels, key_channels, dropout)

    def forward_logits(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feats = self.backbone.concat(self.backbone.branches(x))
        out, aux = self.head(feats)
        return out, (aux if with_aux else None)


def _hrnet(name: str, arch: str | None = None, cls: type = HRNet, **kwargs) -> nn.Module:
    defaults = _arch(arch or name)._asdict()
    return create(cls, name, defaults, kwargs)


@register_model(task="semantic")
def hrnet_w18_small(**kwargs) -> HRNet:
    return _hrnet("hrnet_w18_small", **kwargs)


@register_model(task="semantic")
def hrnet_w18_small_v2(**kwargs) -> HRNet:
    return _hrnet("hrnet_w18_small_v2", **kwargs)


@register_model(task="semantic")
def hrnet_w18(**kwargs) -> HRNet:
    return _hrnet("hrnet_w18", **kwargs)


@register_model(task="semantic")
def hrnet_w32(**kwargs) -> HRNet:
    return _hrnet("hrnet_w32", **kwargs)


@register_model(task="semantic")
def hrnet_w48(**kwargs) -> HRNet:
    return _hrnet("hrnet_w48", **kwargs)


@register_model(task="semantic")
def hrnet_w48_ocr(**kwargs) -> HRNetOCR:
    return _hrnet("hrnet_w48_ocr", arch="hrnet_w48", cls=HRNetOCR, **kwargs)
