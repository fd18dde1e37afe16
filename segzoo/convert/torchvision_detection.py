"""torchvision Mask R-CNN / Faster R-CNN (v1, ResNet-50 FPN) -> segzoo.

Key layout: ``backbone.body.*`` is unchanged (timm's ResNet has torchvision's names),
``backbone.fpn.*`` becomes ``fpn.*``, the mask head's ``mask_predictor`` joins
``roi_heads.mask_head``. torchvision's class 0 is background: the classifier keeps it
(segzoo's classifier also has background first) while the box regressor and mask
predictor drop its unused outputs, so segzoo label ``c`` is torchvision label ``c + 1``.
BatchNorm ``num_batches_tracked`` counters are dropped: converted models use frozen
BatchNorm in the backbone and train its last 3 stages (``conv1`` and ``layer1`` frozen), as
torchvision's trained detectors do (``trainable_backbone_layers=3``).
"""

from __future__ import annotations

import re

import torch

from segzoo.convert.keys import resnet_depth
from segzoo.models.mask_rcnn import MaskRCNN
from segzoo.registry import entry_class

_RULES = (
    (r"^backbone\.body\.(.*)$", r"backbone.body.\1"),
    (r"^backbone\.fpn\.(inner_blocks|layer_blocks)\.(\d+)\.(?:0\.)?(weight|bias)$", r"fpn.\1.\2.\3"),
    (r"^rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)$", r"rpn.head.conv.\1"),
    (r"^rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)$", r"rpn.head.\1.\2"),
    (r"^roi_heads\.box_head\.(fc6|fc7)\.(weight|bias)$", r"roi_heads.box_head.\1.\2"),
    (r"^roi_heads\.box_predictor\.(cls_score|bbox_pred)\.(weight|bias)$", r"roi_heads.box_predictor.\1.\2"),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.(weight|bias)$", r"roi_heads.mask_head.deconv.\1"),
    (r"^roi_heads\.mask_predictor\.mask_fcn_logits\.(weight|bias)$", r"roi_heads.mask_head.mask_logits.\1"),
)


def _mask_conv(key: str) -> str | None:
    """``mask_head.{i}.0.weight`` (new torchvision) or ``mask_head.mask_fcn{i+1}.weight`` (old)."""
    m = re.match(r"^roi_heads\.mask_head\.(\d+)\.0\.(weight|bias)$", key)
    if m:
        return f"roi_heads.mask_head.convs.{m.group(1)}.{m.group(2)}"
    m = re.match(r"^roi_heads\.mask_head\.mask_fcn(\d+)\.(weight|bias)$", key)
    if m:
        return f"roi_heads.mask_head.convs.{int(m.group(1)) - 1}.{m.group(2)}"
    return None


def describe_rcnn(state: dict) -> tuple[str, str]:
    """What a torchvision detector state dict holds and which segzoo models it converts into."""
    masks = any(k.startswith("roi_heads.mask_") for k in state)
    arch = "Mask R-CNN" if masks else "Faster R-CNN"
    depth = resnet_depth(state, "backbone.body.")
    body = f"ResNet-{depth}" if depth else "ResNet"
    family = "maskrcnn" if masks else "fasterrcnn"
    resnet = f"resnet{depth or 50}"
    fits = f"convert it into a {family}_* model with backbone='{resnet}' (e.g. {family}_{resnet}_fpn)"
    return f"a torchvision {arch} with a {body} FPN backbone", fits


def map_rcnn(state: dict, target: str | type) -> tuple[dict[str, torch.Tensor], int]:
    """Map a torchvision ``maskrcnn_resnet50_fpn`` / ``fasterrcnn_resnet50_fpn`` state dict.

    Args:
        state: the torchvision state dict.
        target: the segzoo model name or class: a :class:`~segzoo.models.mask_rcnn.MaskRCNN`
            keeps the mask branch (and needs one); a plain Faster R-CNN drops it.

    Returns:
        The segzoo state dict and ``num_classes`` (object classes, torchvision's minus one).
    """
    cls = entry_class(target) if isinstance(target, str) else target
    name = target if isinstance(target, str) else cls.__name__
    if "roi_heads.box_predictor.cls_score.weight" not in state:
        raise KeyError("no roi_heads.box_predictor.cls_score.weight: this is not a torchvision "
                       "Faster/Mask R-CNN state dict")
    has_mask = any(k.startswith("roi_heads.mask_") for k in state)
    want_mask = issubclass(cls, MaskRCNN)
    if want_mask and not has_mask:
        raise ValueError(f"the state dict has no mask head; convert it into a Faster R-CNN model "
                         f"(fasterrcnn_*), not {name}")
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        if not want_mask and k.startswith("roi_heads.mask_"):
            continue  # a Mask R-CNN checkpoint converted to Faster R-CNN: drop the mask branch
        new = _mask_conv(k)
        for pattern, repl in _RULES:
            if new is None and re.match(pattern, k):
                new = re.sub(pattern, repl, k)
        if new is None:
            raise KeyError(f"unexpected key {k!r} in a torchvision {name} state dict")
        if new.startswith(("roi_heads.box_predictor.bbox_pred", "roi_heads.mask_head.mask_logits")):
            step = 4 if "bbox_pred" in new else 1
            v = v[step:]  # drop the background class's outputs
        out[new] = v
    return out, int(state["roi_heads.box_predictor.cls_score.weight"].shape[0]) - 1
