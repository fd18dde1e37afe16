"""Semantic segmentation metrics from one accumulated confusion matrix.

Every metric here is a function of the ``C x C`` confusion matrix (rows: ground truth,
columns: prediction), so accumulating it over a dataset and reducing it across processes
gives exactly the dataset-level numbers (not a mean of per-image scores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist


class SegmentationMetric:
    """Confusion-matrix accumulator for semantic segmentation.

    ``update`` takes predictions as int labels ``N x H x W`` (or ``H x W``) or as logits /
    probabilities ``N x C x H x W`` (reduced with ``argmax`` over ``C``), and int targets
    ``N x H x W``. Pixels whose target equals ``ignore_index`` are not counted.

    ``compute`` returns:

    - ``pixel_acc``: correctly labelled pixels / labelled pixels.
    - ``acc``: per-class accuracy (recall) ``TP / (TP + FN)``; NaN for classes absent from
      the ground truth. ``mean_acc`` is its NaN-ignoring mean.
    - ``iou``: per-class ``TP / (TP + FP + FN)``; ``miou`` is its NaN-ignoring mean.
    - ``fwiou``: IoU weighted by each class's ground-truth pixel frequency.
    - ``dice``: per-class Dice / F1 ``2 TP / (2 TP + FP + FN)``; ``mdice`` its mean.
    - ``precision``: per-class ``TP / (TP + FP)``; NaN for classes never predicted.

    A class absent from both the prediction and the ground truth has an undefined IoU and
    Dice: it is reported as NaN and excluded from the means (a class that is predicted but
    absent from the ground truth scores 0). Per-class values are Python lists of floats.

    Args:
        num_classes: number of labels, background included.
        ignore_index: target value of unlabelled pixels; ``None`` to count every pixel.

    Example:
        >>> metric = SegmentationMetric(num_classes=3)
        >>> metric.update(model(images), masks)  # per batch
        >>> metric.reduce()                       # under torch.distributed
        >>> metric.compute()["miou"]
    """

    SCALARS = ("pixel_acc", "mean_acc", "miou", "fwiou", "mdice")  # the dataset-level numbers of compute()

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (labels including background), got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confusion = torch.zeros_like(self.confusion)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predictions and targets to the confusion matrix.

        Args:
            pred: int labels ``N x H x W`` / ``H x W``, or float scores ``N x C x H x W``
                / ``C x H x W``.
            target: int labels with the shape of the label predictions; a singleton
                channel (``N x 1 x H x W``) is accepted.

        Raises:
            ValueError: for mismatched shapes, float targets or out-of-range labels.
        """
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if target.is_floating_point():
            raise ValueError(f"target has dtype {target.dtype}; pass integer class indices (N x H x W)")
        if target.dim() == 4 and target.shape[1] == 1:
            target = target[:, 0]
        if pred.is_floating_point():
            if pred.dim() != target.dim() + 1:
                raise ValueError(
                    f"float predictions must be scores N x C x H x W for targets N x H x W, got "
                    f"{tuple(pred.shape)} and {tuple(target.shape)}; pass int labels or logits"
                )
            if pred.shape[-3] != self.num_classes:
                raise ValueError(
                    f"predictions have {pred.shape[-3]} channels but num_classes={self.num_classes}"
                )
            pred = pred.argmax(dim=-3)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}; "
                "resize predictions to the mask size before updating"
            )
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(pred.device).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        c = self.num_classes
        if target.numel():
            lo, hi = (int(v) for v in torch.aminmax(target))
            if lo < 0 or hi >= c:
                bad = hi if hi >= c else lo
                raise ValueError(
                    f"target has value {bad} but num_classes={c} and ignore_index={self.ignore_index}; "
                    "set num_classes or ignore_index (0/255 binary masks must be mapped to 0/1)"
                )
            lo, hi = (int(v) for v in torch.aminmax(pred))
            if lo < 0 or hi >= c:
                raise ValueError(f"prediction has label {hi if hi >= c else lo} outside [0, {c - 1}]")
        counts = torch.bincount(target * c + pred, minlength=c * c).view(c, c)  # (gt, pred)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts

    def reduce(self) -> None:
        """Sum the confusion matrix over processes when ``torch.distributed`` is initialised.

        Call it once, after the last ``update`` and before ``compute``, on every rank.
        A no-op in a single process.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        cm = self.confusion
        if dist.get_backend() == "nccl" and cm.device.type != "cuda":
            cm = cm.cuda()
        dist.all_reduce(cm, op=dist.ReduceOp.SUM)
        self.confusion = cm.to(self.confusion.device)

    def compute(self) -> dict:
        """Metrics of everything accumulated so far (see the class docstring for keys)."""
        cm = self.confusion.double().cpu()
        tp = cm.diag()
        gt = cm.sum(1)  # pixels of each class in the ground truth
        pr = cm.sum(0)  # pixels predicted as each class
        total = cm.sum()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        union = gt + pr - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        dice = torch.where(gt + pr > 0, 2 * tp / (gt + pr).clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        precision = torch.where(pr > 0, tp / pr.clamp(min=1), nan)
        freq = gt / total if total > 0 else gt
        valid = gt > 0
        return {
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
            "mean_acc": _nanmean(acc),
            "miou": _nanmean(iou),
            "fwiou": float((freq[valid] * iou[valid]).sum()) if total > 0 else float("nan"),
            "mdice": _nanmean(dice),
            "iou": iou.tolist(),
            "dice": dice.tolist(),
            "acc": acc.tolist(),
            "precision": precision.tolist(),
        }


def _nanmean(t: torch.Tensor) -> float:
    ok = ~torch.isnan(t)
    return float(t[ok].mean()) if bool(ok.any()) else float("nan")


def format_table(results: dict, class_names: Sequence[str] | None = None, digits: int = 2) -> str:
    """A plain-text table of per-class IoU / Dice / accuracy and the summary metrics.

    Args:
        results: the dict from :meth:`SegmentationMetric.compute`.
        class_names: one name per class; defaults to the class index.
        digits: decimals of the percentages.
    """
    n = len(results["iou"])
    names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
    if len(names) != n:
        raise ValueError(f"got {len(names)} class names for {n} classes")

    def pct(v: float) -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.{digits}f}"

    width = max(5, *(len(s) for s in names))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'Acc':>7}"]
    for i, name in enumerate(names):
        lines.append(
            f"{name:<{width}}  {pct(results['iou'][i]):>7}  {pct(results['dice'][i]):>7}  "
            f"{pct(results['acc'][i]):>7}"
        )
    lines.append("")
    for key in ("pixel_acc", "mean_acc", "miou", "fwiou", "mdice"):
        lines.append(f"{key:<10} {pct(results[key]):>7}")
    return "\n".join(lines)
