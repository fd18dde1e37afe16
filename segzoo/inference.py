"""Inference: image loading, sliding-window tiling, test-time augmentation and ``predict``.

``segzoo.predict(model, image)`` runs a model on one image (or a list); :func:`semantic_probs`
and :func:`detect` are the batched forms that ``segzoo.engine.evaluate`` runs on whole
datasets, so a prediction and an evaluation go through the same code.
:func:`segzoo.infer_files.predict_files` writes the predictions of image files and folders (``segzoo infer``).
:func:`sliding_window` and :func:`tile_origins` are the pieces, for users who batch their own data.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segzoo.data.image import read_image
from segzoo.optimize import OptimizedModel, optimize
from segzoo.slicing import sliced_detect, tile_origins
from segzoo.slicing import tile_size as _tile_size
from segzoo.spec import task_traits

__all__ = ["AUTO_TILE", "AUTO_TILE_PIXELS", "auto_tile", "check_tta", "detect", "fast_model", "fit_scale", "load_image",
           "predict", "semantic_probs", "sliding_window", "tile_origins"]

_TTA_PRESETS = {
    "flip": {"scales": (1.0,), "flip": True},
    "ms": {"scales": (0.75, 1.0, 1.25), "flip": False},
    "ms_flip": {"scales": (0.75, 1.0, 1.25), "flip": True},
}


def load_image(image) -> torch.Tensor:
    """A path, PIL image, ``H x W x 3`` uint8 array or ``3 x H x W`` tensor as float ``3 x H x W`` in [0, 1].

    Grey images are repeated to RGB and alpha is dropped; uint8 tensors are scaled by 1/255.
    """
    image = read_image(image).as_subclass(torch.Tensor)
    if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"an image must be 3 x H x W, got shape {tuple(image.shape)}; predict takes one image")
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    if not image.is_floating_point():
        if image.dtype != torch.uint8:
            raise ValueError(f"integer images must be uint8, got {image.dtype}")
        image = image.float() / 255
    return image


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


BLENDS = ("tent", "mean")


def sliding_window(
    model: nn.Module, image: torch.Tensor, tile: int | Sequence[int], overlap: float = 0.25, batch_size: int = 4,
    stride: int | Sequence[int] | None = None, blend: str = "tent",
) -> torch.Tensor:
    """Semantic logits of a large image from overlapping tiles.

    Tiles of size ``tile`` step by ``stride`` pixels (default ``tile * (1 - overlap)``); their
    logits are blended with tent weights (``blend="tent"``: highest at the tile centre, so each
    pixel is dominated by the tiles it sits deepest in) or averaged uniformly over the tiles
    that cover each pixel (``blend="mean"``: mmsegmentation's ``slide`` mode).

    Args:
        model: a semantic model returning ``N x C x h x w`` logits.
        image: ``1 x 3 x H x W`` (or ``3 x H x W``) float in [0, 1], on the model's device.
        tile: tile size, int or ``(height, width)``.
        overlap: fraction of a tile shared with its neighbour, in [0, 1).
        batch_size: tiles per forward pass.
        stride: tile step in pixels, int or ``(height, width)`` (overrides ``overlap``).
        blend: ``"tent"`` or ``"mean"``.

    Returns:
        ``C x H x W`` blended logits.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in BLENDS:
        raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
    x = image[None] if image.dim() == 3 else image
    _, _, h, w = x.shape
    th, tw = _tile_size(tile)
    th, tw = min(th, h), min(tw, w)
    sy, sx = (None, None) if stride is None else _tile_size(stride)
    boxes = [(y, x0) for y in tile_origins(h, th, overlap, sy) for x0 in tile_origins(w, tw, overlap, sx)]
    weight = _window(th, tw, x.device) if blend == "tent" else x.new_ones(th, tw)
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
    return total.div_(norm)  # in place: no second C x H x W map


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


AUTO_TILE = 1280  # the largest tile side that tile="auto" uses (tiles are fitted to the image below it)
AUTO_TILE_PIXELS = 1536 * 1536  # semantic images with more pixels than this are tiled under tile="auto"


def _fitted_tile(side: int, overlap: float) -> int:
    """The smallest tile side that covers ``side`` with as many :data:`AUTO_TILE`-pixel tiles at ``overlap``
    would need: the same number of tiles, each no larger, the overlap no larger than asked."""
    count = len(tile_origins(side, AUTO_TILE, overlap))
    if count == 1:
        return min(side, AUTO_TILE)
    tile = min(AUTO_TILE, math.ceil(side / (1 + (count - 1) * (1 - overlap))))
    while len(tile_origins(side, tile, overlap)) > count:  # rounding of the stride: one pixel more
        tile += 1
    return tile


def auto_tile(task: str, tile, height: int, width: int, overlap: float = 0.25):
    """The tile :func:`predict` uses: ``tile`` itself, unless it is ``"auto"``.

    ``"auto"`` runs a semantic image of more than :data:`AUTO_TILE_PIXELS` pixels (about 1536 x 1536)
    in tiles of at most :data:`AUTO_TILE` pixels a side, one tile per forward pass (a batch of tiles
    would hold more pixels than the whole image), and everything else whole. The tiles are fitted to
    the image: as many per axis as :data:`AUTO_TILE`-pixel tiles at ``overlap`` would need, each as
    small as covers the image with that overlap (2 x 2 tiles of 1171 px for 2048 x 2048 at overlap
    0.25: 1.31x the image's pixels, where fixed 1280-px tiles overlapping by 512 px would be 1.56x).
    A network's activations grow with the pixels it sees at once, so tiling keeps the memory of one
    forward that of a tile; the blended logits cost ``C x H x W`` floats either way. Detection and
    the other tasks run whole (their tiling merges detections: ask for it with a size).
    Returns None (whole), the given tile, or an ``(h, w)`` tile.
    """
    if not isinstance(tile, str):
        return tile
    if tile != "auto":
        raise ValueError(f'tile must be a size, None (the whole image) or "auto", got {tile!r}')
    if not (task_traits(task).dense and height * width > AUTO_TILE_PIXELS):
        return None
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return _fitted_tile(height, overlap), _fitted_tile(width, overlap)


def check_tta(task: str, tta, tile=None) -> None:
    """Refuse test-time augmentation for a model whose task has none (detection, instance, panoptic) and
    tiling for panoptic models (segments of different tiles cannot be merged by NMS)."""
    traits = task_traits(task)
    if not traits.tta and tta not in (None, False):
        raise ValueError(f"tta is implemented for semantic models only; this model's task is {task!r}")
    if not traits.tiling and tile is not None:
        raise ValueError(f"tiled inference is not implemented for {task} models; resize the image instead")


def fit_scale(h: int, w: int, size: int | Sequence[int]) -> float:
    """The factor that fits an ``h x w`` image into ``size`` with its aspect ratio kept:
    ``min(max(size) / max(h, w), min(size) / min(h, w))`` (mmsegmentation's ``Resize(keep_ratio=True)``
    rule, whatever the orientation; an int ``size`` is the longer side)."""
    if isinstance(size, (int, float)):
        return float(size) / max(h, w)
    sh, sw = _tile_size(size)
    return min(max(sh, sw) / max(h, w), min(sh, sw) / min(h, w))


def activate(model: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Logits ``N x C x H x W`` as probabilities: a softmax over the classes, or a sigmoid per channel for the
    sigmoid label modes (``model.label_mode`` ``binary`` or ``multilabel``)."""
    if getattr(model, "label_mode", "multiclass") == "multiclass":
        return logits.softmax(1)
    return logits.sigmoid()


def _storages(model: nn.Module, *inputs: torch.Tensor) -> set[int]:
    """The storages of the inputs and of the model's parameters and buffers (logits that share one are not written)."""
    return {t.untyped_storage().data_ptr() for t in (*inputs, *model.parameters(), *model.buffers())}


def _activate_(model: nn.Module, logits: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """:func:`activate` in place on ``N x C x H x W`` logits that the caller owns: the softmax a band of ``rows``
    rows at a time, so that a full-size image holds one ``C x H x W`` map instead of the logits and their
    probabilities side by side (the same values: each pixel's softmax reads only its own classes)."""
    if getattr(model, "label_mode", "multiclass") != "multiclass":
        return logits.sigmoid_()
    for i in range(0, logits.shape[-2], rows):
        band = logits[..., i : i + rows, :]
        band.copy_(band.softmax(1))
    return logits


def semantic_result(model: nn.Module, probs: torch.Tensor) -> dict:
    """A semantic :func:`predict` result from ``C x H x W`` probabilities (see there)."""
    mode = getattr(model, "label_mode", "multiclass")
    if mode == "binary":
        t = getattr(getattr(model, "spec", None), "threshold", None)
        t = 0.5 if t is None else float(t)
        return {"mask": (probs[0] >= t).long().cpu(), "probs": probs.cpu(), "threshold": t}
    if mode == "multilabel":
        return {"class_masks": (probs >= 0.5).cpu(), "probs": probs.cpu(), "threshold": 0.5}
    return {"mask": probs.argmax(0).cpu(), "probs": probs.cpu()}


def semantic_probs(
    model: nn.Module, x: torch.Tensor, tile: int | Sequence[int] | None = None, overlap: float = 0.25,
    tta: str | dict | bool | None = None, batch_size: int = 4, *, stride: int | Sequence[int] | None = None,
    blend: str = "tent", resize: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Class probabilities of a batch: the evaluation protocols of the published recipes.

    - whole image: one forward at full resolution (``tile=None``), or after resizing to fit
      ``resize`` (aspect kept; mmsegmentation's test ``Resize``), the logits resized back;
    - sliding window: tiles of ``tile`` stepping by ``stride`` (or ``overlap``), blended as
      ``blend`` says (``"mean"``: mmsegmentation's ``slide`` mode);
    - multi-scale + flip (``tta``): each scale (relative to the full or ``resize`` size) and
      its mirror image go through the whole-image or sliding-window path; their softmax
      probabilities, resized to the input, are averaged.

    Args:
        model: a semantic model returning ``N x C x h x w`` logits.
        x: ``N x 3 x H x W`` float images in [0, 1], on the model's device.
        tile, overlap, tta, batch_size: as in :func:`predict`.
        stride, blend: of :func:`sliding_window`.
        resize: a reference size (int: the longer side; ``(h, w)``) the image is fitted to.

    Returns:
        ``N x C x H x W`` float32 probabilities: softmax (``argmax(1)`` is the predicted mask), or one sigmoid
        per channel for a model whose ``label_mode`` is ``binary`` or ``multilabel``.
    """
    cfg = _tta_config(tta)
    _, _, h, w = x.shape
    base = 1.0 if resize is None else fit_scale(h, w, resize)
    probs = None
    n = 0
    for s in cfg["scales"]:
        xs = x
        f = base * s
        size = (max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5)))
        if size != (h, w):
            xs = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=f < 1).clamp(0, 1)
        for flip in (False, True) if cfg["flip"] else (False,):
            xi = xs.flip(-1) if flip else xs
            if tile is not None:
                maps = [sliding_window(model, im[None], tile, overlap, batch_size, stride, blend) for im in xi]
                logits = maps[0][None] if len(maps) == 1 else torch.stack(maps)  # one image: no copy
                del maps
            else:
                logits = _logits(model, xi).float()  # (N, C, h, w)
            # activated in place unless the logits share memory with the input or the model's tensors
            owned = logits.untyped_storage().data_ptr() not in _storages(model, x, xi)
            # an optimized model's outputs are inference tensors: outside inference mode (evaluate runs under
            # no_grad) they cannot be written in place, so they are activated into a new tensor
            owned = owned and (torch.is_inference_mode_enabled() or not logits.is_inference())
            if flip:
                logits, owned = logits.flip(-1), True
            if logits.shape[-2:] != (h, w):
                logits, owned = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False), True
            # probabilities average better across scales than logits
            p = _activate_(model, logits) if owned else activate(model, logits)
            del logits
            probs = p if probs is None else probs.add_(p)
            n += 1
    return probs.div_(n) if n > 1 else probs


def detect(
    model: nn.Module, images: Sequence[torch.Tensor], tile: int | Sequence[int] | None = None,
    overlap: float = 0.25, nms_iou: float = 0.5, batch_size: int = 4, *, merge: str = "nms",
    crop_masks: bool = False,
) -> list[dict]:
    """Detections for a list of ``3 x H x W`` images: one batched forward, or sliced
    (:func:`segzoo.slicing.sliced_detect`: tiles merged by class-wise NMS or box fusion, ``merge``).

    Returns:
        One dict per image (``boxes``, ``scores``, ``labels``[, ``masks``]) on the model's device;
        sliced masks are :class:`~segzoo.slicing.CropMasks` with ``crop_masks``, else ``K x H x W``.
    """
    if tile is None:
        return list(model(list(images)))
    outs = [sliced_detect(model, im, tile, overlap, merge=merge, iou=nms_iou, batch_size=batch_size) for im in images]
    if not crop_masks:
        outs = [{**o, "masks": o["masks"].dense()} if "masks" in o else o for o in outs]
    return outs


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    try:
        p = next(model.parameters())
    except StopIteration:
        return torch.device("cpu"), torch.float32
    return p.device, p.dtype if p.is_floating_point() else torch.float32


# model -> (state key, its optimized copy): predict() optimizes a model once, not on every call
_FAST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_key(model: nn.Module, options: dict) -> tuple:
    """Changes when a parameter or buffer is replaced or modified in place (an optimizer step,
    load_state_dict, a BatchNorm update in train mode), or the model moves."""
    tensors = [*model.parameters(), *model.buffers()]
    try:
        versions = [t._version for t in tensors]
    except RuntimeError:  # inference tensors keep no version: they cannot be updated outside inference mode
        versions = [t.data_ptr() for t in tensors]
    return repr(sorted(options.items())), tuple((id(t), v, t.device, t.dtype) for t, v in zip(tensors, versions))


def fast_model(model: nn.Module, fast: bool | dict = True) -> nn.Module:
    """The model :func:`predict` runs: ``model`` itself (``fast=False``, or already optimized),
    or its :func:`segzoo.optimize` copy (``fast=True``: the exact parts; a dict: ``optimize``'s
    keyword arguments, e.g. ``{"bf16": True, "compile": True}``), made once and kept while the
    model's weights are unchanged."""
    if fast is False or fast is None or isinstance(model, OptimizedModel) or not hasattr(model, "task"):
        return model
    options = {} if fast is True else dict(fast)
    key = _state_key(model, options)
    cached = _FAST.get(model)
    if cached is None or cached[0] != key:
        cached = (key, optimize(model, **options))
        _FAST[model] = cached
    return cached[1]


def predict(
    model: nn.Module,
    image_or_path,
    *,
    tile: int | Sequence[int] | str | None = "auto",
    overlap: float = 0.25,
    tta: str | dict | bool | None = None,
    batch_size: int = 4,
    nms_iou: float = 0.5,
    merge: str = "nms",
    fast: bool | dict = True,
):
    """Run a model on one image (or a list of them) and return a task-appropriate result.

    The model is put in eval mode for the call (and restored after) and runs on its own
    device without gradients.

    Args:
        model: a segzoo model (semantic, detection or instance; ``model.task`` says which).
        image_or_path: a path, PIL image, ``H x W x 3`` uint8 array or ``3 x H x W`` tensor
            (float in [0, 1] or uint8); or a list of these.
        tile: run on overlapping tiles of this size (int or ``(h, w)``) for images larger
            than it. Semantic logits are blended with tent weights; detections of all tiles
            are merged with per-class NMS at ``nms_iou``. ``"auto"`` (the default): semantic
            images above about 1536 x 1536 pixels go through 1280-pixel tiles, one per forward
            pass, the rest whole (:func:`auto_tile`); None: always the whole image.
        overlap: fraction of each tile shared with its neighbour.
        tta: semantic models only: ``"flip"`` (horizontal flip), ``"ms"`` (scales 0.75, 1,
            1.25), ``"ms_flip"`` (both; also ``True``) or ``dict(scales=(...), flip=bool)``.
            Softmax probabilities are averaged over the views.
        batch_size: tiles per forward pass.
        nms_iou: IoU above which overlapping detections from different tiles are merged.
        fast: run an optimized copy (:func:`segzoo.optimize`: BatchNorm folded, channels_last
            where measured faster, inference mode; outputs equal within float rounding), made on
            the first call and kept while the weights are unchanged. False runs ``model`` as it
            is; a dict passes options to ``optimize`` (``{"bf16": True, "compile": True}``).
        merge: how detections of different tiles are merged: ``"nms"`` (class-wise NMS) or
            ``"fuse"`` (box fusion; see :mod:`segzoo.slicing`).

    Returns:
        Semantic: ``{"mask": int64 H x W, "probs": float C x H x W}``; a binary model's mask is 0/1 at its
        ``model.spec.threshold`` (0.5 when none; the result's ``threshold``); a multi-label model gives
        ``{"class_masks": bool C x H x W, "probs", "threshold"}`` (one mask per class, at 0.5). Detection /
        instance: ``{"boxes", "scores", "labels"[, "masks"]}`` as the model returns them,
        in the image's pixels (tiled instance masks: :class:`~segzoo.slicing.CropMasks`, one bool
        crop per detection, so that no full-size mask exists per detection). Panoptic: the model's
        dict (``segments`` H x W int32, ``segments_info`` list of dicts, and the instance keys). CPU tensors; a list of
        results for a list of images.
    """
    if isinstance(image_or_path, (list, tuple)):
        model = fast_model(model, fast)
        return [predict(model, im, tile=tile, overlap=overlap, tta=tta, batch_size=batch_size, nms_iou=nms_iou,
                        merge=merge, fast=False) for im in image_or_path]
    task = model.task
    check_tta(task, tta, None if tile == "auto" else tile)
    model = fast_model(model, fast)
    device, dtype = _device_dtype(model)
    x = load_image(image_or_path).to(device=device, dtype=dtype)[None]  # (1, 3, H, W)
    if tile == "auto":
        tile = auto_tile(task, tile, *x.shape[-2:], overlap=overlap)
        batch_size = 1 if tile is not None else batch_size  # tiled for memory: one tile per forward
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if task_traits(task).dense:
                return semantic_result(model, semantic_probs(model, x, tile, overlap, tta, batch_size)[0])
            out = detect(model, [x[0]], tile, overlap, nms_iou, batch_size, merge=merge, crop_masks=True)[0]
            return {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    finally:
        model.train(was_training)
