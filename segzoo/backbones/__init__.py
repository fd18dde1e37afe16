"""Backbones behind one contract (:class:`~segzoo.backbones.base.Backbone`):
``forward(x) -> list[Tensor]``, with ``channels`` and ``strides`` tuples.

:func:`make_backbone` is how every family gets its backbone: a name in :data:`BODIES` (the
table of segzoo's own bodies) builds that body, any other name a timm ``features_only``
model. So ``backbone="hrnet_w18"`` is the same network in FCN, DeepLabV3, U-Net, Mask R-CNN
and CenterNet.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Callable

from segzoo.backbones.base import Backbone
from segzoo.backbones.hrnet import ARCHS as HRNET_ARCHS
from segzoo.backbones.hrnet import HRNetBackbone, hrnet_backbone
from segzoo.backbones.mit import ARCHS as MIT_ARCHS
from segzoo.backbones.mit import MiT, mit_backbone
from segzoo.backbones.timm import TimmBackbone, closest_timm_names, is_timm_model

#: segzoo's own bodies: name -> builder(weights=...) returning a Backbone. Names not in this
#: table are timm model names.
BODIES: dict[str, Callable[..., Backbone]] = {
    **{name: functools.partial(hrnet_backbone, name) for name in HRNET_ARCHS},
    **{name: functools.partial(mit_backbone, name) for name in MIT_ARCHS},  # SegFormer's encoders
}


def make_backbone(
    name: str, output_stride: int = 32, weights: str | os.PathLike | None = None, levels: int | None = None
) -> Backbone:
    """A backbone by name: a segzoo body from :data:`BODIES`, else a timm ``features_only`` model.

    Args:
        name: a key of :data:`BODIES` (``"hrnet_w18"`` ...) or a timm model name.
        output_stride: 32, 16 or 8 for timm models (the last stages dilate instead of
            striding). segzoo's HRNet bodies keep their strides 4-32 whatever is asked: their
            finest branch already runs at stride 4.
        weights: a local weights file for the backbone (timm's state dict layout), or a timm tag
            (``"imagenet"``, ``"resnet50.a1_in1k"``; see :meth:`Backbone.load_weights`).
        levels: timm models return only their last ``levels`` feature maps (all when None);
            segzoo bodies always return all of theirs.
    """
    if not isinstance(name, str):
        raise TypeError(f"backbone must be a model name (str), got {type(name).__name__}")
    if name in BODIES:
        return BODIES[name](weights=weights)
    if not is_timm_model(name):
        close = list(dict.fromkeys(difflib.get_close_matches(name, list(BODIES), n=2, cutoff=0.6)
                                   + closest_timm_names(name)))[:5]
        raise ValueError(
            f"unknown backbone {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
            + f" (segzoo bodies: {', '.join(BODIES)}; any timm model with features_only: "
            "timm.list_models())"
        )
    indices = None if levels is None else tuple(range(-levels, 0))
    return TimmBackbone(name, out_indices=indices, output_stride=output_stride, weights=weights)


__all__ = ["BODIES", "Backbone", "HRNetBackbone", "MiT", "TimmBackbone", "make_backbone"]
