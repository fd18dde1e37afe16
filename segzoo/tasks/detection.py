"""Detection (boxes) and instance segmentation (boxes and masks): scored with COCO AP."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from segzoo.data.targets import BOXES, INSTANCE_MASKS, Target
from segzoo.inference import detect
from segzoo.metrics import CocoEvaluator, DetectionPRCurve
from segzoo.metrics.coco import STAT_NAMES
from segzoo.tasks.base import PANEL_TITLES, TOP_K, EvalOptions, Item, Labels, Task, TaskMetric, pct
from segzoo.visualize import draw_instances, draw_legend, instance_palette, shown_instances, side_by_side


def ground_truth(data, index: int, image: torch.Tensor, target: dict) -> list[dict] | None:
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
                      stacklevel=4)
        return None
    return gt["annotations"]


def crowd_target(target: dict, anns: list[dict], cat_to_label: dict[int, int]) -> dict:
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


def coco_table(metrics: dict[str, Any], names: list[str]) -> str:
    """Per-class AP and the summary APs of each IoU type, in percent."""
    lines = []
    for iou_type in ("bbox", "segm"):
        per_class = metrics.get(f"{iou_type}_per_class")
        if per_class is None:
            continue
        width = max(5, *(len(n) for n in names))
        lines.append(f"{iou_type} AP per class")
        lines += [f"  {name:<{width}}  {pct(per_class.get(name, float('nan')))}" for name in names]
        lines += [f"  {iou_type}_{stat:<5} {pct(metrics[f'{iou_type}_{stat}'])}"
                  for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
    return "\n".join(lines)


class CocoMetric(TaskMetric):
    """:class:`~segzoo.metrics.CocoEvaluator` (box, and mask, AP) with the dataset's own COCO annotations
    where it has them (``coco_ground_truth``), and :class:`~segzoo.metrics.DetectionPRCurve` with ``curves``
    (crowd regions of the annotations added to its targets)."""

    def __init__(self, num_classes: int, iou_types: Sequence[str], data, names: list[str], curves: bool = False):
        cat_ids = getattr(data, "cat_ids", None)
        cat_ids = list(cat_ids) if cat_ids is not None and len(cat_ids) == num_classes else None
        self.coco = CocoEvaluator(num_classes, tuple(iou_types), category_ids=cat_ids, class_names=names)
        self.cat_to_label = {c: k for k, c in enumerate(self.coco.category_ids)}
        self.pr = DetectionPRCurve(num_classes) if curves else None
        self.data = data
        self.with_gt = callable(getattr(data, "coco_ground_truth", None))

    def reset(self) -> None:
        self.coco.reset()
        if self.pr is not None:
            self.pr.reset()

    def update(self, items: Sequence[Item], predictions: list[dict]) -> None:
        targets = [{**t, "image_id": t.get("image_id", i), "size": tuple(im.shape[-2:])} for i, im, t in items]
        anns = [ground_truth(self.data, i, im, t) if self.with_gt else None for i, im, t in items]
        self.coco.update(predictions, targets, anns)
        if self.pr is not None:
            self.pr.update(predictions, [t if a is None else crowd_target(t, a, self.cat_to_label)
                                         for t, a in zip(targets, anns)])

    def compute(self) -> dict[str, Any]:
        self.coco.reduce()
        out: dict[str, Any] = {"metrics": self.coco.compute(), "coco_summary": self.coco.summary}
        if self.pr is not None:
            self.pr.reduce()
            out["pr_curves"] = self.pr.compute()
            out["metrics"]["bbox_pr_map50"] = out["pr_curves"]["map"]
        return out


def detections(model: nn.Module, images: list[torch.Tensor], device: torch.device, opts: EvalOptions) -> list[dict]:
    """The model's detections of same-size images (tiled with ``opts.tile``), as CPU tensors (floats in fp32)."""
    out = detect(model, [im.to(device, non_blocking=True) for im in images], opts.tile, opts.overlap,
                 batch_size=opts.batch_size)
    return [{k: (v.float().cpu() if v.is_floating_point() else v.cpu()) if isinstance(v, torch.Tensor) else v
             for k, v in p.items()} for p in out]


class DetectionTask(Task):
    """Boxes, scored with box AP."""

    name = "detection"
    primary = "bbox_AP"
    summary = ("bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl")
    pr_metric = "bbox_pr_map50"
    pr_title = "Precision-recall (boxes, IoU 0.5)"
    iou_types: tuple[str, ...] = ("bbox",)

    def metric_names(self) -> tuple[str, ...]:
        return tuple(f"{t}_{s}" for t in self.iou_types for s in STAT_NAMES)

    def check_data(self, target: Any, model_name: str = "the model") -> None:
        if not isinstance(target, dict):
            raise ValueError(f"the data gives semantic masks but {model_name} is a {self.name} model; evaluate it on "
                             "data with boxes (data.type: coco or shapes)")

    @property
    def target(self) -> Target:
        return BOXES

    def forward(self, model: nn.Module, images: list[torch.Tensor], device: torch.device,
                opts: EvalOptions) -> list[dict]:
        return detections(model, images, device, opts)

    def metric(self, model: nn.Module, data, labels: Labels, *, curves: bool = False) -> CocoMetric:
        return CocoMetric(labels.num_classes, self.iou_types, data, labels.shown_names, curves)

    def draw(self, image: torch.Tensor, pred, target, labels: Labels, score_threshold: float = 0.5) -> torch.Tensor:
        """Detections scoring >= ``score_threshold`` are drawn, and when fewer than :data:`TOP_K` reach it, the
        best ones below it in a lighter style (labels in parentheses); the title says the threshold."""
        names, num_classes = labels.shown_names, labels.num_classes
        pred_pic = draw_instances(image, pred, class_names=names, score_thresh=score_threshold, top_k=TOP_K)
        gt_pic = draw_instances(image, target, class_names=names)
        keep, weak = shown_instances(pred.get("scores"), score_threshold, TOP_K, len(pred["labels"]))
        found = torch.cat([torch.as_tensor(pred["labels"]).cpu()[keep | weak],
                           torch.as_tensor(target["labels"]).cpu().reshape(-1)]).unique()
        present = [int(k) for k in found if 0 <= k < num_classes]
        legend = draw_legend(names, instance_palette(num_classes), height=int(image.shape[-2]), classes=present)
        title = f"prediction, score >= {score_threshold:g}" + (", (best below)" if bool(weak.any()) else "")
        return side_by_side([image, pred_pic, gt_pic, legend], titles=(PANEL_TITLES[0], title, PANEL_TITLES[2], ""))

    def format_results(self, result: dict[str, Any]) -> str:
        return f"{result['coco_summary']}\n{coco_table(result['metrics'], result['class_names'])}"

    def describe_prediction(self, result: dict[str, Any], name: Callable[[int], str], score_thresh: float,
                            keep_thresh: float) -> str:
        scores, labels = result["scores"], result["labels"]
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        above = [i for i in order if scores[i] >= score_thresh]
        found = ", ".join(f"{name(int(labels[i]))} {float(scores[i]):.2f}" for i in above[:5])
        found += f" and {len(above) - 5} more" if len(above) > 5 else ""
        if not above and order:
            found = f"best: {name(int(labels[order[0]]))} {float(scores[order[0]]):.2f}"
        kept = sum(1 for i in order if scores[i] >= min(keep_thresh, score_thresh))
        return (f"{len(above)} detections >= {score_thresh:g}" + (f" ({found})" if found else "")
                + f"; {kept} in the json (>= {min(keep_thresh, score_thresh):g})")


class InstanceTask(DetectionTask):
    """Boxes and masks, scored with mask and box AP."""

    name = "instance"
    primary = "segm_AP"
    summary = ("segm_AP", "segm_AP50", "bbox_AP", "bbox_AP50", "bbox_AP75")
    iou_types = ("bbox", "segm")

    @property
    def target(self) -> Target:
        return INSTANCE_MASKS

    def check_data(self, target: Any, model_name: str = "the model") -> None:
        super().check_data(target, model_name)
        if "masks" not in target:
            raise ValueError(f"{model_name} is an instance model but the data has no instance masks; use COCO data "
                             "with segmentations")
