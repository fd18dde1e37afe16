"""Official HRNet-Semantic-Segmentation checkpoints -> segzoo HRNet models.

Sources: ``seg_hrnet.py`` (pytorch-v1.1 branch: HRNetV2 W18-Small-v1/v2, W18, W32, W48)
and ``seg_hrnet_ocr.py`` (HRNet-OCR branch: HRNet-W48 + OCR). The body's key names are
the same in both code bases; only the heads are renamed. Released checkpoints are the
training wrapper's state dict, so every key starts with ``model.`` and the loss's class
weights (``loss.criterion.weight``) come along; some are wrapped in ``{"state_dict": ...}``
and those saved by old PyTorch have no ``num_batches_tracked``. All of this is handled.

The official pipeline feeds RGB images in [0, 1] normalised with the ImageNet mean/std,
which is what segzoo models do inside, so converted models take plain [0, 1] RGB input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from segzoo.checkpoint import load_weights
from segzoo.models.hrnet import HRNet, HRNetOCR
from segzoo.registry import build, entry_class

BODY_PREFIXES = ("conv1.", "bn1.", "conv2.", "bn2.", "layer1.", "transition", "stage")

PLAIN_HEAD = (("last_layer.", "head."),)


def _attention_renames(src: str, dst: str, two_layers: bool) -> list[tuple[str, str]]:
    # official: Sequential(conv, Sequential(BN, ReLU), [conv, Sequential(BN, ReLU)]);
    # segzoo flattens it: Sequential(conv, BN, ReLU, [conv, BN, ReLU])
    base = "ocr_distri_head.object_context_block."
    out = [(f"{base}{src}.0.", f"head.attention.{dst}.0."), (f"{base}{src}.1.0.", f"head.attention.{dst}.1.")]
    if two_layers:
        out += [(f"{base}{src}.2.", f"head.attention.{dst}.3."),
                (f"{base}{src}.3.0.", f"head.attention.{dst}.4.")]
    return out


OCR_HEAD = (
    ("aux_head.", "head.aux."),
    ("conv3x3_ocr.", "head.bottleneck."),
    ("cls_head.", "head.classifier."),
    ("ocr_distri_head.conv_bn_dropout.0.", "head.fuse.0."),
    ("ocr_distri_head.conv_bn_dropout.1.0.", "head.fuse.1."),
    *_attention_renames("f_pixel", "query", True),
    *_attention_renames("f_object", "key", True),
    *_attention_renames("f_down", "value", False),
    *_attention_renames("f_up", "project", False),
)


def clean_state_dict(state_dict: dict) -> dict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}``, strip ``module.``/``model.`` and drop the loss's keys."""
    state = state_dict
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        for prefix in ("module.", "model."):
            k = k.removeprefix(prefix)
        if k.startswith("loss."):  # e.g. loss.criterion.weight: class weights of the loss
            continue
        out[k] = v
    return out


def map_hrnet_official(state_dict: dict) -> tuple[dict[str, torch.Tensor], int, bool]:
    """Rename an official HRNet state dict to segzoo's names.

    Returns:
        ``(segzoo state dict, num_classes, is_ocr)``. ``num_batches_tracked`` entries that
        the source lacks are added (as 0).

    Raises:
        KeyError: naming every key that belongs to neither the body nor a known head.
    """
    state = clean_state_dict(state_dict)
    is_ocr = "cls_head.weight" in state
    if not is_ocr and "last_layer.3.weight" not in state:
        raise KeyError(
            "no segmentation head (last_layer.3.weight or cls_head.weight) in the state dict: "
            "this is not an official HRNet-Semantic-Segmentation checkpoint (for ImageNet HRNet "
            "weights use segzoo.build(name, backbone_weights=path))"
        )
    renames = sorted(OCR_HEAD if is_ocr else PLAIN_HEAD, key=lambda r: -len(r[0]))
    out, unknown = {}, []
    for k, v in state.items():
        if k.startswith(BODY_PREFIXES):
            out["backbone." + k] = v
            continue
        for src, dst in renames:
            if k.startswith(src):
                out[dst + k.removeprefix(src)] = v
                break
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(
            f"{len(unknown)} keys of the state dict belong to no HRNet layer: {', '.join(unknown[:10])}"
        )
    for k in list(out):
        if k.endswith(".running_mean"):
            out.setdefault(k.removesuffix("running_mean") + "num_batches_tracked",
                           torch.tensor(0, dtype=torch.long))
    num_classes = int(state["cls_head.weight" if is_ocr else "last_layer.3.weight"].shape[0])
    return out, num_classes, is_ocr


def from_hrnet_official(state_dict: dict, name: str, **build_kwargs: Any) -> nn.Module:
    """Build segzoo HRNet ``name`` holding an official HRNet-Semantic-Segmentation checkpoint.

    Args:
        state_dict: the checkpoint as read by ``torch.load(path, weights_only=True)`` (or
            :func:`segzoo.checkpoint.read_state_dict`).
        name: ``"hrnet_w18_small"``, ``"hrnet_w18_small_v2"``, ``"hrnet_w18"``,
            ``"hrnet_w32"``, ``"hrnet_w48"`` or ``"hrnet_w48_ocr"``.
        **build_kwargs: extra builder arguments; ``num_classes`` is read from the source.

    Returns:
        The model in eval mode, with ``model.spec`` set.
    """
    cls = entry_class(name)  # a clear KeyError for unknown names
    if not issubclass(cls, (HRNet, HRNetOCR)):
        raise ValueError(f"the official HRNet converter builds HRNet models, not {name!r} ({cls.__name__})")
    mapped, num_classes, is_ocr = map_hrnet_official(state_dict)
    wants_ocr = issubclass(cls, HRNetOCR)
    if is_ocr != wants_ocr:
        kind = "an HRNet + OCR" if is_ocr else "a plain HRNetV2"
        raise ValueError(
            f"the checkpoint holds {kind} model but {name!r} is "
            f"{'HRNet + OCR' if wants_ocr else 'plain HRNetV2'}; choose "
            f"{'an HRNet + OCR model (hrnet_w48_ocr)' if is_ocr else 'hrnet_w18_small ... hrnet_w48'}"
        )
    if is_ocr:  # OCR widths as trained (the official configs use 512 and 256)
        mid = int(mapped["head.bottleneck.0.weight"].shape[0])
        key = int(mapped["head.attention.query.0.weight"].shape[0])
        if (mid, key) != (512, 256):
            build_kwargs.setdefault("mid_channels", mid)
            build_kwargs.setdefault("key_channels", key)
    model = build(name, num_classes=num_classes, **build_kwargs)
    width = mapped.get("backbone.transition1.0.0.weight")
    own = model.state_dict().get("backbone.transition1.0.0.weight")
    if width is not None and own is not None and width.shape != own.shape:
        raise ValueError(
            f"the checkpoint's highest-resolution branch has {width.shape[0]} channels but "
            f"{name!r} has {own.shape[0]}; choose the model the checkpoint was trained as "
            "(W18-Small-v1 has 16, W18-Small-v2 and W18 have 18, then 32 and 48)"
        )
    load_weights(model, mapped)
    return model.eval()
