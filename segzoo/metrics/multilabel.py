"""Metrics of sigmoid outputs (binary and multi-label models), one class at a time.

:class:`SigmoidMetric` accumulates, per class, the pixel counts at the model's threshold (true and false
positives, false negatives) and one :class:`~segzoo.metrics.curves.PRCurve` (the binned precision-recall
curve segzoo draws in ``pr_curves.png``): both are sums, so accumulating over a dataset and reducing
across processes gives the dataset-level numbers, and the curve gives the AP over thresholds and the
F1-maximising threshold without keeping any pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist

from segzoo.metrics.curves import PRCurve, _with_map

IGNORE = 255


def _nanmean(v: torch.Tensor) -> float:
    keep = ~torch.isnan(v)
    return float(v[keep].mean()) if keep.any() else float("nan")


class SigmoidMetric:
    """Per-class IoU, Dice, precision, recall and AP over thresholds of sigmoid probabilities.

    ``update`` takes probabilities ``N x C x H x W`` and targets: multi-hot ``N x C x H x W`` (0, 1,
    ``ignore_index`` where unlabelled) or, for ``C = 1``, a 0/1 label map ``N x H x W``. Pixels count as
    positive predictions at ``thresholds`` (one per class).

    ``compute`` returns per-class lists ``iou`` ``TP / (TP + FP + FN)``, ``dice`` ``2 TP / (2 TP + FP + FN)``,
    ``precision``, ``recall``, ``ap`` (the area under the precision-recall curve of the histogram's
    thresholds) and ``f1_threshold`` (the threshold of largest F1 on the curve), and their means ``miou``,
    ``mdice``, ``map`` and ``best_f1`` (the mean of each class's largest F1). A class absent from both the
    predictions and the ground truth has NaN IoU and Dice; one without positive pixels has NaN AP; both
    are left out of the means.

    Args:
        num_classes: the model's outputs (1 for a binary model).
        thresholds: the probability from which a pixel is predicted positive, one per class or one for all.
        bins: thresholds of the precision-recall curves (:class:`~segzoo.metrics.curves.PRCurve`'s ``num_bins``).
        ignore_index: target value of unlabelled pixels.
    """

    SCALARS = ("miou", "mdice", "map", "best_f1")

    def __init__(self, num_classes: int, thresholds: float | Sequence[float] = 0.5, bins: int = 1001,
                 ignore_index: int = IGNORE) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        t = torch.as_tensor(thresholds, dtype=torch.float32).reshape(-1)
        if t.numel() == 1:
            t = t.expand(num_classes).clone()
        if t.numel() != num_classes or not bool(((t > 0) & (t < 1)).all()):
            raise ValueError(f"thresholds must be {num_classes} probabilities in (0, 1), got {t.tolist()}")
        self.num_classes, self.bins, self.ignore_index = num_classes, int(bins), ignore_index
        self.thresholds = t
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        self.counts = torch.zeros(3, c, dtype=torch.int64)  # tp, fp, fn
        self.pr = [PRCurve(1, self.bins, ignore_index=self.ignore_index) for _ in range(c)]

    @torch.no_grad()
    def update(self, probs: torch.Tensor, targets: torch.Tensor) -> None:
        probs, targets = torch.as_tensor(probs).float(), torch.as_tensor(targets)
        if targets.dim() == 3:
            targets = targets[:, None]
        if probs.dim() != 4 or probs.shape[1] != self.num_classes or targets.shape != probs.shape:
            raise ValueError(f"probabilities {tuple(probs.shape)} and targets {tuple(targets.shape)} must both be "
                             f"N x {self.num_classes} x H x W (a binary model's targets may be N x H x W)")
        targets = targets.to(probs.device)
        valid = targets != self.ignore_index
        pos = (targets == 1) & valid
        pred = probs >= self.thresholds.to(probs.device)[None, :, None, None]
        tp = (pred & pos).sum((0, 2, 3))
        fp = (pred & valid & ~pos).sum((0, 2, 3))
        fn = (~pred & pos).sum((0, 2, 3))
        self.counts += torch.stack([tp, fp, fn]).cpu()
        for c, curve in enumerate(self.pr):  # class c one-vs-rest: its 0/1/ignore mask as a binary map
            curve.update(probs[:, c], targets[:, c])

    def reduce(self) -> None:
        """Sum the counts over processes under ``torch.distributed`` (a no-op in one process)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        t = self.counts.cuda() if dist.get_backend() == "nccl" else self.counts
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.counts = t.cpu()
        for curve in self.pr:
            curve.reduce()

    def compute(self) -> dict:
        tp, fp, fn = self.counts.double()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        union = tp + fp + fn
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), nan)
        precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp(min=1), nan)
        recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp(min=1), nan)
        curves = [c.compute()["per_class"][0] for c in self.pr]
        ap = torch.tensor([c["ap"] for c in curves], dtype=torch.float64)
        best_f1 = torch.tensor([c["best_f1"] for c in curves], dtype=torch.float64)
        f1_thr = torch.tensor([c["best_threshold"] if c["num_positives"] else math.nan for c in curves],
                              dtype=torch.float64)
        return {
            "miou": _nanmean(iou), "mdice": _nanmean(dice), "map": _nanmean(ap), "best_f1": _nanmean(best_f1),
            "iou": iou.tolist(), "dice": dice.tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
            "ap": ap.tolist(), "f1_threshold": f1_thr.tolist(), "threshold": self.thresholds.tolist(),
        }

    def curves(self) -> dict:
        """The per-class precision-recall curves in :meth:`segzoo.metrics.curves.PRCurve.compute`'s format (what
        :func:`~segzoo.metrics.plot_pr_curves` draws)."""
        return _with_map([c.compute()["per_class"][0] for c in self.pr])


def best_threshold(metrics: dict, index: int = 0) -> float | None:
    """The F1-maximising threshold of class ``index`` from :meth:`SigmoidMetric.compute` (None when undefined)."""
    v = metrics.get("f1_threshold")
    if not isinstance(v, (list, tuple)) or len(v) <= index:
        return None
    t = v[index]
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return None
    return float(t) if math.isfinite(t) and 0 < t < 1 else None


__all__ = ["SigmoidMetric", "best_threshold"]
