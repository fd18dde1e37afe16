"""The converter machinery the families share; their key maps live beside them.

A converter takes a source state dict (already read, e.g. with
:func:`segzoo.checkpoint.read_state_dict`) and returns a built segzoo model with the weights
loaded; ``num_classes`` is read from the source. Each family keeps the key maps of its sources in
its own module (a "key maps" section: :func:`segzoo.models.fcn.map_torchvision`,
:func:`segzoo.models.mask_rcnn.map_rcnn`, :func:`segzoo.models.hrnet.map_hrnet_official`, ...) and
registers them; this module holds what is not one family's:

* the helpers every key map uses (:func:`resnet_depth`, :func:`strip_module`, :func:`load_converted`);
* the sources that serve several families, dispatched by the class the entrypoint declares, never
  by its name: :func:`from_torchvision` (FCN, DeepLabV3, Faster/Mask R-CNN) and
  :func:`from_huggingface` (SegFormer, UPerNet, Mask2Former, EoMT). A family adds its class to :data:`TORCHVISION` or
  :data:`HUGGINGFACE` with :func:`register_key_map`; after building, the mapped keys must be exactly
  the model's, or a ValueError says what the state dict holds and which models fit.

Each converter is registered as a source of the hub's table (:func:`segzoo.hub.published.register_converter`),
so ``build(name, weights=TAG)`` reaches it through the registry without importing this package.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from segzoo.checkpoint import load_weights
from segzoo.hub.published import register_converter
from segzoo.registry import build, entry_class

# ---------------------------------------------------------------------------- key helpers

# (bottleneck blocks?, blocks in layer3) -> ResNet depth
_RESNET_DEPTH = {(False, 2): 18, (False, 6): 34, (True, 6): 50, (True, 23): 101, (True, 36): 152}


def resnet_depth(state: dict, prefix: str = "") -> int | None:
    """Depth of a torchvision-layout ResNet body (``{prefix}layer1...``) from its block counts,
    or None when the keys are not those of a known ResNet."""
    layer3 = [k for k in state if k.startswith(f"{prefix}layer3.")]
    if not layer3:
        return None
    blocks = 1 + max(int(k[len(prefix):].split(".")[1]) for k in layer3)
    return _RESNET_DEPTH.get((f"{prefix}layer1.0.conv3.weight" in state, blocks))


def strip_module(state: dict) -> dict:
    """Remove the ``module.`` prefix that DataParallel/DDP checkpoints carry."""
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_converted(model: nn.Module, mapped: dict[str, torch.Tensor]) -> nn.Module:
    """Load mapped weights into a built model (strictly) and return it in eval mode; the BatchNorm
    counters (``num_batches_tracked``) that the source lacks (old PyTorch files) or a key map drops
    start at 0."""
    for k, v in model.state_dict().items():
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = torch.zeros_like(v)
    load_weights(model, mapped)
    return model.eval()


def _no_defaults(mapped: dict) -> dict[str, Any]:
    return {}


# ---------------------------------------------------------------------------- class-dispatched sources


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """How one source's weights become one segzoo model family.

    Attributes:
        map: ``(state_dict, name) -> (segzoo state dict, num_classes)``.
        build_defaults: builder arguments the mapped weights imply (the user's win).
        describe: ``state_dict -> (what it holds, which segzoo models fit)``: the mapped keys must
            then be exactly the built model's (:func:`check_fits`), or the error says both.
        check: ``(model, mapped, name) -> None``: a family's own check of the built model, raising a
            ValueError that names the model to choose.
    """

    map: Callable[[dict, str], tuple[dict[str, torch.Tensor], int]]
    build_defaults: Callable[[dict], dict[str, Any]] = _no_defaults
    describe: Callable[[dict], tuple[str, str]] | None = None
    check: Callable[[nn.Module, dict, str], None] | None = None


#: segzoo model class -> its torchvision key map (subclasses use their base's: MaskRCNN)
TORCHVISION: dict[type, KeyMap] = {}
#: segzoo model class -> its Hugging Face transformers key map
HUGGINGFACE: dict[type, KeyMap] = {}
#: segzoo model class -> its segmentation_models_pytorch key map (where smp's layout differs from segzoo's)
SMP: dict[type, KeyMap] = {}


def register_key_map(table: dict[type, KeyMap], cls: type, key_map: KeyMap) -> None:
    """Add a family's key map for ``cls`` to a source's table (:data:`TORCHVISION`, :data:`HUGGINGFACE`)."""
    if cls in table:
        raise ValueError(f"{cls.__name__} has two key maps for one source; keep one")
    table[cls] = key_map


def key_map_for(table: dict[type, KeyMap], cls: type) -> KeyMap | None:
    """The key map of a model class (or of its nearest base that has one), or None."""
    return next((table[klass] for klass in cls.__mro__ if klass in table), None)


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


def convert_with(key_map: KeyMap, state_dict: dict, name: str, build_kwargs: dict[str, Any]) -> nn.Module:
    """Map ``state_dict`` with ``key_map``, build ``name`` with the source's ``num_classes`` (and the
    defaults the mapped weights imply, under ``build_kwargs``), check the result and load it."""
    state = strip_module(dict(state_dict))
    mapped, num_classes = key_map.map(state, name)
    kwargs = {**key_map.build_defaults(mapped), **build_kwargs}
    model = build(name, num_classes=num_classes, **kwargs)
    if key_map.describe is not None:
        check_fits(model, mapped, name, *key_map.describe(state))
    if key_map.check is not None:
        key_map.check(model, mapped, name)
    return load_converted(model, mapped)


def from_torchvision(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo model ``name`` holding the weights of a torchvision state dict.

    Args:
        state_dict: the torchvision model's ``state_dict()``.
        name: the segzoo model name (e.g. ``"fcn_resnet50"``, ``"maskrcnn_resnet50_fpn"``);
            its class (FCN, DeepLabV3, FasterRCNN, MaskRCNN) picks the key mapping.
        **build_kwargs: extra builder arguments (``num_classes`` is read from the source).
            They win over what the conversion implies: a Faster/Mask R-CNN is built with
            torchvision's fine-tuning recipe (:data:`segzoo.models.mask_rcnn.RCNN_RECIPE`: frozen
            BatchNorm, the last 3 backbone stages trainable), ``trainable_backbone_layers=5`` trains all.

    Returns:
        The segzoo model in eval mode, with ``model.spec`` set.

    Raises:
        ValueError: the model's class has no torchvision counterpart, or the state dict
            does not fit the model that ``name`` builds (another backbone, say).
    """
    cls = entry_class(name)  # a clear KeyError for unknown names
    key_map = key_map_for(TORCHVISION, cls)
    if key_map is None:
        raise ValueError(
            f"torchvision has no {cls.__name__} to convert from; the torchvision converter builds "
            f"{', '.join(c.__name__ for c in TORCHVISION)} models (and their subclasses)"
        )
    return convert_with(key_map, state_dict, name, build_kwargs)


def from_huggingface(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo model ``name`` holding a Hugging Face SegFormer, UPerNet, Mask2Former or EoMT state dict.

    Hugging Face's image processors for these repositories normalise with the ImageNet mean/std,
    which segzoo models do inside, so converted models take plain [0, 1] RGB input.

    Args:
        state_dict: ``model.state_dict()`` of the transformers model, or its published file read
            with :func:`segzoo.checkpoint.read_state_dict` (``pytorch_model.bin`` / ``model.safetensors``).
        name: ``"segformer_b0"`` ... ``"segformer_b5"``, ``"upernet_convnext_tiny"``, ``"upernet_swin_tiny"``,
            ``"mask2former_swin_tiny"`` or ``"eomt_vit_small/base/large"``.
        **build_kwargs: extra builder arguments; ``num_classes`` is read from the source. SegFormer's
            MiT keeps the LayerNorm epsilon its weights were trained with (1e-6); pass ``norm_eps=1e-5``
            to reproduce transformers' outputs to the last bit.

    Returns:
        The model in eval mode, with ``model.spec`` set.
    """
    cls = entry_class(name)  # a clear KeyError for unknown names
    key_map = key_map_for(HUGGINGFACE, cls)
    if key_map is None:
        raise ValueError(f"the Hugging Face converter builds {' and '.join(c.__name__ for c in HUGGINGFACE)} "
                         f"models, not {name!r} ({cls.__name__})")
    return convert_with(key_map, state_dict, name, build_kwargs)


register_converter("torchvision", from_torchvision)
register_converter("huggingface", from_huggingface)
