"""Classification checkpoints in other libraries' key layouts, mapped 1:1 onto timm's models.

A backbone's weights file may hold the state dict of a torchvision classifier instead of timm's:
:func:`detect_layout` recognises the layout from the keys and shapes alone (never the file name) and
:func:`to_timm` renames the keys into the timm model that computes the same function:

* torchvision ``mobilenet_v2`` -> timm ``mobilenetv2_100``: ``features.0`` is timm's stem,
  ``features.1`` to ``features.17`` are timm's 17 blocks in order (the first has no expansion:
  timm's ``DepthwiseSeparableConv``), ``features.18`` is the 1x1 head conv and ``classifier.1`` the
  classifier;
* torchvision ``resnet18/34/50/101/152`` -> timm ``resnet18/34/50/101/152``: timm's ResNet keeps
  torchvision's names (``conv1``, ``layer1.0.conv1``, ``downsample.0``, ``fc``), so the keys stay and
  only the depth is read from the blocks.

A file already in timm's layout is returned as it is.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import timm
import torch

State = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Layout:
    """One foreign layout: ``match(state)`` gives the timm architecture it maps to (or None), ``rename`` maps it."""

    name: str
    match: Callable[[State], str | None]
    rename: Callable[[State, str], State]


def _timm_blocks(arch: str) -> list[str]:
    """timm's block names (``blocks.i.j``) in forward order, read from the model built on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    return [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks) for j in range(len(stage))]


# ---------------------------------------------------------------------------------------------- MobileNetV2
_MBV2_WIDTHS = {32: "mobilenetv2_100"}  # stem channels -> timm architecture (torchvision's width 1.0)
# torchvision conv-block index inside ``features.k.conv`` -> timm (conv, norm) names
_MBV2_EXPANDED = {"0.0": "conv_pw", "0.1": "bn1", "1.0": "conv_dw", "1.1": "bn2", "2": "conv_pwl", "3": "bn3"}
_MBV2_FIRST = {"0.0": "conv_dw", "0.1": "bn1", "1": "conv_pw", "2": "bn2"}


def _match_mobilenet_v2(state: State) -> str | None:
    needed = ("features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
              "features.18.0.weight", "classifier.1.weight")
    if not all(k in state for k in needed) or any(k.startswith("blocks.") for k in state):
        return None
    return _MBV2_WIDTHS.get(int(state["features.0.0.weight"].shape[0]))


def _rename_mobilenet_v2(state: State, arch: str) -> State:
    blocks = _timm_blocks(arch)
    last = len(blocks) + 1  # features.<last> is the head conv
    out = {}
    pattern = re.compile(r"features\.(\d+)\.(.+)")
    for key, value in state.items():
        if key.startswith("classifier.1."):
            out["classifier." + key.removeprefix("classifier.1.")] = value
            continue
        m = pattern.fullmatch(key)
        if m is None:
            raise KeyError(f"unexpected key {key!r} in a torchvision mobilenet_v2 state dict")
        index, rest = int(m.group(1)), m.group(2)
        if index in (0, last):  # stem / head: 0 conv, 1 BN
            layer, param = rest.split(".", 1)
            names = ("conv_stem", "bn1") if index == 0 else ("conv_head", "bn2")
            out[names[int(layer)] + "." + param] = value
            continue
        if index > last:
            raise KeyError(f"{key!r}: timm {arch} has {len(blocks)} blocks (features.1-{len(blocks)}) and a head")
        table = _MBV2_FIRST if index == 1 else _MBV2_EXPANDED
        where, param = rest.removeprefix("conv.").rsplit(".", 1)
        if where not in table:
            raise KeyError(f"unexpected key {key!r} in a torchvision mobilenet_v2 block")
        out[f"{blocks[index - 1]}.{table[where]}.{param}"] = value
    return out


# ---------------------------------------------------------------------------------------------- ResNet
_RESNET_DEPTHS = {("basic", (2, 2, 2, 2)): "resnet18", ("basic", (3, 4, 6, 3)): "resnet34",
                  ("bottleneck", (3, 4, 6, 3)): "resnet50", ("bottleneck", (3, 4, 23, 3)): "resnet101",
                  ("bottleneck", (3, 8, 36, 3)): "resnet152"}


def _match_resnet(state: State) -> str | None:
    conv1 = state.get("conv1.weight")
    if conv1 is None or tuple(conv1.shape[1:]) != (3, 7, 7) or "fc.weight" not in state:
        return None  # timm's deep-stem variants (resnet50d: conv1.0) are not torchvision's layout
    counts = tuple(len({int(k.split(".")[1]) for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    kind = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    arch = _RESNET_DEPTHS.get((kind, counts))
    if arch is None:
        return None
    # ResNeXt and wide ResNets share the names and depths: only the shapes tell them apart
    with torch.device("meta"):
        own = timm.create_model(arch, pretrained=False).state_dict()
    fits = all(k in state and tuple(state[k].shape) == tuple(v.shape) for k, v in own.items())
    return arch if fits else None


LAYOUTS: tuple[Layout, ...] = (
    Layout("torchvision mobilenet_v2", _match_mobilenet_v2, _rename_mobilenet_v2),
    Layout("torchvision resnet", _match_resnet, lambda state, arch: dict(state)),
)


def detect_layout(state: State) -> tuple[Layout, str] | None:
    """``(layout, timm architecture)`` of a foreign classification state dict, or None."""
    for layout in LAYOUTS:
        arch = layout.match(state)
        if arch is not None:
            return layout, arch
    return None


def to_timm(state: State, arch: str | None = None) -> tuple[State, str | None]:
    """``state`` in the key layout of timm's ``arch`` (the full classifier), and the layout it came from.

    Args:
        state: a classification state dict (``module.`` prefixes already removed).
        arch: the timm architecture it must fit; a recognised foreign layout of another
            architecture raises a ValueError that names both.

    Returns:
        ``(state, layout name)``; ``(state, None)`` unchanged when no foreign layout is recognised
        (a timm file, or something the caller's strict load will describe).
    """
    found = detect_layout(state)
    if found is None:
        return state, None
    layout, source_arch = found
    if arch is not None and source_arch != arch:
        raise ValueError(f"the file holds {layout.name} weights, which fit timm {source_arch!r}, but the backbone "
                         f"is {arch!r}; build with backbone={source_arch!r} or pass weights of {arch}")
    return layout.rename(state, source_arch), layout.name


__all__ = ["LAYOUTS", "Layout", "detect_layout", "to_timm"]
