"""The one evaluation: a model's metrics on a dataset, for the trainer and for ``segzoo eval`` alike.

:func:`evaluate` runs the model through :mod:`segzoo.inference` (batched forwards, or tiles and
test-time augmentation) and scores semantic models with
:class:`~segzoo.metrics.semantic.SegmentationMetric` (mIoU and friends), instance and detection
models with :class:`~segzoo.metrics.coco.CocoEvaluator` (mask and box AP). The metric in a
training log and the metric of ``segzoo eval`` on the saved checkpoint are the same numbers.
Under DDP each rank scores its shard of the images and the metric state is reduced across
ranks before computing, so every rank returns the same numbers.
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from segzoo.config import ConfigError, EvalConfig
from segzoo.engine.device import autocast
from segzoo.engine.distributed import is_distributed, world_info
from segzoo.inference import check_tta, detect, semantic_probs
from segzoo.metrics import CocoEvaluator, DetectionPRCurve, PanopticQuality, PRCurve, SegmentationMetric
from segzoo.metrics.coco import STAT_NAMES
from segzoo.metrics.panoptic import target_segments
from segzoo.visualize import (
    color_palette,
    draw_instances,
    draw_legend,
    draw_panoptic,
    draw_semantic,
    instance_palette,
    save_image,
    shown_instances,
    side_by_side,
)

PRIMARY_METRIC = {"semantic": "miou", "instance": "segm_AP", "detection": "bbox_AP", "panoptic": "pq"}
# metrics shown in the one-line summary of an evaluation, after the tracked one
_SUMMARY = {"semantic": ("miou", "pixel_acc", "mean_acc", "fwiou", "mdice"),
            "instance": ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AP50", "bbox_AP75"),
            "detection": ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl"),
            "panoptic": ("pq", "sq", "rq", "pq_th", "pq_st")}
PANEL_TITLES = ("image", "prediction", "ground truth")
TOP_K = 3  # detections drawn below the score threshold when fewer than this reach it


def metric_names(task: str) -> tuple[str, ...]:
    """The scalar metrics :func:`evaluate` returns for a task (each can be ``eval.metric``)."""
    if task == "semantic":
        return SegmentationMetric.SCALARS
    if task == "panoptic":
        return PanopticQuality.SCALARS
    iou_types = ("bbox", "segm") if task == "instance" else ("bbox",)
    return tuple(f"{t}_{s}" for t in iou_types for s in STAT_NAMES)


def primary_metric(task: str, name: str = "auto") -> str:
    """The metric that picks the best checkpoint (``eval.metric``): ``miou``, ``segm_AP``, ``bbox_AP`` or
    ``pq`` for ``auto``; any other name must be one of :func:`metric_names`, or a ConfigError names the closest."""
    if name in (None, "auto"):
        return PRIMARY_METRIC[task]
    names = metric_names(task)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"eval.metric={name!r} is not a metric of {task} models; {hint}use auto or one of "
                          f"{', '.join(names)}")
    return name


def summary_line(metrics: dict[str, Any], task: str, tracked: str | None = None) -> str:
    """``miou=0.8123, pixel_acc=...``: the tracked metric first, then the task's usual ones."""
    keys = dict.fromkeys([tracked or PRIMARY_METRIC[task], *_SUMMARY[task]])
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in keys if isinstance(metrics.get(k), (int, float)))


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


def check_task_data(task: str, target: Any, model_name: str = "the model") -> None:
    """Refuse data whose targets do not fit the model's task, naming both."""
    if task == "semantic":
        if isinstance(target, dict):
            raise ValueError(f"the data gives box/instance targets but {model_name} is a semantic model; evaluate "
                             "it on semantic data (data.type: mask_folder, coco_semantic or shapes)")
        return
    if not isinstance(target, dict):
        kinds = "panoptic segments (data.type: coco_panoptic or shapes_panoptic)" if task == "panoptic" else \
            "boxes (data.type: coco or shapes)"
        raise ValueError(f"the data gives semantic masks but {model_name} is a {task} model; evaluate it on data "
                         f"with {kinds}")
    if task == "panoptic" and "masks" not in target:
        raise ValueError(f"{model_name} is a panoptic model but the data has no segment masks; use panoptic data "
                         "(data.type: coco_panoptic or shapes_panoptic: one mask per thing and stuff segment)")
    if task == "instance" and "masks" not in target:
        raise ValueError(f"{model_name} is an instance model but the data has no instance masks; use COCO data with "
                         "segmentations")


def _ground_truth(data, index: int, image: torch.Tensor, target: dict) -> list[dict] | None:
    """The COCO annotations of an evaluated image from a dataset that has them (``coco_ground_truth``:
    the COCO json's own entries, or the format readers' objects with crowd regions), or None when the
    dataset has none or the image was resized after loading (the annotations no longer apply)."""
    gt = data.coco_ground_truth(index)
    image_id = int(torch.as_tensor(target.get("image_id", index)).reshape(-1)[0])
    info = gt["image"]
    if (info["height"], info["width"]) != tuple(image.shape[-2:]) or info["id"] != image_id:
        warnings.warn(f"image {image_id} is {image.shape[-1]}x{image.shape[-2]} when evaluated but its annotations "
                      f"are for {info['width']}x{info['height']} (a resizing transform?); COCO AP is computed from "
                      "the transformed targets: object areas from their masks or boxes, crowd regions left out",
                      stacklevel=3)
        return None
    return gt["annotations"]


def _crowd_target(target: dict, anns: list[dict], cat_to_label: dict[int, int]) -> dict:
    """``target`` with the crowd regions of ``anns`` added (``iscrowd`` 1), for the PR curves."""
    crowd = [a for a in anns if a.get("iscrowd") and a.get("bbox") is not None]
    if not crowd:
        return target
    xywh = torch.tensor([a["bbox"] for a in crowd], dtype=torch.float32).reshape(-1, 4)
    boxes = torch.cat([torch.as_tensor(target["boxes"]).float().reshape(-1, 4),
                       torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)])
    labels = torch.cat([torch.as_tensor(target["labels"]).long().reshape(-1),
                        torch.tensor([cat_to_label[a["category_id"]] for a in crowd])])
    iscrowd = torch.arange(len(boxes)) >= len(boxes) - len(crowd)
    return {"boxes": boxes, "labels": labels, "iscrowd": iscrowd}


def check_categories(model: nn.Module, data) -> None:
    """Refuse data for a panoptic model that is not panoptic (``data.task``) or whose thing/stuff split is not the
    model's (``data.num_classes``, ``data.num_stuff``): the labels would mean other classes."""
    if model.task != "panoptic":
        return
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    kind = getattr(data, "task", "panoptic")
    if kind != "panoptic":
        raise ValueError(f"{name} is a panoptic model but the data is {kind} data (things only, no stuff); use "
                         "panoptic data (data.type: coco_panoptic or shapes_panoptic)")
    split = (getattr(data, "num_classes", None), getattr(data, "num_stuff", None))
    if split[1] is not None and split != (model.num_classes, model.num_stuff):
        raise ValueError(f"the data has {data.num_classes} categories ({data.num_classes - data.num_stuff} things + "
                         f"{data.num_stuff} stuff) but {name} has num_classes={model.num_classes}, "
                         f"num_stuff={model.num_stuff}; set model.num_classes={data.num_classes} and "
                         f"model.num_stuff={data.num_stuff}")


def _panel(task: str, image: torch.Tensor, pred, target, names: list[str] | None, num_classes: int,
           ignore_index: int, score_threshold: float, num_things: int | None = None) -> torch.Tensor:
    """``image | prediction | ground truth | legend`` for one image (``pred``: a mask or a detection dict).

    The legend lists the classes drawn in either picture, by name (by index without names).
    Detections scoring >= ``score_threshold`` are drawn, and when fewer than :data:`TOP_K` reach it,
    the best ones below it in a lighter style (labels in parentheses); the title says the threshold.
    """
    names = list(names) if names is not None else [str(i) for i in range(num_classes)]
    title = PANEL_TITLES[1]
    if task == "panoptic":  # segments carry their class names; the ground truth has the legend
        pred_pic = draw_panoptic(image, pred["segments"], pred["segments_info"], names, legend=False)
        gt_pic = draw_panoptic(image, *target_segments(target, num_things), names)
        return side_by_side([image, pred_pic, gt_pic], titles=PANEL_TITLES)
    if task == "semantic":
        kw = dict(num_classes=num_classes, class_names=names, ignore_index=ignore_index, skip_background=True)
        pred_pic = draw_semantic(image, pred, **kw)
        gt_pic = draw_semantic(image, target, **kw)
        labels = torch.cat([torch.as_tensor(pred).reshape(-1), torch.as_tensor(target).reshape(-1)]).unique()
        present = [int(k) for k in labels if 0 < k < num_classes]
        palette = color_palette(num_classes)
    else:
        pred_pic = draw_instances(image, pred, class_names=names, score_thresh=score_threshold, top_k=TOP_K)
        gt_pic = draw_instances(image, target, class_names=names)
        keep, weak = shown_instances(pred.get("scores"), score_threshold, TOP_K, len(pred["labels"]))
        labels = torch.cat([torch.as_tensor(pred["labels"]).cpu()[keep | weak],
                            torch.as_tensor(target["labels"]).cpu().reshape(-1)]).unique()
        present = [int(k) for k in labels if 0 <= k < num_classes]
        palette = instance_palette(num_classes)
        title = f"prediction, score >= {score_threshold:g}" + (", (best below)" if bool(weak.any()) else "")
    legend = draw_legend(names, palette, height=int(image.shape[-2]), classes=present)
    return side_by_side([image, pred_pic, gt_pic, legend], titles=(PANEL_TITLES[0], title, PANEL_TITLES[2], ""))


def protocol_kwargs(ec: EvalConfig, task: str = "semantic") -> dict[str, Any]:
    """The :func:`evaluate` arguments of a config's evaluation protocol (``eval.mode``, ``crop``,
    ``stride``, ``resize``, ``scales``, ``flip``).

    ``whole``: the image (fitted to ``eval.resize`` if set) in one forward; ``slide``: windows
    of ``eval.crop`` stepping by ``eval.stride`` (default two thirds of the crop, as the official
    HRNet test), logits averaged where windows overlap (mmsegmentation's ``slide``);
    ``scales``/``flip``: softmax probabilities averaged over the scaled and mirrored views.
    Detection and instance models take none of these (a ConfigError says so); they get ``{}``.
    """
    if task != "semantic":
        default = EvalConfig()
        changed = [k for k in ("mode", "crop", "stride", "resize", "scales", "flip")
                   if getattr(ec, k) != getattr(default, k)]
        if changed:
            raise ConfigError(f"eval.{changed[0]} sets a semantic evaluation protocol but the model's task is {task}; "
                              "remove it (detection sizes come from data.augment)")
        return {}
    if ec.mode == "slide" and ec.crop is None:
        raise ConfigError("eval.mode=slide needs eval.crop (the window, e.g. [512, 1024]); or use eval.mode=whole")
    if ec.mode == "whole" and (ec.crop is not None or ec.stride is not None):
        raise ConfigError("eval.crop and eval.stride apply to eval.mode=slide; set eval.mode=slide or remove them")
    out: dict[str, Any] = {"resize": ec.resize}
    if ec.mode == "slide":
        crop = (ec.crop, ec.crop) if isinstance(ec.crop, int) else tuple(ec.crop)
        stride = ec.stride if ec.stride is not None else tuple(max(1, (2 * c) // 3) for c in crop)
        out.update(tile=crop, stride=stride, blend="mean")
    if tuple(ec.scales) != (1.0,) or ec.flip:
        out["tta"] = {"scales": tuple(ec.scales), "flip": ec.flip}
    return out


def _forward(model: nn.Module, task: str, images: list[torch.Tensor], device: torch.device, amp_dtype,
             channels_last: bool, tile, overlap: float, tta, tile_batch: int, stride=None, blend: str = "tent",
             resize=None):
    """Predictions for same-size images: ``G x C x H x W`` probabilities, or a list of detection dicts."""
    with autocast(device, amp_dtype):
        if task == "semantic":
            x = torch.stack(images).to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return semantic_probs(model, x, tile, overlap, tta, tile_batch, stride=stride, blend=blend,
                                  resize=resize)
        out = detect(model, [im.to(device, non_blocking=True) for im in images], tile, overlap,
                     batch_size=tile_batch)
    return [{k: (v.float().cpu() if v.is_floating_point() else v.cpu()) if isinstance(v, torch.Tensor) else v
             for k, v in p.items()} for p in out]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    tile: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    tta: str | dict | bool | None = None,
    stride: int | Sequence[int] | None = None,
    blend: str = "tent",
    resize: int | Sequence[int] | None = None,
    max_images: int | None = None,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    curves: bool = False,
    num_pictures: int = 0,
    score_threshold: float = 0.5,
    progress: bool = False,
) -> dict[str, Any]:
    """Score ``model`` on a dataset with its task's metrics.

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
        batch_size: images per forward pass.
        num_workers: data-loading processes.
        amp_dtype: autocast dtype (None: full precision).
        channels_last: feed semantic batches in channels-last memory format.
        tile, overlap, tta: sliding-window and test-time augmentation (see :func:`segzoo.predict`).
        stride, blend, resize: semantic models: the window step and blending, and the size each
            image is fitted to (see :func:`segzoo.inference.semantic_probs`);
            :func:`protocol_kwargs` gives all of these from a config's ``eval`` section.
        max_images: score only the first images.
        class_names: names for per-class results and pictures (default ``model.classes``,
            then ``data.classes``).
        ignore_index: semantic label that is not scored.
        curves: also compute precision-recall curves (``pr_curves``; adds ``pr_map`` or
            ``bbox_pr_map50`` to the metrics); panoptic models have none.
        num_pictures: ``image | prediction | ground truth`` panels to draw (main process).
        score_threshold: detections scoring >= it are drawn in the pictures; when fewer than
            :data:`TOP_K` do, the best ones below it too, in a lighter style. Metrics use every
            detection the model returns.
        progress: show a tqdm bar.

    Returns:
        ``{"task", "num_images", "class_names", "metrics", "pictures"}`` plus ``"confusion"``
        (``C x C``, rows ground truth) for semantic models, ``"coco_summary"`` for the others
        (panoptic: PQ/SQ/RQ table), and ``"pr_curves"`` with ``curves``. Semantic metrics:
        ``pixel_acc``, ``mean_acc``, ``miou``, ``fwiou``, ``mdice`` and per-class lists; detection
        metrics: ``bbox_AP``... (and ``segm_AP``...) and per-class dicts; panoptic metrics: ``pq``,
        ``sq``, ``rq`` and their ``_th``/``_st`` parts, ``per_class``.
    """
    task = model.task
    check_tta(task, tta, tile)
    if task != "semantic" and (resize is not None or stride is not None):
        raise ValueError(f"eval.resize and eval.stride apply to semantic models; this model's task is {task!r} "
                         "(its size comes from the data transforms)")
    num_classes = int(model.num_classes)
    n = len(data) if max_images is None else min(len(data), max_images)
    if n == 0:
        raise ValueError("the evaluation data is empty; check the data config (paths, split)")
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    ds_classes = getattr(data, "num_classes", None)
    if isinstance(ds_classes, int) and ds_classes > num_classes:
        raise ValueError(f"{name} has num_classes={num_classes} but the data has {ds_classes} classes; evaluate a "
                         "checkpoint trained on this data (or fix data.classes in the config)")
    names = class_names or getattr(model, "classes", None) or getattr(data, "classes", None)
    named = names is not None and len(names) == num_classes
    names = [str(c) for c in names] if named else [str(i) for i in range(num_classes)]
    check_task_data(task, data[0][1], name)
    check_categories(model, data)

    if task == "semantic":
        metric = SegmentationMetric(num_classes, ignore_index=ignore_index)
        pr = PRCurve(num_classes, ignore_index=ignore_index) if curves else None
    elif task == "panoptic":
        metric, pr = PanopticQuality(num_classes, model.num_stuff, names), None
    else:
        cat_ids = getattr(data, "cat_ids", None)
        cat_ids = list(cat_ids) if cat_ids is not None and len(cat_ids) == num_classes else None
        metric = CocoEvaluator(num_classes, ("bbox", "segm") if task == "instance" else ("bbox",),
                               category_ids=cat_ids, class_names=names)
        cat_to_label = {c: k for k, c in enumerate(metric.category_ids)}
        pr = DetectionPRCurve(num_classes) if curves else None
        with_gt = callable(getattr(data, "coco_ground_truth", None))

    rank, world, _ = world_info() if is_distributed() else (0, 1, 0)
    loader = DataLoader(_Indexed(data), batch_size=batch_size, sampler=list(range(rank, n, world)),
                        num_workers=num_workers, collate_fn=_as_list)
    device = next(model.parameters()).device
    if progress and rank == 0:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="eval", dynamic_ncols=True)
    pictures: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            for run in _same_size_runs(batch):
                preds = _forward(model, task, [im for _, im, _ in run], device, amp_dtype, channels_last, tile,
                                 overlap, tta, batch_size, stride, blend, resize)
                if task == "semantic":
                    masks = preds.argmax(1).cpu()  # (G, H, W)
                    targets = torch.stack([t[0] if t.dim() == 3 else t for _, _, t in run]).long()
                    metric.update(masks, targets)
                    if pr is not None:
                        pr.update(preds.cpu(), targets)
                    shown = list(masks)
                elif task == "panoptic":
                    metric.update(preds, [{**t, "image_id": t.get("image_id", i)} for i, _, t in run])
                    shown = preds
                else:
                    targets = [{**t, "image_id": t.get("image_id", i), "size": tuple(im.shape[-2:])}
                               for i, im, t in run]
                    anns = [_ground_truth(data, i, im, t) if with_gt else None for i, im, t in run]
                    metric.update(preds, targets, anns)
                    if pr is not None:
                        pr.update(preds, [t if a is None else _crowd_target(t, a, cat_to_label)
                                          for t, a in zip(targets, anns)])
                    shown = preds
                for (_, image, target), p in zip(run, shown):
                    if rank == 0 and len(pictures) < num_pictures:
                        pictures.append(_panel(task, image, p, target, names if named else None, num_classes,
                                               ignore_index, score_threshold, getattr(model, "num_things", None)))
    finally:
        model.train(was_training)
    metric.reduce()
    result: dict[str, Any] = {"task": task, "num_images": n, "class_names": names, "pictures": pictures}
    result["metrics"] = metric.compute()
    if task == "semantic":
        result["confusion"] = metric.confusion.cpu()
    else:
        result["coco_summary"] = metric.summary
    if pr is not None:
        pr.reduce()
        result["pr_curves"] = pr.compute()
        result["metrics"]["pr_map" if task == "semantic" else "bbox_pr_map50"] = result["pr_curves"]["map"]
    return result


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
    task, num_classes = model.task, int(model.num_classes)
    named = class_names is not None and len(class_names) == num_classes
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for i in range(n):
            _, image, target = _Indexed(dataset)[i]
            pred = _forward(model, task, [image], device, None, False, None, 0.25, None, 1)[0]
            if task == "semantic":
                pred = pred.argmax(0).cpu()
            rows.append(_panel(task, image, pred, target, list(class_names) if named else None, num_classes,
                               ignore_index, score_threshold, getattr(model, "num_things", None)))
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
