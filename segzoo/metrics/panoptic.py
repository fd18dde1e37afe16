"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019) with COCO panopticapi's rules.

Per image, a predicted and a ground-truth segment of the same category match when their IoU
is above 0.5 (so each segment matches at most once); the IoU's union leaves out the predicted
segment's pixels that are void in the ground truth. Per category, ``PQ = sum(IoU of matches)
/ (TP + FP / 2 + FN / 2)``, ``SQ = sum(IoU) / TP`` and ``RQ = TP / (TP + FP / 2 + FN / 2)``;
the reported PQ, SQ and RQ are means over the categories that occur (``TP + FP + FN > 0``),
over all of them, the things (``_th``) and the stuff (``_st``).

Void and crowd, as panopticapi: ground-truth pixels of no segment are void; a crowd segment
is never matched and never a false negative; an unmatched prediction is not a false positive
when more than half of it lies on void or on a crowd segment of its category. Predicted void
pixels (id 0) inside a ground-truth segment count against it (they are in the union).
torchmetrics' ``PanopticQuality`` instead leaves them out of the union, and has no crowd; the
two agree when predictions cover every pixel and there is no crowd (tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist


def _segment_map(item: dict[str, Any], what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, categories, crowd)``: an ``H x W`` map of compact ids ``0..S`` (0 void) and per-id
    ``(S + 1,)`` category (-1 for void) and crowd flag, from a prediction or a target."""
    if "segments" in item:  # a panoptic map and its segments_info (model output, COCO panoptic)
        seg = torch.as_tensor(item["segments"]).long().cpu()
        info = item.get("segments_info")
        if info is None:
            raise ValueError(f"{what} has 'segments' but no 'segments_info' (the category of each segment id)")
        ids = torch.tensor([int(s["id"]) for s in info], dtype=torch.int64)
        cats = torch.tensor([int(s.get("category", s.get("category_id", -1))) for s in info], dtype=torch.int64)
        crowd = torch.tensor([bool(s.get("iscrowd", False)) for s in info], dtype=torch.bool)
        if len(set(ids.tolist())) != len(ids) or bool((ids <= 0).any()):
            raise ValueError(f"{what}: segments_info ids must be distinct and > 0 (0 is void), got {ids.tolist()}")
        present = torch.unique(seg)
        present = present[present != 0]
        unknown = present[~torch.isin(present, ids)]
        if len(unknown):
            raise ValueError(f"{what}: segment ids {unknown.tolist()[:10]} are in the map but not in segments_info")
        order = torch.argsort(ids)
        pos = torch.searchsorted(ids[order], seg.clamp(min=1))  # (H, W) index into the sorted ids
        compact = torch.where(seg == 0, 0, order[pos.clamp(max=len(ids) - 1)] + 1) if len(ids) else seg * 0
        return compact, torch.cat([torch.tensor([-1]), cats]), torch.cat([torch.tensor([False]), crowd])
    masks = item.get("masks")
    if masks is None or "labels" not in item:
        raise ValueError(f"{what} needs 'segments' and 'segments_info', or panoptic targets with 'masks' and "
                         "'labels' (one disjoint mask per segment)")
    masks = torch.as_tensor(masks).cpu()
    masks = masks > 0.5 if masks.is_floating_point() else masks.bool()
    if masks.dim() != 3:
        raise ValueError(f"{what}['masks'] must be K x H x W, got shape {tuple(masks.shape)}")
    labels = torch.as_tensor(item["labels"]).long().cpu().reshape(-1)
    crowd = torch.as_tensor(item.get("iscrowd", torch.zeros(len(labels)))).cpu().reshape(-1).bool()
    if len(labels) != len(masks) or len(crowd) != len(masks):
        raise ValueError(f"{what} has {len(masks)} masks, {len(labels)} labels and {len(crowd)} iscrowd values")
    if len(masks) and bool((masks.sum(0) > 1).any()):
        raise ValueError(f"{what} has overlapping segment masks; panoptic segments are disjoint")
    compact = (masks.to(torch.uint8).argmax(0) + 1) * masks.any(0) if len(masks) else \
        torch.zeros(masks.shape[1:], dtype=torch.int64)
    return compact.long(), torch.cat([torch.tensor([-1]), labels]), torch.cat([torch.tensor([False]), crowd])


def target_segments(target: dict[str, Any], num_things: int) -> tuple[torch.Tensor, list[dict]]:
    """A panoptic target (``masks``, ``labels``, optional ``iscrowd``) as a model output would give it:
    an ``H x W`` map of ids ``1..K`` in target order (0: void) and its ``segments_info``."""
    seg, cats, crowd = _segment_map(target, "target")
    info = [{"id": i, "category": int(c), "is_thing": int(c) < num_things, "iscrowd": bool(k)}
            for i, (c, k) in enumerate(zip(cats.tolist()[1:], crowd.tolist()[1:]), start=1)]
    return seg, info


class PanopticQuality:
    """PQ, SQ and RQ over a dataset, overall and for things and stuff (see the module docstring).

    ``update(predictions, targets)`` takes one dict per image. A prediction is the output of a
    panoptic model: ``segments`` (``H x W`` ids, 0 void) and ``segments_info`` (dicts with
    ``id`` and ``category``; ``category_id`` also works). A target is either the same form
    (with ``iscrowd`` in its ``segments_info``) or segzoo's panoptic targets: ``masks``
    (``K x H x W``, disjoint), ``labels`` (K) and optional ``iscrowd`` (K). Categories are
    0-based labels in ``[0, num_classes)``, the last ``num_stuff`` of them stuff.

    ``compute()`` returns ``pq``, ``sq``, ``rq``, ``pq_th``, ``sq_th``, ``rq_th``, ``pq_st``,
    ``sq_st``, ``rq_st`` as fractions in [0, 1] (NaN where no category occurs), the counts
    ``num_categories``/``_th``/``_st`` and ``per_class``: ``{name: {"pq", "sq", "rq", "tp",
    "fp", "fn"}}`` (PQ, SQ, RQ NaN for categories that never occur).

    Args:
        num_classes: every category, things first.
        num_stuff: how many of them (the last ones) are stuff.
        class_names: a name per category for ``per_class`` (default: the label).
    """

    SCALARS = ("pq", "sq", "rq", "pq_th", "sq_th", "rq_th", "pq_st", "sq_st", "rq_st")

    def __init__(self, num_classes: int, num_stuff: int = 0, class_names: Sequence[str] | None = None) -> None:
        if not 0 <= num_stuff <= num_classes:
            raise ValueError(f"num_stuff must be in [0, num_classes={num_classes}], got {num_stuff}")
        self.num_classes = int(num_classes)
        self.num_stuff = int(num_stuff)
        names = list(class_names) if class_names is not None else None
        self.class_names = [str(c) for c in names] if names and len(names) == num_classes else \
            [str(c) for c in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        # per category: IoU sum, TP, FP, FN (float64: sums stay exact for counts)
        self.stats = torch.zeros(4, self.num_classes, dtype=torch.float64)

    def update(self, predictions: Sequence[dict], targets: Sequence[dict]) -> None:
        if len(predictions) != len(targets):
            raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets")
        for i, (p, t) in enumerate(zip(predictions, targets)):
            self.stats += self.image_stats(p, t, f"predictions[{i}]", f"targets[{i}]")

    def image_stats(self, pred: dict, target: dict, pred_name: str = "prediction",
                    target_name: str = "target") -> torch.Tensor:
        """``(4, num_classes)`` IoU sum, TP, FP and FN of one image."""
        p, p_cat, _ = _segment_map(pred, pred_name)
        g, g_cat, g_crowd = _segment_map(target, target_name)
        if p.shape != g.shape:
            raise ValueError(f"{pred_name} is {tuple(p.shape)} but {target_name} is {tuple(g.shape)}; predict at "
                             "the ground truth's size")
        for cats, what in ((p_cat, pred_name), (g_cat, target_name)):
            bad = cats[1:][(cats[1:] < 0) | (cats[1:] >= self.num_classes)]
            if len(bad):
                raise ValueError(f"{what} has category {int(bad[0])} but num_classes={self.num_classes}")
        np_, ng = len(p_cat), len(g_cat)
        inter = torch.bincount((g * np_ + p).flatten(), minlength=ng * np_).view(ng, np_).double()  # (G+1, P+1)
        g_area, p_area = inter.sum(1), inter.sum(0)
        union = p_area[None, 1:] + g_area[1:, None] - inter[1:, 1:] - inter[:1, 1:]  # (G, P): void left out
        iou = inter[1:, 1:] / union.clamp(min=1)
        same = g_cat[1:, None] == p_cat[None, 1:]
        match = (iou > 0.5) & same & ~g_crowd[1:, None] & (inter[1:, 1:] > 0)  # (G, P), one per row and column
        stats = torch.zeros(4, self.num_classes, dtype=torch.float64)
        gc, pc = g_cat[1:], p_cat[1:]
        stats[0].index_add_(0, gc, (iou * match).sum(1))
        stats[1].index_add_(0, gc, match.any(1).double())
        # unmatched predictions: false positives unless mostly void or on a crowd region of their category
        crowd_same = (g_crowd[1:, None] & same).double()  # (G, P)
        ignored = inter[0, 1:] + (inter[1:, 1:] * crowd_same).sum(0)
        fp = ~match.any(0) & (p_area[1:] > 0) & (ignored <= 0.5 * p_area[1:])
        stats[2].index_add_(0, pc, fp.double())
        fn = ~match.any(1) & ~g_crowd[1:] & (g_area[1:] > 0)
        stats[3].index_add_(0, gc, fn.double())
        return stats

    def reduce(self) -> None:
        """Sum the statistics over processes when ``torch.distributed`` is initialised (every rank)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        stats = self.stats
        if dist.get_backend() == "nccl":
            stats = stats.cuda()
        dist.all_reduce(stats, op=dist.ReduceOp.SUM)
        self.stats = stats.cpu()

    def compute(self) -> dict[str, Any]:
        iou, tp, fp, fn = self.stats
        denom = tp + 0.5 * fp + 0.5 * fn
        seen = denom > 0
        nan = torch.full_like(iou, math.nan)
        sq = torch.where(tp > 0, iou / tp.clamp(min=1), torch.where(seen, 0.0, nan))
        rq = torch.where(seen, tp / denom.clamp(min=1e-12), nan)
        pq = torch.where(seen, iou / denom.clamp(min=1e-12), nan)
        things = torch.arange(self.num_classes) < self.num_classes - self.num_stuff
        out: dict[str, Any] = {}
        for suffix, sel in (("", torch.ones_like(things)), ("_th", things), ("_st", ~things)):
            keep = sel & seen
            for name, values in (("pq", pq), ("sq", sq), ("rq", rq)):
                out[name + suffix] = float(values[keep].mean()) if keep.any() else math.nan
        out["num_categories"] = int(seen.sum())
        out["num_categories_th"] = int((seen & things).sum())
        out["num_categories_st"] = int((seen & ~things).sum())
        out["per_class"] = {
            name: {"pq": float(pq[c]), "sq": float(sq[c]), "rq": float(rq[c]), "tp": int(tp[c]), "fp": int(fp[c]),
                   "fn": int(fn[c]), "is_thing": bool(things[c])}
            for c, name in enumerate(self.class_names)}
        return out

    @property
    def summary(self) -> str:
        """panopticapi's table: PQ, SQ, RQ (percent) and the category count for All, Things, Stuff."""
        r = self.compute()
        lines = [f"{'':<8}{'PQ':>7}{'SQ':>7}{'RQ':>7}{'N':>5}"]
        for title, sfx in (("All", ""), ("Things", "_th"), ("Stuff", "_st")):
            vals = "".join(f"{100 * r[k + sfx]:7.2f}" for k in ("pq", "sq", "rq"))
            lines.append(f"{title:<8}{vals}{r['num_categories' + sfx]:5d}")
        return "\n".join(lines)


__all__ = ["PanopticQuality", "target_segments"]
