"""torchvision -> segzoo weight conversion, dispatched by the target model's class.

FCN and DeepLabV3 keep torchvision's head layout, so only the backbone prefix changes
(ResNet) or the MobileNetV3 feature indices are renamed to timm's. Faster/Mask R-CNN are
mapped in :mod:`segzoo.convert.torchvision_detection`, which also shifts torchvision's
1-based labels to segzoo's 0-based ones. The mapper is chosen by the class the entrypoint
declares (:data:`CONVERTERS`), never by its name; after building, the mapped keys must be
exactly the model's, or a ValueError says what the state dict holds and which models fit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import timm
import torch
from torch import nn

from segzoo.checkpoint import load_weights
from segzoo.convert.keys import resnet_depth, strip_module
from segzoo.convert.torchvision_detection import describe_rcnn, map_rcnn
from segzoo.models.deeplab import DeepLabV3
from segzoo.models.fcn import FCN
from segzoo.models.mask_rcnn import FasterRCNN
from segzoo.registry import build, entry_class


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


def _map_deeplabv3(state: dict, name: str) -> tuple[dict[str, torch.Tensor], int]:
    """torchvision DeepLabV3: ResNet (``backbone.layer*``) or MobileNetV3-Large
    (``backbone.<feature index>``) backbone; the heads keep their keys."""
    if "backbone.0.0.weight" not in state:  # ResNet
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


def _describe_segmentation(arch: str, entry: str) -> Callable[[dict], tuple[str, str]]:
    def describe(state: dict) -> tuple[str, str]:
        if "backbone.0.0.weight" in state:
            return (f"a torchvision {arch} with a MobileNetV3-Large backbone",
                    "convert it into deeplabv3_mobilenetv3_large")
        depth = resnet_depth(state, "backbone.")
        body = f"ResNet-{depth}" if depth else "ResNet"
        return (f"a torchvision {arch} with a {body} backbone",
                f"convert it into {entry}_resnet50/101 (or a {arch} built with backbone='resnet{depth or 50}')")

    return describe


def _aux_default(mapped: dict) -> dict[str, Any]:
    return {"aux_loss": any(k.startswith("aux_classifier.") for k in mapped)}


@dataclasses.dataclass(frozen=True)
class Converter:
    """How torchvision weights become one segzoo model family.

    Attributes:
        map: ``(state_dict, name) -> (segzoo state dict, num_classes)``.
        build_defaults: builder arguments the mapped weights imply (the user's win).
        describe: ``state_dict -> (what it holds, which segzoo models fit)`` for errors.
    """

    map: Callable[[dict, str], tuple[dict[str, torch.Tensor], int]]
    build_defaults: Callable[[dict], dict[str, Any]]
    describe: Callable[[dict], tuple[str, str]]


#: builder arguments of a Faster/Mask R-CNN converted from torchvision: the recipe of
#: torchvision's trained detectors (``maskrcnn_resnet50_fpn(weights=...)``); a build argument
#: of the same name overrides it
RCNN_RECIPE = MappingProxyType({"frozen_bn": True, "trainable_backbone_layers": 3})

#: segzoo model class -> its torchvision converter (subclasses use their base's: MaskRCNN).
CONVERTERS: dict[type, Converter] = {
    FCN: Converter(_map_fcn, _aux_default, _describe_segmentation("FCN", "fcn")),
    DeepLabV3: Converter(_map_deeplabv3, _aux_default, _describe_segmentation("DeepLabV3", "deeplabv3")),
    # torchvision's recipe for its trained detectors: frozen BatchNorm in the backbone and
    # trainable_backbone_layers=3 (the stem and layer1 do not train)
    FasterRCNN: Converter(map_rcnn, lambda mapped: dict(RCNN_RECIPE), describe_rcnn),
}


def converter_for(cls: type) -> Converter:
    """The converter of a model class (or of its nearest base that has one)."""
    for klass in cls.__mro__:
        if klass in CONVERTERS:
            return CONVERTERS[klass]
    raise ValueError(
        f"torchvision has no {cls.__name__} to convert from; the torchvision converter builds "
        f"{', '.join(c.__name__ for c in CONVERTERS)} models (and their subclasses)"
    )


def check_fits(model: nn.Module, mapped: dict[str, torch.Tensor], name: str, holds: str, fits: str) -> None:
    """Raise a ValueError unless the mapped keys and shapes are exactly the model's."""
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    src = {k: tuple(v.shape) for k, v in mapped.items() if not k.endswith("num_batches_tracked")}
    if own == src:
        return
    missing = sorted(set(own) - set(src))
    extra = sorted(set(src) - set(own))
    shapes = sorted(k for k in set(own) & set(src) if own[k] != src[k])
    diff = "; ".join(part for part in (
        f"{len(missing)} model keys not in it ({', '.join(missing[:3])})" if missing else "",
        f"{len(extra)} of its keys not in the model ({', '.join(extra[:3])})" if extra else "",
        f"{len(shapes)} shapes differ ({', '.join(shapes[:3])})" if shapes else "",
    ) if part)
    backbone = getattr(getattr(model, "backbone", None), "name", "?")
    raise ValueError(
        f"the state dict holds {holds} but {name!r} builds a {type(model).__name__} with backbone "
        f"{backbone!r}: {diff}; {fits}"
    )


def from_torchvision(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo model ``name`` holding the weights of a torchvision state dict.

    Args:
        state_dict: the torchvision model's ``state_dict()``.
        name: the segzoo model name (e.g. ``"fcn_resnet50"``, ``"maskrcnn_resnet50_fpn"``);
            its class (FCN, DeepLabV3, FasterRCNN, MaskRCNN) picks the key mapping.
        **build_kwargs: extra builder arguments (``num_classes`` is read from the source).
            They win over what the conversion implies: a Faster/Mask R-CNN is built with
            torchvision's fine-tuning recipe (:data:`RCNN_RECIPE`: frozen BatchNorm, the
            last 3 backbone stages trainable), ``trainable_backbone_layers=5`` trains all.

    Returns:
        The segzoo model in eval mode, with ``model.spec`` set.

    Raises:
        ValueError: the model's class has no torchvision counterpart, or the state dict
            does not fit the model that ``name`` builds (another backbone, say).
    """
    conv = converter_for(entry_class(name))  # a clear KeyError for unknown names
    state = strip_module(dict(state_dict))
    mapped, num_classes = conv.map(state, name)
    kwargs = {**conv.build_defaults(mapped), **build_kwargs}
    model = build(name, num_classes=num_classes, **kwargs)
    check_fits(model, mapped, name, *conv.describe(state))
    for k, v in model.state_dict().items():  # BatchNorm counters the mapping drops
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = torch.zeros_like(v)
    load_weights(model, mapped)
    return model.eval()
