"""The one evaluation: a model's metrics on a dataset, for the trainer and for ``segzoo eval`` alike.

:func:`evaluate` is loader -> forward -> metric update -> compute, with the model's task object
(:mod:`segzoo.tasks`) deciding the forward (batched, or tiles and test-time augmentation through
:mod:`segzoo.inference`), the metric (mIoU and friends, COCO box and mask AP, PQ) and the pictures.
The metric in a training log and the metric of ``segzoo eval`` on the saved checkpoint are the same
numbers. Under DDP each rank scores its shard of the images and the metric state is reduced across
ranks before computing, so every rank returns the same numbers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segzoo.engine.device import autocast
from segzoo.engine.distributed import is_distributed, world_info
from segzoo.tasks import EvalOptions, Labels, Task, get_task
from segzoo.visualize import save_image


def _plain(t: Any) -> Any:
    return t.as_subclass(torch.Tensor) if isinstance(t, torch.Tensor) else t


class _Indexed(Dataset):
    """``(index, image, target)`` items with plain tensors, so results can name their image."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, target = self.dataset[i]
        target = {k: _plain(v) for k, v in target.items()} if isinstance(target, dict) else _plain(target)
        return i, _plain(image), target


def _as_list(batch):
    return batch


def _same_size_runs(items: list) -> list[list]:
    """Consecutive items grouped by image size: batches are never padded, so a prediction does not
    depend on the batch it falls in."""
    runs: list[list] = []
    for item in items:
        if runs and runs[-1][0][1].shape[-2:] == item[1].shape[-2:]:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _labels(model: nn.Module, data, opts: EvalOptions) -> Labels:
    """The classes scored: refuses data with more classes than the model; names from ``opts.class_names``,
    then ``model.classes``, then ``data.classes`` (when one names every class)."""
    num_classes = get_task(model).data_classes(model)  # a binary model's one logit scores two labels
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    ds_classes = getattr(data, "num_classes", None)
    if isinstance(ds_classes, int) and ds_classes > num_classes:
        raise ValueError(f"{name} has num_classes={num_classes} but the data has {ds_classes} classes; evaluate a "
                         "checkpoint trained on this data (or fix data.classes in the config)")
    names = opts.class_names or getattr(model, "classes", None) or getattr(data, "classes", None)
    named = names is not None and len(names) == num_classes
    return Labels(num_classes, [str(c) for c in names] if named else None, opts.ignore_index,
                  getattr(model, "num_things", None))


def _loader(data, n: int, opts: EvalOptions, rank: int, world: int):
    """Every ``world``-th of the first ``n`` items from ``rank`` on, as lists of ``(index, image, target)``."""
    loader = DataLoader(_Indexed(data), batch_size=opts.batch_size, sampler=list(range(rank, n, world)),
                        num_workers=opts.num_workers, collate_fn=_as_list)
    if opts.progress and rank == 0:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="eval", dynamic_ncols=True)
    return loader


def _predict(task: Task, model: nn.Module, run: list, device: torch.device, opts: EvalOptions):
    with autocast(device, opts.amp_dtype):
        return task.forward(model, [im for _, im, _ in run], device, opts)


@torch.no_grad()
def evaluate(model: nn.Module, data, options: EvalOptions | None = None, /, **overrides: Any) -> dict[str, Any]:
    """Score ``model`` on a dataset with its task's metric (:mod:`segzoo.tasks`).

    Images of the same size are batched (up to ``batch_size``, never padded); with ``tile``
    or ``tta`` each image goes through the tiled / augmented path of :mod:`segzoo.inference`.
    Under DDP every rank scores every ``world_size``-th image and the results are reduced.

    Args:
        model: a segzoo model (``model.task`` decides the metrics), on the device to run on;
            put in eval mode for the call and restored after.
        data: a dataset of ``(image, target)``: float ``3 x H x W`` images in [0, 1] with
            semantic masks ``H x W`` or detection targets (``boxes``, 0-based ``labels``,
            ``masks`` for instance models, optional ``image_id``, ``iscrowd``, ``area``). Use
            the evaluation transforms (no cropping).
        options: an :class:`~segzoo.tasks.EvalOptions`; ``overrides`` replace its fields
            (``evaluate(model, data, batch_size=4, curves=True)``). The fields:

            - ``batch_size``: images per forward pass; ``num_workers``: data-loading processes.
            - ``amp_dtype``: autocast dtype (None: full precision); ``channels_last``: feed semantic
              batches in channels-last memory format.
            - ``tile``, ``overlap``, ``tta``: sliding-window and test-time augmentation (see
              :func:`segzoo.predict`).
            - ``stride``, ``blend``, ``resize``: semantic models: the window step and blending, and the
              size each image is fitted to (see :func:`segzoo.inference.semantic_probs`);
              :meth:`segzoo.tasks.Task.protocol` gives all of these from a config's ``eval`` section.
            - ``max_images``: score only the first images.
            - ``class_names``: names for per-class results and pictures (default ``model.classes``,
              then ``data.classes``).
            - ``ignore_index``: semantic label that is not scored.
            - ``curves``: also compute precision-recall curves (``pr_curves``; adds ``pr_map`` or
              ``bbox_pr_map50`` to the metrics); panoptic models have none.
            - ``num_pictures``: ``image | prediction | ground truth`` panels to draw (main process).
            - ``score_threshold``: detections scoring >= it are drawn in the pictures; when fewer than
              :data:`~segzoo.tasks.base.TOP_K` do, the best ones below it too, in a lighter style. Metrics
              use every detection the model returns.
            - ``progress``: show a tqdm bar.

    Returns:
        ``{"task", "num_images", "class_names", "metrics", "pictures"}`` plus ``"confusion"``
        (``C x C``, rows ground truth) for semantic models, ``"coco_summary"`` for the others
        (panoptic: PQ/SQ/RQ table), and ``"pr_curves"`` with ``curves``. Semantic metrics:
        ``pixel_acc``, ``mean_acc``, ``miou``, ``fwiou``, ``mdice`` and per-class lists; detection
        metrics: ``bbox_AP``... (and ``segm_AP``...) and per-class dicts; panoptic metrics: ``pq``,
        ``sq``, ``rq`` and their ``_th``/``_st`` parts, ``per_class``.
    """
    opts = dataclasses.replace(options or EvalOptions(), **overrides)
    task = get_task(model)
    task.check_options(opts)
    n = len(data) if opts.max_images is None else min(len(data), opts.max_images)
    if n == 0:
        raise ValueError("the evaluation data is empty; check the data config (paths, split)")
    labels = _labels(model, data, opts)
    task.check_data(data[0][1], getattr(getattr(model, "spec", None), "name", type(model).__name__))
    task.check_categories(model, data)
    metric = task.metric(model, data, labels, curves=opts.curves)
    metric.reset()
    rank, world, _ = world_info() if is_distributed() else (0, 1, 0)
    device = next(model.parameters()).device
    pictures: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for batch in _loader(data, n, opts, rank, world):
            for run in _same_size_runs(batch):
                preds = _predict(task, model, run, device, opts)
                metric.update(run, preds)
                if rank == 0 and len(pictures) < opts.num_pictures:
                    for (_, image, target), p in zip(run[: opts.num_pictures - len(pictures)], task.shown(preds)):
                        pictures.append(task.draw(image, p, target, labels, opts.score_threshold))
    finally:
        model.train(was_training)
    return {"task": task.name, "num_images": n, "class_names": labels.shown_names, "pictures": pictures,
            **metric.compute()}


@torch.no_grad()
def save_predictions_png(
    model: nn.Module,
    dataset,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    num_images: int = 4,
    score_threshold: float = 0.5,
    ignore_index: int = 255,
) -> None:
    """Draw the predictions on the first ``num_images`` items of ``dataset`` next to their ground
    truth (one row per image: image | prediction | ground truth) and save a PNG."""
    n = min(num_images, len(dataset))
    if n == 0:
        return
    task = get_task(model)
    num_classes = task.data_classes(model)
    named = class_names is not None and len(class_names) == num_classes
    labels = Labels(num_classes, [str(c) for c in class_names] if named else None, ignore_index,
                    getattr(model, "num_things", None))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(n):
            item = _Indexed(dataset)[i]
            pred = task.shown(_predict(task, model, [item], device, EvalOptions()))[0]
            rows.append(task.draw(item[1], pred, item[2], labels, score_threshold))
    finally:
        model.train(was_training)
    save_image(stack_rows(rows), path)


def stack_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """uint8 panels stacked vertically, left-aligned on white."""
    width = max(r.shape[-1] for r in rows)
    canvas = torch.full((3, sum(r.shape[1] for r in rows), width), 255, dtype=torch.uint8)
    y = 0
    for r in rows:
        canvas[:, y : y + r.shape[1], : r.shape[2]] = r
        y += r.shape[1]
    return canvas
