"""Inference on single images: loading, sliding-window tiling and test-time augmentation.

``segzoo.predict(model, image)`` is the one call behind ``tools/infer.py`` and the
evaluation tool; :func:`sliding_window` and :func:`tile_origins` are the pieces, for
users who batch their own data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.ops import batched_nms

__all__ = ["load_image", "model_task", "predict", "sliding_window", "tile_origins"]

_TTA_PRESETS = {
    "flip": {"scales": (1.0,), "flip": True},
    "ms": {"scales": (0.75, 1.0, 1.25), "flip": False},
    "ms_flip": {"scales": (0.75, 1.0, 1.25), "flip": True},
}


def load_image(image) -> torch.Tensor:
    """A path, PIL image, ``H x W x 3`` uint8 array or ``3 x H x W`` tensor as float ``3 x H x W`` in [0, 1].

    Grey images are repeated to RGB and alpha is dropped; uint8 tensors are scaled by 1/255.
    """
    if isinstance(image, (str, os.PathLike)):
        if not os.path.isfile(image):
            raise FileNotFoundError(f"image file not found: {image}")
        with Image.open(image) as im:
            image = im.convert("RGB")
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        arr = image[..., None] if image.ndim == 2 else image
        if arr.ndim != 3:
            raise ValueError(f"numpy images must be H x W x 3, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, PIL image, array or tensor")
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"an image must be 3 x H x W, got shape {tuple(image.shape)}; predict takes one image")
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    if not image.is_floating_point():
        if image.dtype != torch.uint8:
            raise ValueError(f"integer images must be uint8, got {image.dtype}")
        image = image.float() / 255
    return image


def model_task(model: nn.Module) -> str:
    """``"semantic"``, ``"instance"`` or ``"detection"``, from ``model.spec`` or ``model.task``."""
    spec = getattr(model, "spec", None)
    task = getattr(spec, "task", None) or getattr(model, "task", None) or "semantic"
    return task


def tile_origins(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles covering ``[0, size)``; the last tile ends at the border."""
    if tile >= size:
        return [0]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _tile_size(tile) -> tuple[int, int]:
    th, tw = (tile, tile) if isinstance(tile, int) else tuple(tile)
    if th < 1 or tw < 1:
        raise ValueError(f"tile must be a positive size, got {tile}")
    return int(th), int(tw)


def _window(h: int, w: int, device) -> torch.Tensor:
    """Tent weights ``h x w``: 1 in the centre, small but positive at the tile edges."""
    wy = torch.minimum(torch.arange(h) + 1, h - torch.arange(h)).float()
    wx = torch.minimum(torch.arange(w) + 1, w - torch.arange(w)).float()
    return (wy[:, None] * wx[None, :] / (wy.max() * wx.max())).to(device)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, dict):  # torchvision segmentation models return {"out": ...}
        out = out["out"]
    return out


def sliding_window(
    model: nn.Module, image: torch.Tensor, tile: int | Sequence[int], overlap: float = 0.25, batch_size: int = 4
) -> torch.Tensor:
    """Semantic logits of a large image from overlapping tiles.

    Tiles of size ``tile`` step by ``tile * (1 - overlap)``; their logits are blended with
    tent weights (highest at the tile centre), so each pixel is dominated by the tiles it
    sits deepest in.

    Args:
        model: a semantic model returning ``N x C x h x w`` logits.
        image: ``1 x 3 x H x W`` (or ``3 x H x W``) float in [0, 1], on the model's device.
        tile: tile size, int or ``(height, width)``.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        batch_size: tiles per forward pass.

    Returns:
        ``C x H x W`` blended logits.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    x = image[None] if image.dim() == 3 else image
    _, _, h, w = x.shape
    th, tw = _tile_size(tile)
    th, tw = min(th, h), min(tw, w)
    boxes = [(y, x0) for y in tile_origins(h, th, overlap) for x0 in tile_origins(w, tw, overlap)]
    weight = _window(th, tw, x.device)
    total = None
    norm = x.new_zeros(1, h, w)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        crops = torch.cat([x[:, :, y : y + th, x0 : x0 + tw] for y, x0 in chunk])  # (B, 3, th, tw)
        logits = _logits(model, crops).float()  # (B, C, th, tw)
        if total is None:
            total = x.new_zeros(logits.shape[1], h, w, dtype=torch.float32)
        for (y, x0), lg in zip(chunk, logits):
            total[:, y : y + th, x0 : x0 + tw] += lg * weight
            norm[:, y : y + th, x0 : x0 + tw] += weight
    return total / norm


def _tta_config(tta) -> dict:
    if tta is None or tta is False:
        return {"scales": (1.0,), "flip": False}
    if tta is True:
        tta = "ms_flip"
    if isinstance(tta, str):
        if tta not in _TTA_PRESETS:
            raise ValueError(f"unknown tta {tta!r}; use one of {sorted(_TTA_PRESETS)} or dict(scales=..., flip=...)")
        return _TTA_PRESETS[tta]
    if isinstance(tta, dict):
        unknown = set(tta) - {"scales", "flip"}
        if unknown:
            raise ValueError(f"tta dict takes 'scales' and 'flip', got {sorted(unknown)}")
        scales = tuple(float(s) for s in tta.get("scales", (1.0,)))
        if not scales or min(scales) <= 0:
            raise ValueError(f"tta scales must be positive, got {scales}")
        return {"scales": scales, "flip": bool(tta.get("flip", False))}
    raise TypeError(f"tta must be None, a preset name {sorted(_TTA_PRESETS)} or a dict, got {tta!r}")


def _semantic(model: nn.Module, x: torch.Tensor, tile, overlap: float, tta, batch_size: int) -> dict:
    cfg = _tta_config(tta)
    _, _, h, w = x.shape
    probs = None
    n = 0
    for s in cfg["scales"]:
        xs = x
        if s != 1.0:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=s < 1).clamp(0, 1)
        for flip in (False, True) if cfg["flip"] else (False,):
            xi = xs.flip(-1) if flip else xs
            if tile is not None:
                logits = sliding_window(model, xi, tile, overlap, batch_size)[None]
            else:
                logits = _logits(model, xi).float()
            if flip:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits[0].softmax(0)  # (C, H, W); probabilities average better across scales
            probs = p if probs is None else probs + p
            n += 1
    probs = probs / n
    return {"mask": probs.argmax(0).cpu(), "probs": probs.cpu()}


def _detect(model: nn.Module, x: torch.Tensor, tile, overlap: float, nms_iou: float) -> dict:
    _, _, h, w = x.shape
    if tile is None:
        out = model([x[0]])[0]
        return {k: v.detach().cpu() for k, v in out.items()}
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    th, tw = _tile_size(tile)
    th, tw = min(th, h), min(tw, w)
    parts = []
    for y in tile_origins(h, th, overlap):
        for x0 in tile_origins(w, tw, overlap):
            out = model([x[0, :, y : y + th, x0 : x0 + tw]])[0]
            shift = torch.tensor([x0, y, x0, y], dtype=out["boxes"].dtype, device=out["boxes"].device)
            part = {"boxes": out["boxes"] + shift, "scores": out["scores"], "labels": out["labels"]}
            if "masks" in out:
                m = out["masks"]
                m = m[:, 0] if m.dim() == 4 else m
                # paste the tile masks into full-size canvases: (K, H, W)
                part["masks"] = F.pad(m, (x0, w - x0 - m.shape[-1], y, h - y - m.shape[-2]))
            parts.append(part)
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    keep = batched_nms(merged["boxes"].float(), merged["scores"].float(), merged["labels"], nms_iou)
    return {k: v[keep].detach().cpu() for k, v in merged.items()}


def predict(
    model: nn.Module,
    image_or_path,
    *,
    tile: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    tta: str | dict | bool | None = None,
    batch_size: int = 4,
    nms_iou: float = 0.5,
):
    """Run a model on one image (or a list of them) and return a task-appropriate result.

    The model is put in eval mode for the call (and restored after) and runs on its own
    device without gradients.

    Args:
        model: a segzoo model (semantic, detection or instance).
        image_or_path: a path, PIL image, ``H x W x 3`` uint8 array or ``3 x H x W`` tensor
            (float in [0, 1] or uint8); or a list of these.
        tile: run on overlapping tiles of this size (int or ``(h, w)``) for images larger
            than it. Semantic logits are blended with tent weights; detections of all tiles
            are merged with per-class NMS at ``nms_iou``.
        overlap: fraction of each tile shared with its neighbour.
        tta: semantic models only: ``"flip"`` (horizontal flip), ``"ms"`` (scales 0.75, 1,
            1.25), ``"ms_flip"`` (both; also ``True``) or ``dict(scales=(...), flip=bool)``.
            Softmax probabilities are averaged over the views.
        batch_size: tiles per forward pass (semantic tiling).
        nms_iou: IoU above which overlapping detections from different tiles are merged.

    Returns:
        Semantic: ``{"mask": int64 H x W, "probs": float C x H x W}``. Detection /
        instance: ``{"boxes", "scores", "labels"[, "masks"]}`` as the model returns them,
        in the image's pixels. CPU tensors; a list of results for a list of images.
    """
    if isinstance(image_or_path, (list, tuple)):
        return [predict(model, im, tile=tile, overlap=overlap, tta=tta, batch_size=batch_size, nms_iou=nms_iou)
                for im in image_or_path]
    task = model_task(model)
    if task != "semantic" and tta not in (None, False):
        raise ValueError(f"tta is implemented for semantic models only; this model's task is {task!r}")
    try:
        p = next(model.parameters())
        device, dtype = p.device, p.dtype if p.is_floating_point() else torch.float32
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32
    x = load_image(image_or_path).to(device=device, dtype=dtype)[None]  # (1, 3, H, W)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if task == "semantic":
                return _semantic(model, x, tile, overlap, tta, batch_size)
            return _detect(model, x, tile, overlap, nms_iou)
    finally:
        model.train(was_training)
