"""The sigmoid label modes of semantic models: ``binary`` and ``multilabel`` (see :class:`SemanticTask`).

- ``binary`` (one logit): scored as two classes, background and foreground, at the model's threshold
  (``model.spec.threshold``, 0.5 until training picks one), with the two classes' precision-recall curves
  (:class:`~segzoo.metrics.PRCurve`, what ``pr_curves.png`` draws). ``f1_threshold`` is the F1-maximising
  threshold of the foreground curve: training writes it into the checkpoint header
  (:meth:`~segzoo.tasks.semantic.SemanticTask.tune`).
- ``multilabel`` (one sigmoid per class, no background channel): per-class IoU, Dice, precision, recall
  and AP over thresholds (:class:`~segzoo.metrics.multilabel.SigmoidMetric`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchvision.utils import draw_segmentation_masks

from segzoo.metrics import PRCurve, SegmentationMetric
from segzoo.metrics.multilabel import SigmoidMetric
from segzoo.tasks.base import PANEL_TITLES, Item, Labels, TaskMetric, pct
from segzoo.visualize import color_palette, draw_legend, side_by_side, to_uint8

DEFAULT_THRESHOLD = 0.5


def model_threshold(model: nn.Module) -> float:
    """A binary model's foreground threshold: ``model.spec.threshold``, else 0.5."""
    t = getattr(getattr(model, "spec", None), "threshold", None)
    return float(t) if t is not None else DEFAULT_THRESHOLD


def _targets(items: Sequence[Item]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(t) for _, _, t in items])


class BinaryMetric(TaskMetric):
    """A binary model's metric: background/foreground confusion at ``threshold`` and both PR curves."""

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, ignore_index: int = 255, curves: bool = False) -> None:
        self.threshold, self.curves = float(threshold), curves
        self.matrix = SegmentationMetric(2, ignore_index=ignore_index)
        self.pr = PRCurve(2, ignore_index=ignore_index)

    def reset(self) -> None:
        self.matrix.reset()
        self.pr.reset()

    def update(self, items: Sequence[Item], predictions: torch.Tensor) -> None:
        fg = predictions[:, 0].float().cpu()  # (G, H, W) foreground probabilities
        targets = _targets(items).long()
        if targets.dim() == 4:
            targets = targets[:, 0]
        self.matrix.update((fg >= self.threshold).long(), targets)
        self.pr.update(torch.stack([1 - fg, fg], 1), targets)

    def compute(self) -> dict[str, Any]:
        self.matrix.reduce()
        self.pr.reduce()
        metrics = self.matrix.compute()
        curves = self.pr.compute()
        fg = curves["per_class"][1]
        metrics.update(ap=fg["ap"], best_f1=fg["best_f1"], threshold=self.threshold,
                       f1_threshold=fg["best_threshold"] if fg["num_positives"] else float("nan"))
        out: dict[str, Any] = {"metrics": metrics, "confusion": self.matrix.confusion.cpu(), "label_mode": "binary"}
        if self.curves:
            out["pr_curves"] = curves
            metrics["pr_map"] = curves["map"]
        return out


class MultiLabelMetric(TaskMetric):
    """A multi-label model's metric (:class:`~segzoo.metrics.multilabel.SigmoidMetric`)."""

    def __init__(self, num_classes: int, threshold: float = DEFAULT_THRESHOLD, ignore_index: int = 255,
                 curves: bool = False) -> None:
        self.metric = SigmoidMetric(num_classes, threshold, ignore_index=ignore_index)
        self.curves = curves

    def reset(self) -> None:
        self.metric.reset()

    def update(self, items: Sequence[Item], predictions: torch.Tensor) -> None:
        self.metric.update(predictions.float().cpu(), _targets(items))

    def compute(self) -> dict[str, Any]:
        self.metric.reduce()
        out: dict[str, Any] = {"metrics": self.metric.compute(), "label_mode": "multilabel"}
        if self.curves:
            out["pr_curves"] = self.metric.curves()
            out["metrics"]["pr_map"] = out["pr_curves"]["map"]
        return out


def multilabel_table(result: dict[str, Any]) -> str:
    """Per-class IoU, Dice, AP and F1-best threshold, then the means."""
    m, names = result["metrics"], result["class_names"]
    width = max(5, *(len(s) for s in names))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'AP':>7}  {'F1 thr':>7}"]
    for i, name in enumerate(names):
        thr = m["f1_threshold"][i]
        shown = "-" if thr is None or math.isnan(thr) else f"{thr:.3f}"
        lines.append(f"{name:<{width}}  {pct(m['iou'][i]):>7}  {pct(m['dice'][i]):>7}  {pct(m['ap'][i]):>7}  "
                     f"{shown:>7}")
    lines.append("")
    for key in ("miou", "mdice", "map", "best_f1"):
        lines.append(f"{key:<10} {pct(m[key]):>7}")
    return "\n".join(lines)


def per_class_csv(result: dict[str, Any]) -> bytes:
    m = result["metrics"]
    rows = ["class,iou,dice,precision,recall,ap,f1_threshold"]
    for i, name in enumerate(result["class_names"]):
        rows.append(",".join([name, *(str(m[k][i]) for k in ("iou", "dice", "precision", "recall", "ap",
                                                              "f1_threshold"))]))
    return ("\n".join(rows) + "\n").encode()


def draw_multilabel(image: torch.Tensor, pred: torch.Tensor, target: torch.Tensor, labels: Labels) -> torch.Tensor:
    """``image | prediction | ground truth | legend``: every class's mask blended over the image (overlaps show
    both colours); unlabelled target pixels are left undrawn."""
    img = to_uint8(image)
    colours = [tuple(int(v) for v in c) for c in color_palette(labels.num_classes + 1)[1:].tolist()]

    def overlay(masks: torch.Tensor) -> torch.Tensor:
        masks = torch.as_tensor(masks) == 1
        out = img
        for k in range(masks.shape[0]):  # one class at a time, so overlapping classes blend
            if bool(masks[k].any()):
                out = draw_segmentation_masks(out, masks[k][None], alpha=0.45, colors=[colours[k]])
        return out

    present = [k for k in range(labels.num_classes) if bool((torch.as_tensor(pred)[k] == 1).any())
               or bool((torch.as_tensor(target)[k] == 1).any())]
    legend = draw_legend(labels.shown_names, colours, height=int(image.shape[-2]), classes=present)
    return side_by_side([img, overlay(pred), overlay(target), legend], titles=(*PANEL_TITLES, ""))


__all__ = ["BinaryMetric", "DEFAULT_THRESHOLD", "MultiLabelMetric", "draw_multilabel", "model_threshold",
           "multilabel_table", "per_class_csv"]
