"""Universal segmentation (Mask2Former, EoMT): one model, one forward, scored as every task its data supports.

A universal model predicts a set of (class, mask) pairs; its forward merges them into a semantic map
(``sem_seg``), instances (``boxes``, ``scores``, ``labels``, ``masks``) and a panoptic segmentation
(``segments``, ``segments_info``) at once. The task reads the data's target kind
(:mod:`segzoo.data.targets`) and scores what it holds:

* panoptic data (``SEGMENTS``): PQ on the segments, mask AP on the thing segments, mIoU on the label map
  the segments paint (void pixels ignored);
* instance data (``INSTANCE_MASKS``): mask and box AP;
* semantic data (``CLASS_MAP``): mIoU (the model's ``num_classes`` counts every label, background included).

Training takes the same three kinds: the collate keeps object rows as lists and stacks label maps, and
the model turns a label map into one mask per class present (:func:`segzoo.setpred.semantic_to_set_targets`).
The tracked metric ``score`` is the richest of them: PQ on panoptic data, mask AP on instance data, mIoU
on semantic data.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from segzoo.data.targets import CLASS_MAP, INSTANCE_MASKS, SEGMENTS, Target
from segzoo.data.transforms.collate import collate_instances, collate_semantic
from segzoo.metrics import PanopticQuality, SegmentationMetric
from segzoo.metrics.coco import STAT_NAMES
from segzoo.tasks.base import EvalOptions, Item, Labels, Task, TaskMetric
from segzoo.tasks.detection import CocoMetric, InstanceTask, detections
from segzoo.tasks.panoptic import PanopticMetric, PanopticTask
from segzoo.tasks.semantic import SemanticMetric, SemanticTask

#: The target kinds a universal model trains and evaluates on, the richest first.
UNIVERSAL_TARGETS = (SEGMENTS, INSTANCE_MASKS, CLASS_MAP)
INSTANCE_KEYS = ("boxes", "scores", "labels", "masks")


def collate_universal(batch: Sequence[tuple]):
    """Label maps stacked (:func:`collate_semantic`), object rows kept as lists (:func:`collate_instances`)."""
    first = batch[0][1] if len(batch) else {}
    return collate_instances(batch) if isinstance(first, dict) else collate_semantic(batch)


UNIVERSAL = Target("universal", masks=True, collate=collate_universal)


def segments_label_map(target: dict, ignore_index: int = 255) -> torch.Tensor:
    """The ``H x W`` label map that a panoptic target's segments paint (crowd segments included: they are
    their class), ``ignore_index`` where no segment is."""
    masks = torch.as_tensor(target["masks"]).bool()
    labels = torch.as_tensor(target["labels"]).long().reshape(-1)
    out = torch.full(masks.shape[-2:], ignore_index, dtype=torch.long)
    if len(labels):
        painted = masks.any(0)
        out[painted] = labels[masks.float().argmax(0)][painted]
    return out


def thing_rows(target: dict, num_things: int) -> dict:
    """The thing segments of a panoptic target as an instance target (boxes, labels, masks, iscrowd)."""
    keep = torch.as_tensor(target["labels"]).reshape(-1) < num_things
    return {k: torch.as_tensor(v)[keep] for k, v in target.items()
            if k in ("boxes", "labels", "masks", "iscrowd", "area")}


def _instances(pred: dict, num_things: int | None = None) -> dict:
    out = {k: pred[k] for k in INSTANCE_KEYS}
    if num_things is not None:  # the merge gives thing classes only when the model has stuff
        keep = out["labels"] < num_things
        out = {k: v[keep] for k, v in out.items()}
    return out


class UniversalMetric(TaskMetric):
    """The semantic, instance and panoptic metrics that the data's target kind supports, from one forward."""

    def __init__(self, model: nn.Module, data, labels: Labels, curves: bool = False) -> None:
        kind = getattr(data, "target", SEGMENTS)
        names = labels.shown_names
        self.kind = kind
        self.num_things = int(getattr(model, "num_things", labels.num_classes))
        self.parts: dict[str, TaskMetric] = {}
        if kind.segments:
            self.parts["panoptic"] = PanopticMetric(labels.num_classes, model.num_stuff, names)
            self.parts["instance"] = CocoMetric(self.num_things, ("bbox", "segm"), types.SimpleNamespace(),
                                                names[: self.num_things], curves)
            self.parts["semantic"] = SemanticMetric(labels.num_classes, labels.ignore_index, curves)
        elif kind.label_map:
            self.parts["semantic"] = SemanticMetric(labels.num_classes, labels.ignore_index, curves)
        else:
            self.parts["instance"] = CocoMetric(labels.num_classes, ("bbox", "segm"), data, names, curves)
        self.ignore_index = labels.ignore_index

    def reset(self) -> None:
        for m in self.parts.values():
            m.reset()

    def update(self, items: Sequence[Item], predictions: list[dict]) -> None:
        if "panoptic" in self.parts:
            self.parts["panoptic"].update(items, predictions)
        if "semantic" in self.parts:
            sem = torch.stack([p["sem_seg"] for p in predictions])
            sem_items = items if self.kind.label_map else \
                [(i, im, segments_label_map(t, self.ignore_index)) for i, im, t in items]
            self.parts["semantic"].update(sem_items, sem)
        if "instance" in self.parts:
            if self.kind.segments:
                inst = [_instances(p, self.num_things) for p in predictions]
                self.parts["instance"].update([(i, im, thing_rows(t, self.num_things)) for i, im, t in items], inst)
            else:
                self.parts["instance"].update(items, [_instances(p) for p in predictions])

    def compute(self) -> dict[str, Any]:
        results = {name: m.compute() for name, m in self.parts.items()}
        metrics: dict[str, Any] = {}
        for name in ("semantic", "instance", "panoptic"):
            if name in results:
                metrics.update({k: v for k, v in results[name]["metrics"].items() if k != "per_class"})
        primary = "pq" if "panoptic" in results else "segm_AP" if "instance" in results else "miou"
        metrics["score"] = metrics[primary]
        return {"metrics": metrics, "parts": results}


class UniversalTask(Task):
    """One model evaluated as semantic, instance and panoptic segmentation (see the module docstring)."""

    name = "universal"
    primary = "score"
    summary = ("pq", "segm_AP", "miou", "pq_th", "pq_st", "bbox_AP")
    pr_metric = None
    parts = {"semantic": SemanticTask(), "instance": InstanceTask(), "panoptic": PanopticTask()}

    @property
    def target(self) -> Target:
        return UNIVERSAL

    def data_target(self, offered: Sequence[Target]) -> Target:
        """The richest of :data:`UNIVERSAL_TARGETS` a reader offers (its ``targets``)."""
        for t in UNIVERSAL_TARGETS:
            if t in offered:
                return t
        raise ValueError(f"a universal model trains on panoptic, instance or semantic data; this reader gives "
                         f"{', '.join(t.name for t in offered)} (use data with masks or a label map)")

    def before_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """The model's ``train_schedule(step, total_steps)`` where it has one (EoMT: the masked-attention
        probability of each block annealed from 1 to 0, :meth:`segzoo.models.eomt.EoMT.train_schedule`)."""
        schedule = getattr(model, "train_schedule", None)
        if schedule is not None:
            schedule(step, total_steps)

    def metric_names(self) -> tuple[str, ...]:
        return ("score", *SegmentationMetric.SCALARS, *(f"{t}_{s}" for t in ("bbox", "segm") for s in STAT_NAMES),
                *PanopticQuality.SCALARS)

    def check_data(self, target: Any, model_name: str = "the model") -> None:
        if isinstance(target, dict) and "masks" not in target:
            raise ValueError(f"{model_name} is a universal model (masks) but the data has boxes only; use data with "
                             "instance masks, panoptic segments or a label map")

    def check_categories(self, model: nn.Module, data) -> None:
        kind = getattr(data, "target", None)
        if kind is not None and kind.segments:
            PanopticTask.check_categories(self.parts["panoptic"], model, data)

    def forward(self, model: nn.Module, images: list[torch.Tensor], device: torch.device,
                opts: EvalOptions) -> list[dict]:
        return detections(model, images, device, opts)

    def metric(self, model: nn.Module, data, labels: Labels, *, curves: bool = False) -> UniversalMetric:
        return UniversalMetric(model, data, labels, curves)

    def draw(self, image: torch.Tensor, pred, target, labels: Labels, score_threshold: float = 0.5) -> torch.Tensor:
        """Semantic data: the argmax of ``sem_seg``; panoptic data: the segments; instance data: the instances."""
        if not isinstance(target, dict):
            return self.parts["semantic"].draw(image, pred["sem_seg"].argmax(0), target, labels, score_threshold)
        if "iscrowd" in target and labels.num_things is not None:
            return self.parts["panoptic"].draw(image, pred, target, labels, score_threshold)
        return self.parts["instance"].draw(image, _instances(pred), target, labels, score_threshold)

    def format_results(self, result: dict[str, Any]) -> str:
        out = []
        for name, part in result["parts"].items():
            names = result["class_names"]
            if name == "instance" and "panoptic" in result["parts"]:  # thing classes only
                names = names[: len(part["metrics"].get("segm_per_class", names))]
            out.append(f"[{name}]\n" + self.parts[name].format_results({**part, "class_names": names}))
        return "\n".join(out)

    def describe_prediction(self, result: dict[str, Any], name: Callable[[int], str], score_thresh: float,
                            keep_thresh: float) -> str:
        return self.parts["panoptic"].describe_prediction(result, name, score_thresh, keep_thresh)
