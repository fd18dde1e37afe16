"""CenterNet necks: backbone features -> one stride-4 feature map.

Each neck has the module layout of an official CenterNet architecture so that its
weights convert by renaming only (see :func:`segzoo.models.centernet.from_centernet_official`):

* :class:`DeconvNeck` -- ``msra_resnet`` (``res_*``: plain 4x4 stride-2 deconvolutions)
  and ``resnet_dcn`` (``resdcn_*``: a 3x3 DCNv2 before each bilinear-initialised deconv);
* :class:`DLAUpNeck` -- ``pose_dla_dcn`` (``dla_34``): DLA-Up then IDA-Up, with DCNv2
  (or plain 3x3 convolutions with ``deformable=False``) in the projections and nodes;
* :class:`DLAUpV0Neck` -- ``dlav0`` (``dlav0_34``): the original DLA-Up, whose nodes are
  3x3 convolutions over concatenated inputs and whose projections are 1x1 convolutions.

Necks read the backbone's ``channels`` and ``strides`` and never its name, so any timm
backbone with stride-4...32 features works; ``out_channels`` is the map's width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from segzoo.layers.conv import ConvNormAct
from segzoo.layers.dcn import ModulatedDeformConv2d


def bilinear_upsampling_(up: nn.ConvTranspose2d) -> nn.ConvTranspose2d:
    """Initialise a stride-f, 2f-kernel transposed conv as per-channel bilinear upsampling."""
    k = up.kernel_size[0]
    f = math.ceil(k / 2)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    r = 1 - (torch.arange(k, dtype=torch.float32) / f - c).abs()
    kernel = r[:, None] * r[None, :]  # (k, k)
    with torch.no_grad():
        up.weight.zero_()
        if up.groups == up.in_channels:  # depthwise: weight is (C, 1, k, k)
            up.weight[:, 0] = kernel
        else:  # dense: channel i -> channel i only
            n = min(up.in_channels, up.out_channels)
            up.weight[torch.arange(n), torch.arange(n)] = kernel
    return up


class DeconvNeck(nn.Module):
    """Upsampling by 4x4 stride-2 transposed convolutions, each followed by BN + ReLU.

    Input: the last backbone map; output: ``out_channels`` at ``2**len(widths)`` times
    the resolution. ``nn.Sequential`` indices match the official ``deconv_layers``.

    Args:
        in_channels: channels of the input map.
        widths: output channels of each stage.
        conv: ``"none"`` (``msra_resnet``: deconv only; deconv init normal with the He std of its
            fan-in, see below),
            ``"dcn"`` (``resnet_dcn``: a 3x3 DCNv2 + BN + ReLU before each deconv, which
            is initialised as bilinear upsampling) or ``"conv"`` (the same with a plain
            3x3 convolution, exportable to ONNX).

    The official ``msra_resnet`` draws these deconvolutions from normal(0, 0.001). A bias-free
    convolution followed by BatchNorm computes the same training-mode function at any weight
    scale, so segzoo keeps the normal draw but scales it to He's std for the transposed
    convolution's fan-in (``in_channels x (4 / 2)**2`` taps per output): at std 0.001 the first
    deconvolution's outputs have a variance near 1e-4, and BatchNorm's running variance, which starts
    at 1 with momentum 0.1, needs about 100 steps before eval mode computes what training does (after
    60 steps the eval-mode neck output was 8 times smaller than the training-mode one, and the heatmap
    a flat 0.1 in eval mode); Adam's steps of ``lr`` on weights of 0.001 also overturn the neck at
    every step at lr 1e-3.
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (256, 256, 256), conv: str = "none"):
        super().__init__()
        if conv not in ("none", "dcn", "conv"):
            raise ValueError(f"conv must be 'none', 'dcn' or 'conv', got {conv!r}")
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            if conv != "none":
                pre = (ModulatedDeformConv2d(c, w, 3, padding=1) if conv == "dcn"
                       else nn.Conv2d(c, w, 3, padding=1))
                layers += [pre, nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            up = nn.ConvTranspose2d(c, w, 4, stride=2, padding=1, bias=False)
            if conv == "none":
                nn.init.normal_(up.weight, std=(2.0 / (c * 4)) ** 0.5)  # He: c x 2 x 2 taps per output
            else:
                bilinear_upsampling_(up)
            layers += [up, nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            c = w
        self.layers = nn.Sequential(*layers)
        self.widths = tuple(widths)
        self.out_channels = c
        self.upsampling = 2 ** len(widths)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.layers(feats[-1])


class ConvBlock(nn.Module):
    """``3x3 conv (DCNv2 or plain, with bias) -> BN -> ReLU`` (official ``DeformConv``)."""

    def __init__(self, in_channels: int, out_channels: int, deformable: bool = True) -> None:
        super().__init__()
        self.conv = (ModulatedDeformConv2d(in_channels, out_channels, 3, padding=1) if deformable
                     else nn.Conv2d(in_channels, out_channels, 3, padding=1))
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def _up(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Depthwise bilinear-initialised ``factor``-times upsampling (kernel ``2 * factor``)."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2,
                            groups=channels, bias=False)
    return bilinear_upsampling_(up)


class IDAUp(nn.Module):
    """Iterative deep aggregation of ``pose_dla_dcn``.

    For ``i >= 1``: ``out[i] = node_i(up_i(proj_i(x[i])) + out[i - 1])`` with ``out[0] =
    x[0]``; ``x[i]`` is ``up_factors[i]`` times coarser than ``x[0]``.
    """

    def __init__(self, out_channels: int, channels: Sequence[int], up_factors: Sequence[int],
                 deformable: bool = True) -> None:
        super().__init__()
        for i in range(1, len(channels)):
            setattr(self, f"proj_{i}", ConvBlock(channels[i], out_channels, deformable))
            setattr(self, f"up_{i}", _up(out_channels, int(up_factors[i])))
            setattr(self, f"node_{i}", ConvBlock(out_channels, out_channels, deformable))
        self.num_inputs = len(channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [feats[0]]
        for i in range(1, self.num_inputs):
            up = getattr(self, f"up_{i}")(getattr(self, f"proj_{i}")(feats[i]))
            out.append(getattr(self, f"node_{i}")(up + out[-1]))
        return out


def _dla_up_plan(channels: Sequence[int], scales: Sequence[int]):
    """(out channels, input channels, up factors) of each IDA stage of DLA-Up, deepest first."""
    in_ch, sc, plan = list(channels), list(scales), []
    for i in range(len(channels) - 1):
        j = len(channels) - i - 2
        plan.append((channels[j], tuple(in_ch[j:]), tuple(s // sc[j] for s in sc[j:])))
        sc[j + 1:] = [sc[j]] * (len(sc) - j - 1)
        in_ch[j + 1:] = [channels[j]] * (len(in_ch) - j - 1)
    return plan


def _check_pyramid(strides: Sequence[int], what: str) -> list[int]:
    if len(strides) < 2 or any(b != 2 * a for a, b in zip(strides, strides[1:])):
        raise ValueError(f"{what} needs backbone maps whose strides double from level to level "
                         f"(e.g. 4, 8, 16, 32), got strides {tuple(strides)}; pick another backbone "
                         "or use neck='deconv'")
    return [s // strides[0] for s in strides]


class DLAUpNeck(nn.Module):
    """DLA-Up and IDA-Up of ``pose_dla_dcn`` (CenterNet ``dla_34``) on any feature pyramid.

    Input: backbone maps from stride ``s`` to ``8 s`` or more (DLA-34: strides 4...32 with
    64...512 channels). DLA-Up merges them deepest-first into one map per level; IDA-Up
    then merges all but the deepest of those into ``channels[0]`` channels at stride ``s``.

    Args:
        channels: channels of the input maps, finest first.
        strides: their strides.
        deformable: DCNv2 (official) or plain 3x3 convolutions.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int], deformable: bool = True):
        super().__init__()
        scales = _check_pyramid(strides, "the DLA-Up neck")
        self.dla_up = nn.Module()
        for i, (out, ins, ups) in enumerate(_dla_up_plan(channels, scales)):
            self.dla_up.add_module(f"ida_{i}", IDAUp(out, ins, ups, deformable))
        n = len(channels) - 1
        self.ida_up = IDAUp(channels[0], channels[:n], [2 ** i for i in range(n)], deformable)
        self.num_levels = len(channels)
        self.out_channels = channels[0]
        self.upsampling = 1

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        layers = list(feats)
        out = [layers[-1]]
        for i in range(self.num_levels - 1):
            start = self.num_levels - i - 2
            layers[start:] = getattr(self.dla_up, f"ida_{i}")(layers[start:])
            out.insert(0, layers[-1])
        return self.ida_up(out[:-1])[-1]


class IDAUpV0(nn.Module):
    """Iterative deep aggregation of ``dlav0``: 1x1 projections, concatenating 3x3 nodes."""

    def __init__(self, out_channels: int, channels: Sequence[int], up_factors: Sequence[int],
                 node_kernel: int = 3) -> None:
        super().__init__()
        for i, c in enumerate(channels):
            proj = nn.Identity() if c == out_channels else ConvNormAct(c, out_channels, 1)
            f = int(up_factors[i])
            setattr(self, f"proj_{i}", proj)
            setattr(self, f"up_{i}", nn.Identity() if f == 1 else _up(out_channels, f))
        for i in range(1, len(channels)):
            setattr(self, f"node_{i}", ConvNormAct(2 * out_channels, out_channels, node_kernel))
        self.num_inputs = len(channels)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        ups = [getattr(self, f"up_{i}")(getattr(self, f"proj_{i}")(f)) for i, f in enumerate(feats)]
        x, out = ups[0], []
        for i in range(1, self.num_inputs):
            x = getattr(self, f"node_{i}")(torch.cat([x, ups[i]], dim=1))
            out.append(x)
        return out


class DLAUpV0Neck(nn.Module):
    """The original DLA-Up of ``dlav0`` (CenterNet ``dlav0_34``): no deformable convs.

    Input: maps from stride ``s`` up (DLA-34: strides 4...32); output: ``channels[0]``
    channels at stride ``s``.
    """

    def __init__(self, channels: Sequence[int], strides: Sequence[int]):
        super().__init__()
        scales = _check_pyramid(strides, "the DLA-Up v0 neck")
        self.dla_up = nn.Module()
        for i, (out, ins, ups) in enumerate(_dla_up_plan(channels, scales)):
            self.dla_up.add_module(f"ida_{i}", IDAUpV0(out, ins, ups))
        self.num_levels = len(channels)
        self.out_channels = channels[0]
        self.upsampling = 1

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        layers = list(feats)
        for i in range(self.num_levels - 1):
            out = getattr(self.dla_up, f"ida_{i}")(layers[-i - 2:])
            layers[-i - 1:] = out
        return out[-1]


# ---------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class Neck:
    """How CenterNet builds one neck.

    Attributes:
        build: ``(channels, strides, widths, out_stride) -> module`` over the backbone maps it
            reads; ``widths`` are the ``deconv*`` necks' stage widths.
        levels: how many of the deepest backbone maps it reads (None: all).
    """

    build: Callable[[Sequence[int], Sequence[int], Sequence[int], int], nn.Module]
    levels: int | None


def _deconv(conv: str) -> Callable[[Sequence[int], Sequence[int], Sequence[int], int], nn.Module]:
    def build(channels: Sequence[int], strides: Sequence[int], widths: Sequence[int], out_stride: int) -> nn.Module:
        last = strides[-1]
        n_up = round(math.log2(last / out_stride)) if last >= out_stride else -1
        if n_up < 0 or 2 ** n_up * out_stride != last or len(widths) != n_up:
            raise ValueError(
                f"the backbone ends at stride {last}: a deconvolution neck needs {max(n_up, 0)} "
                f"upsampling stages to reach stride {out_stride}, but neck_channels={tuple(widths)}; pass "
                "neck_channels with one width per stage")
        return DeconvNeck(channels[-1], tuple(widths), conv)

    return build


def _dla(v0: bool, deformable: bool = True) -> Callable[[Sequence[int], Sequence[int], Sequence[int], int], nn.Module]:
    def build(channels: Sequence[int], strides: Sequence[int], widths: Sequence[int], out_stride: int) -> nn.Module:
        if strides[0] != out_stride:
            raise ValueError(
                f"the DLA-Up necks need backbone maps from stride {out_stride} up (4, 8, 16, 32), but the "
                f"backbone gives strides {tuple(strides)}; use a CNN backbone (resnet, dla, convnext...) "
                "or neck='deconv'")
        return DLAUpV0Neck(channels, strides) if v0 else DLAUpNeck(channels, strides, deformable)

    return build


#: neck name -> how to build it: ``deconv*`` (official ``res_*``/``resdcn_*``), ``dla_up*``
#: (``dla_34``), ``dlav0`` (``dlav0_34``).
NECKS: dict[str, Neck] = {
    "deconv": Neck(_deconv("none"), levels=1),
    "deconv_dcn": Neck(_deconv("dcn"), levels=1),
    "deconv_conv": Neck(_deconv("conv"), levels=1),
    "dla_up": Neck(_dla(v0=False, deformable=True), levels=4),
    "dla_up_conv": Neck(_dla(v0=False, deformable=False), levels=4),
    "dlav0": Neck(_dla(v0=True), levels=4),
}
