"""The HRNet body (Sun et al., "Deep High-Resolution Representation Learning for Visual
Recognition", 2019) with segzoo's backbone contract.

The body keeps a stride-4 branch through the whole network and adds branches at strides
8, 16 and 32; every multi-resolution module runs its branches in parallel and then fuses
them (each output branch sums all input branches, resampled). It computes what the
official segmentation HRNet computes: lower-resolution branches are upsampled
**bilinearly** in the fuse layers, to the exact size of the target branch, so any input
size works. ``fuse_mode="nearest"`` gives the ImageNet classification HRNet instead
(timm's), whose weights were trained with nearest-neighbour fusion.

Module names follow the official code and timm (``conv1``, ``layer1``, ``transition1``,
``stage2.0.fuse_layers.0.1.0`` ...), so timm ImageNet weights load as they are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from timm.models.resnet import BasicBlock, Bottleneck
from torch import nn

from segzoo.backbones.base import Backbone
from segzoo.layers.checkpoint import checkpoint_module
from segzoo.layers.conv import ConvNormAct
from segzoo.layers.multiscale import resize_concat

FUSE_MODES = ("bilinear", "nearest")
# keys of the ImageNet classification HRNet (timm, official) that the body does not have
IMAGENET_HEAD = ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier.")


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


def _make_blocks(block: type[nn.Module], cin: int, planes: int, num_blocks: int) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first gets a 1x1 projection if channels change."""
    cout = planes * block.expansion
    downsample = ConvNormAct(cin, cout, 1, act=False) if cin != cout else None
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
                    row.append(ConvNormAct(channels[j], channels[i], 1, act=False))
                elif j == i:
                    row.append(nn.Identity())
                else:  # i - j stride-2 convs; the last changes the channels, no ReLU after it
                    steps = [ConvNormAct(channels[j], channels[j], 3, 2) for _ in range(i - j - 1)]
                    steps.append(ConvNormAct(channels[j], channels[i], 3, 2, act=False))
                    row.append(nn.Sequential(*steps))
            self.fuse_layers.append(row)
        # one ReLU module per output branch (and per call site below): int8 quantization (PT2E) annotates a
        # module's call once, so a module called for several outputs would make one partition with many outputs
        self.fuse_acts = nn.ModuleList(nn.ReLU(inplace=True) for _ in self.fuse_layers)

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
            out.append(self.fuse_acts[i](y))
        return out


class HRNetBackbone(Backbone):
    """The HRNet body: four parallel branches, returned finest first.

    Input: ``N x 3 x H x W`` normalised images (any size). Output: the four branches of the
    last stage, strides 4, 8, 16, 32 with ``C, 2C, 4C, 8C`` channels. The branches run in
    parallel to the end, so the body overrides the head methods of
    :class:`~segzoo.backbones.base.Backbone`: heads that read one map read the HRNetV2
    representation (:meth:`representation`: every branch upsampled to stride 4 and
    concatenated, ``15C`` channels), and DeepLabV3+'s decoder refines it with the stride-4
    branch (:meth:`decoder_features`).

    Args:
        arch: the variant's numbers (see :data:`ARCHS`).
        fuse_mode: ``"bilinear"`` (official segmentation HRNet) or ``"nearest"`` (the
            ImageNet classification HRNet, as in timm).
        align_corners: ``align_corners`` of every bilinear upsampling in the fusion (official:
            False in the plain HRNetV2 configs, True in the OCR configs).
        weights: a local timm-format HRNet weights file (``timm.create_model(name)``'s
            state dict, or the official ImageNet ``hrnetv2_w*_imagenet_pretrained.pth``;
            the classification head's keys are ignored), or a timm tag (``"imagenet"``,
            ``"hrnet_w18.ms_aug_in1k"``) when ``name`` is timm's name of the variant.
        name: what the body is called in messages (``"hrnet_w18"``).
    """

    kind = "HRNet body"
    strides = (4, 8, 16, 32)  # the four branches
    weights_hint = "pass the timm weights of the same variant (e.g. hrnet_w18 for hrnet_w18)"

    def __init__(
        self,
        arch: HRNetArch,
        fuse_mode: str = "bilinear",
        align_corners: bool = False,
        weights: str | os.PathLike | None = None,
        name: str = "hrnet",
    ) -> None:
        super().__init__()
        self.name = name
        if fuse_mode not in FUSE_MODES:
            raise ValueError(
                f"fuse_mode must be 'bilinear' (official segmentation HRNet) or 'nearest' "
                f"(timm's ImageNet HRNet), got {fuse_mode!r}"
            )
        if len(arch.stage_modules) != 3 or min(arch.stage_modules) < 1 or min(
                arch.width, arch.stage1_blocks, arch.stage1_channels, arch.stage_blocks) < 1:
            raise ValueError(
                f"invalid HRNet variant {arch}: stage_modules needs 3 positive counts (stages 2-4) "
                "and widths and block counts must be positive; see segzoo.backbones.hrnet.ARCHS"
            )
        self.arch = arch
        self.fuse_mode = fuse_mode
        self.align_corners = align_corners
        self.conv1 = nn.Conv2d(3, 64, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)  # one module per call site (see HRModule.fuse_acts)
        self.act2 = nn.ReLU(inplace=True)
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
        self._init_weights()
        if weights is not None:
            self.load_weights(weights)

    @staticmethod
    def _transition(prev: list[int], cur: list[int]) -> nn.ModuleList:
        """Adapt the previous stage's branches to the next and add the new branch."""
        layers = nn.ModuleList()
        for i, c in enumerate(cur):
            if i < len(prev):
                layers.append(nn.Identity() if c == prev[i] else ConvNormAct(prev[i], c, 3))
            else:  # new branch from the lowest-resolution one, one stride-2 conv per step
                steps = [
                    ConvNormAct(prev[-1], c if k == i - len(prev) else prev[-1], 3, 2)
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

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four branch outputs of the last stage (strides 4, 8, 16, 32)."""
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        xs = [checkpoint_module(self.layer1, x, enabled=self.grad_checkpointing)]
        for s in (2, 3, 4):
            transition = getattr(self, f"transition{s - 1}")
            xs = [
                t(xs[i] if i < len(xs) else xs[-1]) for i, t in enumerate(transition)
            ]
            for module in getattr(self, f"stage{s}"):
                xs = checkpoint_module(module, xs, enabled=self.grad_checkpointing)
        return xs

    @property
    def channels(self) -> tuple[int, ...]:
        """``C, 2C, 4C, 8C`` (``C`` the variant's width)."""
        return tuple(self.arch.width * 2**i for i in range(4))

    # ------------------------------------------------------------------ head methods
    def representation(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """The HRNetV2 representation: the branches upsampled bilinearly to stride 4 (with the
        body's ``align_corners``) and concatenated, ``N x 15C x H/4 x W/4``."""
        return resize_concat(feats, self.align_corners)

    @property
    def head_channels(self) -> tuple[int, ...]:
        return (*self.channels, sum(self.channels))

    @property
    def head_strides(self) -> tuple[int, ...]:
        return (*self.strides, self.strides[0])

    def head_maps(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The branches, then the HRNetV2 representation: a one-map head reads ``[-1]`` (the
        representation) and an auxiliary head ``[-2]`` (the stride-32 branch) by default."""
        return [*feats, self.representation(feats)]

    def decoder_channels(self, low_stride: int = 4) -> tuple[int, int]:
        return sum(self.channels), self.channels[self.level_at(low_stride)]

    def decoder_features(self, feats: list[torch.Tensor], low_stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
        """``(representation, branch at low_stride)``: the HRNetV2 representation as the deep feature
        and the branch at ``low_stride`` (the stride-4 one) as the low-level feature."""
        return self.representation(feats), feats[self.level_at(low_stride)]

    def set_grad_checkpointing(self, enable: bool = True) -> HRNetBackbone:
        """Recompute stage 1 and every multi-resolution module in backward (the stem and the
        transitions keep their activations); BatchNorm statistics are updated once per step."""
        self.grad_checkpointing = bool(enable)
        return self

    def ignored_weight_keys(self, keys: Iterable[str]) -> set[str]:
        """The ImageNet classification head of timm's and the official HRNet."""
        return {k for k in keys if k.startswith(IMAGENET_HEAD)}

    def stage_prefixes(self) -> list[tuple[str, ...]]:
        """Stem (``conv1``...), stage 1 (``layer1``), stages 2-4 (their transitions first)."""
        return [("conv1.",), ("layer1.",), ("transition1.",), ("transition2.",), ("transition3.",)]


def hrnet_arch(name: str) -> HRNetArch:
    """The numbers of the HRNet variant ``name`` (a key of :data:`ARCHS`)."""
    if name not in ARCHS:
        raise ValueError(f"unknown HRNet {name!r}; choose one of {', '.join(ARCHS)}")
    return ARCHS[name]


def hrnet_backbone(
    name: str, weights: str | os.PathLike | None = None, fuse_mode: str = "bilinear",
    align_corners: bool = False,
) -> HRNetBackbone:
    """HRNet body by variant name (``"hrnet_w18"`` ...; see :data:`ARCHS`).

    Its outputs are the four branches at strides 4-32; the body has no dilation, so an
    ``output_stride`` does not apply to it.
    """
    return HRNetBackbone(hrnet_arch(name), fuse_mode=fuse_mode, align_corners=align_corners, weights=weights,
                         name=name)


__all__ = ["ARCHS", "FUSE_MODES", "HRModule", "HRNetArch", "HRNetBackbone", "hrnet_arch", "hrnet_backbone"]
