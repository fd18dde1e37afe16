"""Joint image/mask/box transforms (torchvision.transforms.v2 with tv_tensors) and one preset per task.

Every transform here moves an :class:`~torchvision.tv_tensors.Image` together with its
:class:`~torchvision.tv_tensors.Mask` and :class:`~torchvision.tv_tensors.BoundingBoxes`, so a
flipped or cropped box still covers its flipped or cropped mask. Presets end with float images
in [0, 1] (models normalise internally) and int64 semantic masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segzoo.data.transforms.augment import (
    CenterAffine,
    ObjectCentredCrop,
    PCALighting,
    PhotoMetricDistortion,
    RandomRescale,
    SegRandomCrop,
)
from segzoo.data.transforms.augment import pair as _pair
from segzoo.data.transforms.collate import SEMANTIC_IGNORE


class PadToSize(v2.Transform):
    """Pad at the bottom/right up to at least ``size`` (never crops).

    Images are padded with ``fill`` (0), masks with ``mask_fill`` (``ignore_index`` for semantic
    maps, 0 for instance masks); boxes are unchanged because only the bottom/right grow.
    """

    def __init__(self, size: int | Sequence[int], fill: float = 0, mask_fill: int = SEMANTIC_IGNORE) -> None:
        super().__init__()
        self.size = _pair(size)
        self.fill = fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"pad_h": max(self.size[0] - h, 0), "pad_w": max(self.size[1] - w, 0)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        ph, pw = params["pad_h"], params["pad_w"]
        if not (ph or pw):
            return inpt
        if isinstance(inpt, tv_tensors.Mask):
            return v2.functional.pad(inpt, [0, 0, pw, ph], fill=self.mask_fill)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.BoundingBoxes)) or (
            isinstance(inpt, torch.Tensor) and type(inpt) is torch.Tensor and inpt.dim() >= 3
        ):
            return v2.functional.pad(inpt, [0, 0, pw, ph], fill=self.fill)
        return inpt


def _to_float() -> v2.Transform:
    return v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: None, "others": None}, scale=True)


def _check_p(p: float, what: str) -> float:
    if not 0 <= p <= 1:
        raise ValueError(f"{what} is a probability in [0, 1], got {p}")
    return float(p)


def semantic_transforms(
    train: bool,
    size: int | Sequence[int] = 512,
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    ignore_index: int = SEMANTIC_IGNORE,
    crop: int | Sequence[int] | None = None,
    base_size: int | Sequence[int] | None = None,
    scale_step: float | None = None,
    cat_max_ratio: float = 1.0,
    photometric: bool = False,
) -> v2.Compose:
    """The semantic preset (mmsegmentation's and the official HRNet's training pipeline).

    Train: random rescale (:class:`~segzoo.data.transforms.augment.RandomRescale`: a ratio in ``scale``,
    on a grid of ``scale_step`` if given, times the factor that fits the image into
    ``base_size``), random crop of ``crop`` inside the image
    (:class:`~segzoo.data.transforms.augment.SegRandomCrop`, redrawn while one class covers
    ``cat_max_ratio`` of it), horizontal flip, mmsegmentation's photometric distortion if
    ``photometric``, colour jitter if ``color_jitter`` > 0, then padding at the bottom/right up
    to ``crop`` (image 0, mask ``ignore_index``). ``crop`` and ``base_size`` default to
    ``size``. Eval: images unchanged (the collate pads batches with ``ignore_index``).

    Examples: HRNet on Cityscapes ``base_size=2048, crop=(512, 1024), scale=(0.5, 2.1),
    scale_step=0.1``; mmsegmentation on Cityscapes ``base_size=(1024, 2048), crop=(512, 1024),
    cat_max_ratio=0.75, photometric=True, color_jitter=0``.
    """
    ops: list[v2.Transform] = []
    if train:
        crop = _pair(crop if crop is not None else size)
        ops += [
            RandomRescale(base_size if base_size is not None else size, scale, step=scale_step),
            SegRandomCrop(crop, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
        ]
        if _check_p(hflip, "hflip") > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if photometric:
            ops.append(PhotoMetricDistortion())
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))  # no hue: slow on CPU
        ops.append(PadToSize(crop, fill=0, mask_fill=ignore_index))
    ops += [_to_float(), v2.ToDtype({tv_tensors.Mask: torch.int64, "others": None})]
    return v2.Compose(ops)


CROP_MODES = ("resized", "random", "object-centred")


def instance_transforms(
    train: bool,
    size: int | Sequence[int] = 512,
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    min_box_size: float = 2.0,
    resize_short: int | Sequence[int] | None = None,
    max_size: int = 1333,
    affine: bool = False,
    pca_lighting: float = 0.0,
    keep_res: bool = False,
    per_box: Sequence[str] = (),
    crop_mode: str = "resized",
) -> v2.Compose:
    """The detection/instance preset (targets are dicts with boxes, labels and masks).

    Train, one of three geometric schemes, then horizontal flip, colour jitter, PCA lighting
    noise if ``pca_lighting`` > 0, boxes clamped to the image and degenerate ones dropped
    together with their labels, masks and the ``per_box`` target entries (panoptic: ``iscrowd``):

    - default (``crop_mode="resized"``): scale jitter around ``size`` (the image fitted into it)
      and a random crop to at most ``size``;
    - sliced training crops, for huge images with small objects: the image keeps its own
      resolution (times a ratio drawn from ``scale``) and is cropped to ``size``, at random
      (``crop_mode="random"``) or around an object chosen at random (``"object-centred"``,
      :class:`~segzoo.data.transforms.augment.ObjectCentredCrop`);
    - ``resize_short``: resize the shorter side to a length chosen from ``resize_short``, the
      longer side capped at ``max_size`` (detectron2's ``ResizeShortestEdge(..., "choice")``,
      torchvision's ``RandomShortestSize``); eval resizes to the largest length;
    - ``affine``: CenterNet's random scale (0.6-1.3) and shift crop to ``size``
      (:class:`~segzoo.data.transforms.augment.CenterAffine`); eval letterboxes the whole image to ``size``,
      or, with ``keep_res``, keeps the image at its own resolution (the official ``--keep_res``
      test of the CenterNet model zoo; the model pads it internally).

    Eval without either: images unchanged (detection models take lists of sizes).
    """
    if affine and resize_short is not None:
        raise ValueError("augment.affine and augment.resize_short are two different schemes; set one of them")
    shorts = None
    if resize_short is not None:
        shorts = [int(resize_short)] if isinstance(resize_short, (int, float)) else [int(s) for s in resize_short]
        if not shorts or min(shorts) < 1 or max(shorts) > max_size:
            raise ValueError(f"resize_short must be positive lengths no larger than max_size={max_size}, "
                             f"got {resize_short!r}")
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
    ops: list[v2.Transform] = []
    if not train:
        if affine and not keep_res:
            ops.append(CenterAffine(size, random=False))
        elif shorts:
            ops.append(v2.RandomShortestSize([max(shorts)], max_size=max_size, antialias=True))
        ops.append(_to_float())
        return v2.Compose(ops)
    if affine:
        ops.append(CenterAffine(size))
    elif shorts:
        ops.append(v2.RandomShortestSize(shorts, max_size=max_size, antialias=True))
    else:
        h, w = _pair(size)
        if crop_mode == "resized":
            ops.append(v2.ScaleJitter((h, w), scale_range=tuple(scale), antialias=True))
        else:
            ops.append(RandomRescale(None, scale))  # ratios of the image's own resolution
        if crop_mode == "object-centred":
            ops.append(ObjectCentredCrop((h, w)))  # then RandomCrop only pads
        ops.append(v2.RandomCrop((h, w), pad_if_needed=True, fill=0))
    if _check_p(hflip, "hflip") > 0:
        ops.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter > 0:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))  # no hue: slow on CPU
    if pca_lighting > 0:
        ops.append(PCALighting(pca_lighting))
    getter = _per_box_getter(tuple(per_box)) if per_box else "default"
    ops += [v2.ClampBoundingBoxes(), CountedSanitize(min_size=min_box_size, labels_getter=getter), _to_float()]
    return v2.Compose(ops)


DROPPED = "dropped"  # target key: boxes the training transforms removed from this sample


class CountedSanitize(v2.SanitizeBoundingBoxes):
    """SanitizeBoundingBoxes that records how many boxes it removed in ``target["dropped"]``.

    It is the only step of the presets that removes objects (boxes cropped away, under
    ``augment.min_box_size``, or with no area), so the trainer can count and report them
    (:func:`pop_dropped`) instead of training on fewer targets than the data check saw.
    """

    def forward(self, *inputs: Any) -> Any:
        target = inputs[1] if len(inputs) == 2 and isinstance(inputs[1], dict) else None
        before = len(target["boxes"]) if target is not None and "boxes" in target else None
        out = super().forward(*inputs)
        if before is not None:
            out[1][DROPPED] = before - len(out[1]["boxes"])
        return out


def pop_dropped(targets: Any) -> tuple[int, int, int]:
    """``(boxes dropped, boxes kept, samples left with no box that had some)`` of a collated batch's targets;
    the ``dropped`` entries are removed (models never see them)."""
    dropped = kept = emptied = 0
    if isinstance(targets, (list, tuple)):
        for t in targets:
            if isinstance(t, dict) and DROPPED in t:
                n, k = int(t.pop(DROPPED)), len(t["boxes"])
                dropped, kept, emptied = dropped + n, kept + k, emptied + int(n > 0 and k == 0)
    return dropped, kept, emptied


class _per_box_getter:  # noqa: N801 (a picklable function: DataLoader workers copy the transforms)
    """``labels_getter`` of SanitizeBoundingBoxes: the target's labels and its other per-box entries."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys

    def __call__(self, inputs: Any) -> tuple[torch.Tensor, ...]:
        target = inputs[1]
        return (target["labels"], *(target[k] for k in self.keys if k in target))


def _options(fn) -> dict[str, Any]:
    """A preset's options and their defaults."""
    return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k != "train"}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def build_transforms(target, train: bool, **kwargs) -> v2.Compose:
    """The transform preset of a target kind (:mod:`segzoo.data.targets`): the semantic preset for a
    class map, the instance preset for boxes, instance masks and panoptic segments.

    ``kwargs`` are the config's ``data.augment`` options (see :func:`semantic_transforms` and
    :func:`instance_transforms`). Options of the other preset are dropped when they hold their
    default value (a typed config carries them all) and raise a ValueError otherwise. Panoptic
    segments (one box, label and mask per segment, things and stuff, and ``iscrowd``) use the
    instance preset; a segment cropped away leaves with its ``iscrowd``.

    Args:
        target: a :class:`~segzoo.data.targets.Target` (``CLASS_MAP``, ``BOXES``, ``INSTANCE_MASKS``,
            ``SEGMENTS``).
        train: the training augmentation (else the evaluation resize only).
    """
    if target.dense:
        fn, other, other_name = semantic_transforms, instance_transforms, "detection and instance"
    else:
        kwargs.pop("ignore_index", None)
        kwargs.setdefault("per_box", target.per_box)
        fn, other, other_name = instance_transforms, semantic_transforms, "semantic"
    valid, foreign = _options(fn), _options(other)
    for key in list(kwargs):
        if key in valid:
            continue
        if key in foreign and _same(kwargs[key], foreign[key]):
            del kwargs[key]
            continue
        where = f"applies to {other_name} models only" if key in foreign else "is unknown"
        raise ValueError(f"augment option {key!r} {where}; the {target.name} options are: {', '.join(valid)}")
    return fn(train, **kwargs)
