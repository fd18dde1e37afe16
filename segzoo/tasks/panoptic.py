"""Panoptic segmentation: one segment per thing and stuff region, scored with PQ, SQ and RQ."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from segzoo.data.targets import SEGMENTS, Target
from segzoo.metrics import PanopticQuality
from segzoo.metrics.panoptic import target_segments
from segzoo.tasks.base import PANEL_TITLES, EvalOptions, Item, Labels, TaskMetric, pct
from segzoo.tasks.detection import DetectionTask, detections
from segzoo.visualize import draw_panoptic, side_by_side


def panoptic_table(metrics: dict[str, Any], names: list[str]) -> str:
    """PQ, SQ, RQ per category (percent) with its TP/FP/FN counts; ``-`` for categories that never occur."""
    width = max(5, *(len(n) for n in names))
    lines = [f"  {'class':<{width}}  kind   {'PQ':>6} {'SQ':>6} {'RQ':>6} {'TP':>5} {'FP':>5} {'FN':>5}"]
    for name in names:
        r = metrics["per_class"].get(name)
        if r is None:
            continue
        kind = "thing" if r["is_thing"] else "stuff"
        lines.append(f"  {name:<{width}}  {kind}  {pct(r['pq']):>6} {pct(r['sq']):>6} {pct(r['rq']):>6} "
                     f"{r['tp']:>5} {r['fp']:>5} {r['fn']:>5}")
    return "\n".join(lines)


class PanopticMetric(TaskMetric):
    """:class:`~segzoo.metrics.PanopticQuality` (no precision-recall curves)."""

    def __init__(self, num_classes: int, num_stuff: int, names: Sequence[str]) -> None:
        self.pq = PanopticQuality(num_classes, num_stuff, names)

    def reset(self) -> None:
        self.pq.reset()

    def update(self, items: Sequence[Item], predictions: list[dict]) -> None:
        self.pq.update(predictions, [{**t, "image_id": t.get("image_id", i)} for i, _, t in items])

    def compute(self) -> dict[str, Any]:
        self.pq.reduce()
        return {"metrics": self.pq.compute(), "coco_summary": self.pq.summary}


class PanopticTask(DetectionTask):
    """Segments (things and stuff) with their classes; the model's detection keys ride along."""

    name = "panoptic"
    primary = "pq"
    summary = ("pq", "sq", "rq", "pq_th", "pq_st")
    pr_metric = None

    @property
    def target(self) -> Target:
        return SEGMENTS

    def metric_names(self) -> tuple[str, ...]:
        return PanopticQuality.SCALARS

    def check_data(self, target: Any, model_name: str = "the model") -> None:
        if not isinstance(target, dict):
            raise ValueError(f"the data gives semantic masks but {model_name} is a panoptic model; evaluate it on "
                             "data with panoptic segments (data.type: coco_panoptic or shapes_panoptic)")
        if "masks" not in target:
            raise ValueError(f"{model_name} is a panoptic model but the data has no segment masks; use panoptic data "
                             "(data.type: coco_panoptic or shapes_panoptic: one mask per thing and stuff segment)")

    def check_categories(self, model: nn.Module, data) -> None:
        """Refuse data that is not panoptic (its ``data.target`` holds no segments) or whose thing/stuff split is
        not the model's (``data.num_classes``, ``data.num_stuff``): the labels would mean other classes."""
        name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        kind = getattr(data, "target", SEGMENTS)
        if not kind.segments:
            raise ValueError(f"{name} is a panoptic model but the data is {kind.name} data (things only, no stuff); "
                             "use panoptic data (data.type: coco_panoptic or shapes_panoptic)")
        split = (getattr(data, "num_classes", None), getattr(data, "num_stuff", None))
        if split[1] is not None and split != (model.num_classes, model.num_stuff):
            raise ValueError(f"the data has {data.num_classes} categories ({data.num_classes - data.num_stuff} "
                             f"things + {data.num_stuff} stuff) but {name} has num_classes={model.num_classes}, "
                             f"num_stuff={model.num_stuff}; set model.num_classes={data.num_classes} and "
                             f"model.num_stuff={data.num_stuff}")

    def forward(self, model: nn.Module, images: list[torch.Tensor], device: torch.device,
                opts: EvalOptions) -> list[dict]:
        return detections(model, images, device, opts)

    def metric(self, model: nn.Module, data, labels: Labels, *, curves: bool = False) -> PanopticMetric:
        return PanopticMetric(labels.num_classes, model.num_stuff, labels.shown_names)

    def draw(self, image: torch.Tensor, pred, target, labels: Labels, score_threshold: float = 0.5) -> torch.Tensor:
        """Predicted segments carry their class names; the ground truth has the legend."""
        names = labels.shown_names
        pred_pic = draw_panoptic(image, pred["segments"], pred["segments_info"], names, legend=False)
        gt_pic = draw_panoptic(image, *target_segments(target, labels.num_things), names)
        return side_by_side([image, pred_pic, gt_pic], titles=PANEL_TITLES)

    def format_results(self, result: dict[str, Any]) -> str:
        return f"{result['coco_summary']}\n{panoptic_table(result['metrics'], result['class_names'])}"

    def describe_prediction(self, result: dict[str, Any], name: Callable[[int], str], score_thresh: float,
                            keep_thresh: float) -> str:
        segs = result["segments_info"]
        found = ", ".join(f"{name(int(s['category']))}" for s in segs[:8])
        found += f" and {len(segs) - 8} more" if len(segs) > 8 else ""
        return f"{len(segs)} segments" + (f" ({found})" if found else "")
