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
    import timm

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


@register_mapper("deeplabv3_")
def _map_deeplabv3(state: dict, name: str) -> tuple[dict[str, torch.Tensor], int]:
    """torchvision DeepLabV3: ResNet (``backbone.layer*``) or MobileNetV3-Large
    (``backbone.<feature index>``) backbone; the heads keep their keys."""
    mobilenet = "backbone.0.0.weight" in state
    if mobilenet != name.startswith("deeplabv3_mobilenetv3"):
        kind = "MobileNetV3" if mobilenet else "ResNet"
        raise ValueError(
            f"the state dict holds a torchvision DeepLabV3 with a {kind} backbone but {name!r} "
            "was asked for; use deeplabv3_mobilenetv3_large for MobileNetV3 weights and "
            "deeplabv3_resnet50/101 for ResNet weights"
        )
    if not mobilenet:
        return _map_fcn(state, name)
    out = _map_mobilenetv3_features(state, name)
    for k, v in state.items():
        if k.startswith(("classifier.", "aux_classifier.")):
            out[k] = v
        elif not k.startswith("backbone."):
            raise KeyError(f"unexpected key {k!r} in a torchvision {name} state dict")
    if "classifier.4.weight" not in out:
        raise KeyError("no classifier.4.weight: this is not a torchvision DeepLabV3 state dict")
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
    if name.startswith(("maskrcnn_", "fasterrcnn_")):
        build_kwargs.setdefault("frozen_bn", True)  # torchvision's detectors freeze backbone BN
    model = segzoo.build(name, num_classes=num_classes, **build_kwargs)
    load_weights(model, mapped)
    return model.eval()
