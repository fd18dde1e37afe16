"""Hugging Face transformers checkpoints -> segzoo models: ``SegformerForSemanticSegmentation``
(the published ``nvidia/segformer-*`` repositories) and ``UperNetForSemanticSegmentation`` with a
ConvNeXt or Swin backbone (``openmmlab/upernet-convnext-*``, ``openmmlab/upernet-swin-*``); and smp's
``Segformer`` (:func:`from_smp`). The key maps live beside the families
(:func:`segzoo.models.segformer.map_huggingface`, :func:`segzoo.models.segformer.map_smp`,
:func:`segzoo.models.upernet.map_huggingface`); this module picks one by the class of the model
``name`` builds.

Hugging Face's image processors for these repositories normalise with the ImageNet mean/std,
which segzoo models do inside, so converted models take plain [0, 1] RGB input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segzoo.checkpoint import load_weights
from segzoo.convert.keys import strip_module
from segzoo.models import segformer, upernet
from segzoo.registry import build, entry_class

_MAPS = ((segformer.SegFormer, segformer.map_huggingface), (upernet.UPerNet, upernet.map_huggingface))


def _convert(mapped: dict, num_classes: int, name: str, build_kwargs: dict) -> nn.Module:
    for k in [k for k in mapped if k.endswith(".running_mean")]:  # files saved without the BN counters
        mapped.setdefault(k.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    model = build(name, **{**build_kwargs, "num_classes": num_classes})
    if isinstance(model, segformer.SegFormer) and isinstance(model.backbone, segformer.MiT):
        found = segformer.mit_variant(mapped)
        if found != model.backbone.name:
            raise ValueError(f"the checkpoint holds a {found or 'non-standard MiT'} encoder but {name!r} has "
                             f"{model.backbone.name}; choose segformer_{found[-2:] if found else 'bN'}")
    load_weights(model, mapped, strict=True)
    return model.eval()


def from_smp(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo SegFormer ``name`` holding an smp ``Segformer(encoder_name="mit_bN")`` state dict
    (:func:`segzoo.models.segformer.map_smp`); ``num_classes`` is read from the source. smp's MiT
    has the paper's LayerNorm epsilons, segzoo's default. smp upsamples its stride-4 logits with
    ``align_corners=True``, segzoo (as Hugging Face and mmsegmentation) with ``False``."""
    if not issubclass(entry_class(name), segformer.SegFormer):
        raise ValueError(f"the smp converter builds SegFormer models (segformer_b0 ... segformer_b5), not {name!r}")
    mapped, num_classes = segformer.map_smp(strip_module(state_dict))
    return _convert(mapped, num_classes, name, build_kwargs)


def from_huggingface(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo model ``name`` holding a Hugging Face SegFormer or UPerNet state dict.

    Args:
        state_dict: ``model.state_dict()`` of the transformers model, or its published file read
            with :func:`segzoo.checkpoint.read_state_dict` (``pytorch_model.bin`` / ``model.safetensors``).
        name: ``"segformer_b0"`` ... ``"segformer_b5"``, ``"upernet_convnext_tiny"`` or ``"upernet_swin_tiny"``.
        **build_kwargs: extra builder arguments; ``num_classes`` is read from the source. SegFormer's
            MiT keeps the LayerNorm epsilon its weights were trained with (1e-6); pass ``norm_eps=1e-5``
            to reproduce transformers' outputs to the last bit.

    Returns:
        The model in eval mode, with ``model.spec`` set.
    """
    cls = entry_class(name)  # a clear KeyError for unknown names
    mapper = next((m for family, m in _MAPS if issubclass(cls, family)), None)
    if mapper is None:
        raise ValueError(f"the Hugging Face converter builds SegFormer and UPerNet models, not {name!r} "
                         f"({cls.__name__})")
    mapped, num_classes = mapper(strip_module(state_dict))
    return _convert(mapped, num_classes, name, build_kwargs)
