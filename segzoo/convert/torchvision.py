"""torchvision -> segzoo weight conversion.

Semantic models (FCN, DeepLabV3) keep torchvision's head layout, so only the backbone
prefix changes. Detection models (Mask R-CNN, Faster R-CNN) are handled in
:mod:`segzoo.convert.torchvision_detection`, which also shifts torchvision's 1-based
labels to segzoo's 0-based ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import segzoo
from segzoo.checkpoint import load_weights
from segzoo.registry import get_entry

# arch prefix -> function(state_dict, name) -> (segzoo state dict, num_classes)
_MAPPERS: dict[str, Callable[[dict, str], tuple[dict, int]]] = {}


def register_mapper(*prefixes: str):
    def deco(fn):
        for p in prefixes:
            _MAPPERS[p] = fn
        return fn

    return deco


def _strip_module(state: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state.items()}


@register_mapper("fcn_")
def _map_fcn(state: dict, name: str) -> tuple[dict[str, torch.Tensor], int]:
    """torchvision FCN: ``backbone.*`` (IntermediateLayerGetter over ResNet) and heads."""
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


def from_torchvision(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo model ``name`` holding the weights of a torchvision state dict.

    Args:
        state_dict: the torchvision model's ``state_dict()``.
        name: the segzoo model name (e.g. ``"fcn_resnet50"``, ``"maskrcnn_resnet50_fpn"``).
        **build_kwargs: extra builder arguments (``num_classes`` is read from the source).

    Returns:
        The segzoo model in eval mode, with ``model.spec`` set.
    """
    get_entry(name)  # a clear KeyError for unknown names
    state = _strip_module(dict(state_dict))
    mapper = next((fn for p, fn in _MAPPERS.items() if name.startswith(p)), None)
    if mapper is None and name.startswith(("maskrcnn_", "fasterrcnn_")):
        from segzoo.convert import torchvision_detection  # noqa: F401  (registers mappers)

        mapper = next((fn for p, fn in _MAPPERS.items() if name.startswith(p)), None)
    if mapper is None:
        raise ValueError(
            f"no torchvision converter for {name!r}; supported prefixes: {', '.join(_MAPPERS)}"
        )
    mapped, num_classes = mapper(state, name)
    build_kwargs.setdefault("aux_loss", any(k.startswith("aux_classifier.") for k in mapped)) \
        if name.startswith(("fcn_", "deeplabv3_")) else None
    model = segzoo.build(name, num_classes=num_classes, **build_kwargs)
    load_weights(model, mapped)
    return model.eval()
