"""The evaluation run shared by the trainer and tools/eval.py: the task's metric, and a picture.

Semantic models are scored with :class:`segzoo.metrics.semantic.SegmentationMetric` (mIoU and
friends), instance and detection models with :class:`segzoo.metrics.coco.CocoEvaluator`
(mask and box AP). Under DDP each rank scores its shard and the metric state is reduced
across ranks before computing, so every rank returns the same numbers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from segzoo.data.transforms import collate_for

PRIMARY_METRIC = {"semantic": "miou", "instance": "segm_AP", "detection": "bbox_AP"}


def primary_metric(task: str, name: str = "auto") -> str:
    """The metric that picks the best checkpoint: ``miou``, ``segm_AP`` or ``bbox_AP`` unless named."""
    return PRIMARY_METRIC[task] if name in (None, "auto") else name


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(images, targets, device: torch.device, channels_last: bool = False):
    """Move a collated batch (tensor or list images; tensor or list-of-dict targets) to ``device``."""
    if isinstance(images, torch.Tensor):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
    else:
        images = [im.to(device, non_blocking=True) for im in images]
    if isinstance(targets, torch.Tensor):
        targets = targets.to(device, non_blocking=True)
    else:
        targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                   for t in targets]
    return images, targets


def _make_metric(task: str, num_classes: int, class_names: Sequence[str] | None, ignore_index: int):
    if task == "semantic":
        from segzoo.metrics.semantic import SegmentationMetric

        return SegmentationMetric(num_classes, ignore_index=ignore_index)
    from segzoo.metrics.coco import CocoEvaluator

    names = list(class_names) if class_names and len(class_names) == num_classes else None
    iou_types = ("bbox", "segm") if task == "instance" else ("bbox",)
    return CocoEvaluator(num_classes, iou_types=iou_types, class_names=names)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    task: str,
    num_classes: int,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    max_batches: int | None = None,
    channels_last: bool = False,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and compute the task's metrics.

    Args:
        model: a segzoo model (or a DDP/compiled wrapper of one); put in eval mode here and
            left in eval mode.
        loader: batches as the collates of :mod:`segzoo.data.transforms` make them.
        task: ``model.spec.task``.
        num_classes: the model's ``num_classes``.
        device: where to run.
        amp_dtype: autocast dtype (None: full precision).
        class_names: names for per-class results.
        ignore_index: semantic label that is not scored.
        max_batches: stop after this many batches (per rank).
        channels_last: feed images in channels-last memory format.

    Returns:
        Semantic: ``pixel_acc``, ``mean_acc``, ``miou``, ``fwiou``, ``mdice`` and per-class
        ``iou``/``dice`` lists. Instance/detection: ``bbox_AP``... (and ``segm_AP``...) from
        :class:`~segzoo.metrics.coco.CocoEvaluator`.
    """
    device = torch.device(device)
    model.eval()
    metric = _make_metric(task, num_classes, class_names, ignore_index)
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, targets = to_device(images, targets, device, channels_last)
        with autocast(device, amp_dtype):
            out = model(images)
        if task == "semantic":
            metric.update(out.argmax(1), targets)
        else:
            preds = [{k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in p.items()} for p in out]
            metric.update(preds, [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                                  for t in targets])
    metric.reduce()
    if task != "semantic" and not getattr(metric, "images", True):
        raise ValueError("the validation data is empty; nothing to evaluate")
    return metric.compute()


@torch.no_grad()
def save_predictions_png(
    model: nn.Module,
    dataset,
    path: str | os.PathLike,
    task: str,
    class_names: Sequence[str] | None = None,
    num_images: int = 4,
    device: torch.device | str = "cpu",
    score_threshold: float = 0.5,
    ignore_index: int = 255,
) -> None:
    """Draw the predictions on the first ``num_images`` items of ``dataset`` next to their
    ground truth (one row per image: image | prediction | ground truth) and save a PNG."""
    from segzoo.visualize import draw_instances, draw_semantic, save_image, side_by_side

    device = torch.device(device)
    model.eval()
    n = min(num_images, len(dataset))
    if n == 0:
        return
    images, targets = collate_for(task)([dataset[i] for i in range(n)])
    images, targets = to_device(images, targets, device)
    preds = model(images)
    rows = []
    for i in range(n):
        img = images[i].float().cpu()
        if task == "semantic":
            kw = dict(num_classes=preds.shape[1], class_names=class_names, ignore_index=ignore_index,
                      skip_background=True)  # label 0 left untinted
            pred_pic = draw_semantic(img, preds[i].argmax(0).cpu(), **kw)
            gt_pic = draw_semantic(img, targets[i].cpu(), legend=bool(class_names), **kw)
        else:
            pred = {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in preds[i].items()}
            gt = {k: v.cpu() for k, v in targets[i].items() if isinstance(v, torch.Tensor)}
            pred_pic = draw_instances(img, pred, class_names=class_names, score_thresh=score_threshold)
            gt_pic = draw_instances(img, gt, class_names=class_names)
        rows.append(side_by_side([img, pred_pic, gt_pic], titles=["image", "prediction", "ground truth"]))
    width = max(r.shape[-1] for r in rows)
    canvas = torch.full((3, sum(r.shape[1] for r in rows), width), 255, dtype=torch.uint8)
    y = 0
    for r in rows:  # rows stacked vertically, left-aligned
        canvas[:, y : y + r.shape[1], : r.shape[2]] = r
        y += r.shape[1]
    save_image(canvas, path)
