"""Precision-recall curves, their area (AP) and the best-F1 threshold.

Two accumulators, one result format:

- :class:`PRCurve` for binary or semantic probability maps: per class (one-vs-rest),
  scores are counted into ``num_bins`` fixed thresholds in [0, 1], so a whole dataset
  fits in ``C x num_bins`` counters.
- :class:`DetectionPRCurve` for detections: per class, each detection (by decreasing
  score) is matched to the unmatched ground-truth box of its image with the highest
  IoU >= ``iou_thresh``; the curve is exact.

``compute()`` gives, per class: ``precision``, ``recall``, ``thresholds`` (lists, by
decreasing threshold; a curve has a point only where something is predicted positive, so
it never starts at a made-up (recall 0, precision 0)), ``ap``, ``best_f1``, ``best_threshold``
and ``num_positives``; and ``map``, the mean AP over classes that have positives. Plots need matplotlib
(``pip install segzoo[plot]``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torchvision.ops import box_iou


def pr_curve(
    scores: torch.Tensor, positive: torch.Tensor, num_positives: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact precision-recall curve of scored samples.

    Args:
        scores: ``N`` scores; a sample is predicted positive when its score >= threshold.
        positive: ``N`` booleans, whether each sample is a true positive.
        num_positives: number of positives to divide by (detections: the ground-truth
            count, which includes objects no detection found); ``positive.sum()`` by default.

    Returns:
        ``(precision, recall, thresholds)``, one entry per distinct score, by decreasing
        threshold.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    positive = torch.as_tensor(positive).flatten().bool()
    order = torch.argsort(scores, descending=True, stable=True)
    scores, positive = scores[order], positive[order]
    tp = torch.cumsum(positive.double(), 0)
    fp = torch.cumsum((~positive).double(), 0)
    # keep the last sample of each run of equal scores: that is where the threshold stops
    last = torch.ones_like(scores, dtype=torch.bool)
    last[:-1] = scores[1:] != scores[:-1]
    tp, fp, thresholds = tp[last], fp[last], scores[last]
    n_pos = float(positive.sum()) if num_positives is None else float(num_positives)
    precision = tp / (tp + fp).clamp(min=1)
    recall = tp / n_pos if n_pos > 0 else torch.full_like(tp, float("nan"))
    return precision, recall, thresholds


def average_precision(precision: torch.Tensor, recall: torch.Tensor, interpolate: bool = False) -> float:
    """Area under a PR curve given by decreasing threshold (recall non-decreasing).

    ``interpolate=False`` is the step sum ``sum((R_k - R_{k-1}) * P_k)`` (scikit-learn's
    ``average_precision_score``); ``interpolate=True`` first replaces each precision by the
    best precision at any higher recall (the all-point PASCAL VOC definition).
    """
    precision = torch.as_tensor(precision, dtype=torch.float64)
    recall = torch.as_tensor(recall, dtype=torch.float64)
    if recall.numel() == 0 or bool(torch.isnan(recall).any()):
        return 0.0 if recall.numel() == 0 else float("nan")
    if interpolate:
        precision = torch.flip(torch.cummax(torch.flip(precision, [0]), 0).values, [0])
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


def best_f1(precision: torch.Tensor, recall: torch.Tensor, thresholds: torch.Tensor) -> tuple[float, float]:
    """The highest F1 on the curve and the threshold that gives it: ``(f1, threshold)``."""
    precision, recall = torch.as_tensor(precision), torch.as_tensor(recall)
    if precision.numel() == 0:
        return 0.0, float("nan")
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    f1 = torch.nan_to_num(f1, nan=0.0)
    i = int(torch.argmax(f1))
    return float(f1[i]), float(torch.as_tensor(thresholds)[i])


def _summarise(precision, recall, thresholds, n_pos: int, interpolate: bool) -> dict:
    f1, thr = best_f1(precision, recall, thresholds)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "thresholds": thresholds.tolist(),
        "ap": average_precision(precision, recall, interpolate) if n_pos > 0 else float("nan"),
        "best_f1": f1 if n_pos > 0 else float("nan"),
        "best_threshold": thr,
        "num_positives": int(n_pos),
    }


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if not (dist.is_available() and dist.is_initialized()):
        return t
    x = t.cuda() if dist.get_backend() == "nccl" and t.device.type != "cuda" else t
    dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x.to(t.device)


class PRCurve:
    """Per-class precision-recall curves of probability maps, binned over a dataset.

    ``update(probs, target)``: ``probs`` are probabilities ``N x C x H x W`` (softmax or
    sigmoid outputs; pass ``logits=True`` to apply a softmax, or a sigmoid when ``C == 1``)
    or ``N x H x W`` foreground probabilities for a binary task (then ``num_classes=1``
    and the positives are ``target == 1``); ``target`` int ``N x H x W``. Class ``c`` is
    scored one-vs-rest: positives are pixels labelled ``c``. Pixels labelled
    ``ignore_index`` are skipped. Thresholds are ``num_bins`` points evenly spaced on
    [0, 1]; AP is the step-sum area (see :func:`average_precision`).

    Args:
        num_classes: channels of ``probs`` (1 for binary maps).
        num_bins: thresholds on [0, 1]; more bins give a finer curve.
        ignore_index: target value of unlabelled pixels.
    """

    def __init__(self, num_classes: int, num_bins: int = 1001, ignore_index: int | None = 255) -> None:
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        self.num_classes = num_classes
        self.num_bins = num_bins
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.pos = torch.zeros(self.num_classes, self.num_bins, dtype=torch.int64)
        self.neg = torch.zeros(self.num_classes, self.num_bins, dtype=torch.int64)

    @torch.no_grad()
    def update(self, probs: torch.Tensor, target: torch.Tensor, logits: bool = False) -> None:
        probs, target = torch.as_tensor(probs), torch.as_tensor(target)
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if probs.dim() == target.dim():  # binary foreground map -> one channel
            probs = probs.unsqueeze(-3)
        if probs.dim() != target.dim() + 1 or probs.dim() < 3 or probs.shape[-3] != self.num_classes:
            raise ValueError(
                f"probs must be N x {self.num_classes} x H x W (or N x H x W for a binary map), "
                f"got {tuple(probs.shape)}"
            )
        if tuple(probs.shape[-2:]) != tuple(target.shape[-2:]):
            raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ in size")
        probs = probs.float()
        if logits:
            probs = probs.sigmoid() if probs.shape[-3] == 1 else probs.softmax(-3)
        elif probs.numel() and (float(probs.min()) < 0 or float(probs.max()) > 1):
            raise ValueError("probs are outside [0, 1]; pass probabilities or update(..., logits=True)")
        probs = probs.movedim(-3, 0).reshape(self.num_classes, -1)  # (C, N*H*W)
        target = target.reshape(-1).to(probs.device).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            probs, target = probs[:, keep], target[keep]
        # bin i holds scores in [i, i+1) / (B-1); the small tolerance keeps float32 scores
        # that sit on a threshold (0.7 -> 0.69999999) in that threshold's bin
        bins = (probs * (self.num_bins - 1) + 1e-3).floor().long().clamp(0, self.num_bins - 1)
        self.pos, self.neg = self.pos.to(probs.device), self.neg.to(probs.device)
        for c in range(self.num_classes):  # one bincount per class keeps memory at one map
            is_pos = target == (1 if self.num_classes == 1 else c)
            self.pos[c] += torch.bincount(bins[c][is_pos], minlength=self.num_bins)
            self.neg[c] += torch.bincount(bins[c][~is_pos], minlength=self.num_bins)

    def reduce(self) -> None:
        """Sum the counters over processes (no-op without torch.distributed)."""
        self.pos, self.neg = _all_reduce(self.pos), _all_reduce(self.neg)

    def compute(self) -> dict:
        thresholds = torch.linspace(1, 0, self.num_bins, dtype=torch.float64)
        per_class = []
        for c in range(self.num_classes):
            # predicted positive at threshold i/(B-1) <=> bin >= i: reverse cumulative sums
            tp = torch.flip(self.pos[c].cpu(), [0]).cumsum(0).double()
            fp = torch.flip(self.neg[c].cpu(), [0]).cumsum(0).double()
            n_pos = float(tp[-1])
            # thresholds above every score predict nothing: precision is undefined there, not 0, so
            # they are left out (they would start the curve at a spurious (recall 0, precision 0))
            some = (tp + fp) > 0
            tp, fp, thr = tp[some], fp[some], thresholds[some]
            precision = tp / (tp + fp)
            recall = tp / n_pos if n_pos > 0 else torch.zeros_like(tp)
            per_class.append(_summarise(precision, recall, thr, int(n_pos), interpolate=False))
        return _with_map(per_class)


class DetectionPRCurve:
    """Per-class precision-recall curves of detections against ground-truth boxes.

    ``update(predictions, targets)`` takes segzoo detection dicts (``boxes`` xyxy,
    ``scores``, ``labels`` 0-based) and targets (``boxes``, ``labels``, optional
    ``iscrowd``: crowd boxes are not objects to find, and unmatched detections on them are
    ignored rather than counted as false positives). AP uses the all-point
    interpolated area (PASCAL VOC), at the single IoU threshold ``iou_thresh``.
    """

    def __init__(self, num_classes: int, iou_thresh: float = 0.5) -> None:
        self.num_classes = num_classes
        self.iou_thresh = iou_thresh
        self.reset()

    def reset(self) -> None:
        self.scores: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.matched: list[torch.Tensor] = []
        self.num_gt = torch.zeros(self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, predictions: Sequence[dict], targets: Sequence[dict]) -> None:
        if isinstance(predictions, dict):
            predictions, targets = [predictions], [targets]
        if len(predictions) != len(targets):
            raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets")
        for pred, tgt in zip(predictions, targets):
            boxes = torch.as_tensor(pred["boxes"]).detach().cpu().float().reshape(-1, 4)
            scores = torch.as_tensor(pred["scores"]).detach().cpu().float().reshape(-1)
            labels = torch.as_tensor(pred["labels"]).detach().cpu().long().reshape(-1)
            gt_boxes = torch.as_tensor(tgt["boxes"]).detach().cpu().float().reshape(-1, 4)
            gt_labels = torch.as_tensor(tgt["labels"]).detach().cpu().long().reshape(-1)
            crowd_boxes, crowd_labels = gt_boxes[:0], gt_labels[:0]
            crowd = tgt.get("iscrowd")
            if crowd is not None:
                is_crowd = torch.as_tensor(crowd).cpu().bool().reshape(-1)
                crowd_boxes, crowd_labels = gt_boxes[is_crowd], gt_labels[is_crowd]
                gt_boxes, gt_labels = gt_boxes[~is_crowd], gt_labels[~is_crowd]
            for what, lab in (("prediction", labels), ("target", gt_labels)):
                if len(lab) and (int(lab.min()) < 0 or int(lab.max()) >= self.num_classes):
                    raise ValueError(f"{what} labels must be 0-based in [0, {self.num_classes - 1}]")
            self.num_gt += torch.bincount(gt_labels, minlength=self.num_classes)
            order = torch.argsort(scores, descending=True, stable=True)
            boxes, scores, labels = boxes[order], scores[order], labels[order]
            iou = box_iou(boxes, gt_boxes)  # (K, G)
            iou[labels[:, None] != gt_labels[None, :]] = -1.0
            taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
            matched = torch.zeros(len(boxes), dtype=torch.bool)
            for k in range(len(boxes)):  # greedy by score: inherently sequential
                cand = iou[k].masked_fill(taken, -1.0)
                if len(cand) and float(cand.max()) >= self.iou_thresh:
                    j = int(cand.argmax())
                    taken[j], matched[k] = True, True
            if len(crowd_boxes):  # unmatched detections on a crowd region are ignored, not false positives
                c_iou = box_iou(boxes, crowd_boxes)  # (K, crowd)
                c_iou[labels[:, None] != crowd_labels[None, :]] = -1.0
                keep = matched | (c_iou.max(1).values < self.iou_thresh)
                scores, labels, matched = scores[keep], labels[keep], matched[keep]
            self.scores.append(scores)
            self.labels.append(labels)
            self.matched.append(matched)

    def reduce(self) -> None:
        """Gather every process's matched detections and ground-truth counts (no-op without
        torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.scores, self.labels, self.matched))
        self.scores = [t for g in gathered for t in g[0]]
        self.labels = [t for g in gathered for t in g[1]]
        self.matched = [t for g in gathered for t in g[2]]
        self.num_gt = _all_reduce(self.num_gt)

    def compute(self) -> dict:
        scores = torch.cat(self.scores) if self.scores else torch.zeros(0)
        labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)
        matched = torch.cat(self.matched) if self.matched else torch.zeros(0, dtype=torch.bool)
        per_class = []
        for c in range(self.num_classes):
            sel = labels == c
            n_pos = int(self.num_gt[c])
            p, r, t = pr_curve(scores[sel], matched[sel], num_positives=n_pos)
            if n_pos == 0:
                r = torch.zeros_like(p)
            per_class.append(_summarise(p, r, t, n_pos, interpolate=True))
        return _with_map(per_class)


def _with_map(per_class: list[dict]) -> dict:
    aps = [c["ap"] for c in per_class if c["num_positives"] > 0 and not math.isnan(c["ap"])]
    return {"per_class": per_class, "map": sum(aps) / len(aps) if aps else float("nan")}


# ---------------------------------------------------------------------- plots
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plots need matplotlib: install it with `pip install segzoo[plot]`") from e
    return plt


def plot_pr_curves(
    curves: dict, path: str | os.PathLike, class_names: Sequence[str] | None = None, title: str = "Precision-recall"
) -> None:
    """Plot the per-class curves of a ``compute()`` result to an image file (PNG)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    try:
        for c, cur in enumerate(curves["per_class"]):
            if cur["num_positives"] == 0:
                continue
            name = class_names[c] if class_names else str(c)
            ax.plot(cur["recall"], cur["precision"], label=f"{name} AP={cur['ap']:.3f}", lw=1.5)
        ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"{title} (mAP={curves['map']:.3f})")
        ax.grid(alpha=0.3)
        if ax.lines:
            # beside the axes, never over the curves (bbox_inches="tight" widens the picture to hold it)
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                      ncol=1 + len(ax.lines) // 20, title="class, AP", title_fontsize=8, frameon=False)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)


def plot_confusion_matrix(
    confusion: torch.Tensor, path: str | os.PathLike, class_names: Sequence[str] | None = None, normalize: bool = True
) -> None:
    """Plot a ``C x C`` confusion matrix (rows: ground truth), row-normalised by default."""
    plt = _pyplot()
    cm = torch.as_tensor(confusion).double().cpu()
    if normalize:
        cm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    n = cm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    size = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    try:
        im = ax.imshow(cm.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set(xticks=range(n), yticks=range(n), xlabel="prediction", ylabel="ground truth")
        ax.set_xticklabels(names, rotation=90, fontsize=7)
        ax.set_yticklabels(names, fontsize=7)
        if n <= 30:
            for i in range(n):
                for j in range(n):
                    v = float(cm[i, j])
                    ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=6,
                            color="white" if normalize and v > 0.5 else "black")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
