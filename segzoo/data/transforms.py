"""Joint image/mask/box transforms (torchvision.transforms.v2 with tv_tensors) and one preset per task.

Every transform here moves an :class:`~torchvision.tv_tensors.Image` together with its
:class:`~torchvision.tv_tensors.Mask` and :class:`~torchvision.tv_tensors.BoundingBoxes`, so a
flipped or cropped box still covers its flipped or cropped mask. Presets end with float images
in [0, 1] (models normalise internally) and int64 semantic masks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

SEMANTIC_IGNORE = 255


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (height, width), got {size}")
    return size


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


def semantic_transforms(
    train: bool,
    size: int | Sequence[int] = 512,
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    ignore_index: int = SEMANTIC_IGNORE,
) -> v2.Compose:
    """The semantic preset.

    Train: scale jitter around ``size`` (aspect kept), random crop to ``size`` (padding the image
    with 0 and the mask with ``ignore_index`` when smaller), horizontal flip, colour jitter.
    Eval: images unchanged (the collate pads batches with ``ignore_index``).
    """
    ops: list[v2.Transform] = []
    if train:
        h, w = _pair(size)
        ops += [
            v2.ScaleJitter((h, w), scale_range=tuple(scale), antialias=True),
            v2.RandomCrop((h, w), pad_if_needed=True,
                          fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index, "others": 0}),
        ]
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))  # no hue: slow on CPU
    ops += [_to_float(), v2.ToDtype({tv_tensors.Mask: torch.int64, "others": None})]
    return v2.Compose(ops)


def instance_transforms(
    train: bool,
    size: int | Sequence[int] = 512,
    scale: Sequence[float] = (0.5, 2.0),
    hflip: float = 0.5,
    color_jitter: float = 0.2,
    min_box_size: float = 2.0,
    per_box: Sequence[str] = (),
) -> v2.Compose:
    """The detection/instance preset (targets are dicts with boxes, labels and masks).

    Train: scale jitter around ``size``, random crop to at most ``size``, horizontal flip,
    colour jitter, then boxes clamped to the image and degenerate ones dropped together with
    their labels, masks and the ``per_box`` target entries (panoptic: ``iscrowd``). Eval: images
    unchanged (detection models take lists of sizes).
    """
    ops: list[v2.Transform] = []
    if train:
        h, w = _pair(size)
        ops += [v2.ScaleJitter((h, w), scale_range=tuple(scale), antialias=True),
                v2.RandomCrop((h, w), pad_if_needed=True, fill=0)]
        if hflip > 0:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if color_jitter > 0:
            ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))  # no hue: slow on CPU
        getter = _per_box_getter(tuple(per_box)) if per_box else "default"
        ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=min_box_size, labels_getter=getter)]
    ops.append(_to_float())
    return v2.Compose(ops)


class _per_box_getter:  # noqa: N801 (a picklable function: DataLoader workers copy the transforms)
    """``labels_getter`` of SanitizeBoundingBoxes: the target's labels and its other per-box entries."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys

    def __call__(self, inputs: Any) -> tuple[torch.Tensor, ...]:
        target = inputs[1]
        return (target["labels"], *(target[k] for k in self.keys if k in target))


def build_transforms(task: str, train: bool, **kwargs) -> v2.Compose:
    """The preset for a task (``"semantic"``, ``"instance"``, ``"detection"`` or ``"panoptic"``).

    Panoptic targets (one box, label and mask per segment, things and stuff, and ``iscrowd``) use
    the instance preset; a segment cropped away leaves with its ``iscrowd``.
    """
    if task == "semantic":
        return semantic_transforms(train, **kwargs)
    if task in ("instance", "detection", "panoptic"):
        kwargs.pop("ignore_index", None)
        if task == "panoptic":
            kwargs.setdefault("per_box", ("iscrowd",))
        return instance_transforms(train, **kwargs)
    raise ValueError(f"unknown task {task!r}; expected semantic, instance, detection or panoptic")


# ---------------------------------------------------------------------------- collate


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


def collate_semantic(batch: Sequence[tuple], ignore_index: int = SEMANTIC_IGNORE) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, mask)`` pairs, padding every sample at the bottom/right to the batch's largest
    size (images with 0, masks with ``ignore_index``, so padding never counts in losses or metrics).

    Returns:
        images ``N x 3 x H x W`` float and masks ``N x H x W`` int64.
    """
    hmax = max(int(im.shape[-2]) for im, _ in batch)
    wmax = max(int(im.shape[-1]) for im, _ in batch)
    images, masks = [], []
    for im, m in batch:
        im, m = _plain(im), _plain(m).long()
        if m.dim() == 3 and m.shape[0] == 1:
            m = m[0]
        ph, pw = hmax - im.shape[-2], wmax - im.shape[-1]
        images.append(F.pad(im, (0, pw, 0, ph)))
        masks.append(F.pad(m, (0, pw, 0, ph), value=ignore_index))
    return torch.stack(images), torch.stack(masks)


def collate_instances(batch: Sequence[tuple]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Keep variable-size detection samples as lists: ``([3 x H x W, ...], [target dict, ...])``
    with plain tensors (boxes K x 4 xyxy float, labels K int64, masks K x H x W uint8)."""
    images = [_plain(im) for im, _ in batch]
    targets = []
    for _, t in batch:
        out = {k: _plain(v) for k, v in t.items()}
        out["boxes"] = out["boxes"].float().reshape(-1, 4)
        out["labels"] = out["labels"].long()
        if "masks" in out:
            out["masks"] = out["masks"].to(torch.uint8)
        targets.append(out)
    return images, targets


def collate_for(task: str):
    """The collate function of a task."""
    return collate_semantic if task == "semantic" else collate_instances
