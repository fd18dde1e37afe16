"""The panoptic merge of Panoptic FPN (Kirillov et al., CVPR 2019), batched over images.

:func:`combine_panoptic` follows detectron2's ``combine_semantic_and_instance_outputs``
(itself panopticapi's ``combine_semantic_and_instance_predictions.py``) and gives the same
segments: instances are pasted by decreasing score (those scoring ``>= score_thresh``); an
instance whose mask overlaps the pixels already taken by more than ``overlap_thresh`` of its
area is dropped, otherwise it takes its free pixels. Then every stuff class of the semantic
prediction takes the free pixels predicted as it when there are at least ``stuff_area_thresh``
of them. Everything left is void (id 0). Segment ids are 1, 2, ... in that order: instances
by score, then stuff classes by label.

Batching: every step works on all images at once. The instance step is a loop over the K
score ranks (not over images): whether the instance of rank k is kept depends on the
pixels taken by the instances kept before it, so the decisions are sequential by nature
(as in greedy NMS). Each of the at most K steps is a handful of ``N x H x W`` tensor ops,
without host syncs, so it runs the same eagerly, under ``torch.compile`` and in an exported
graph (where K is ``max_detections``). The stuff step has no order dependence and is one
scatter over all pixels of the batch.
"""

from __future__ import annotations

from fractions import Fraction

import torch


def combine_panoptic(
    masks: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    semantic: torch.Tensor,
    semantic_scores: torch.Tensor,
    *,
    num_things: int,
    num_stuff: int,
    overlap_thresh: float = 0.5,
    stuff_area_thresh: float = 4096,
    score_thresh: float = 0.5,
) -> dict[str, torch.Tensor]:
    """Merge instances and a semantic map into panoptic segments, for a whole batch.

    Args:
        masks: ``(N, K, H, W)`` bool instance masks, each image's instances sorted by
            decreasing score; padding rows are all False.
        scores: ``(N, K)`` instance scores (anything below ``score_thresh`` for padding).
        labels: ``(N, K)`` int64 thing labels in ``[0, num_things)``.
        semantic: ``(N, H, W)`` int64 semantic-head labels: 0 is the "things" class and
            ``1..num_stuff`` the stuff classes (detectron2's layout); a value outside
            ``[0, num_stuff]`` is never painted (use it for padding).
        semantic_scores: ``(N, H, W)`` probability of the predicted semantic label, averaged
            over a stuff segment to give its score.
        num_things: number of thing classes: stuff class ``s`` (semantic label ``s + 1``) is
            category ``num_things + s``.
        num_stuff: number of stuff classes.
        overlap_thresh: drop an instance when more than this fraction of its mask is taken.
        stuff_area_thresh: smallest stuff segment, in pixels.
        score_thresh: instances scoring below this are not used.

    Returns:
        ``segments`` ``(N, H, W)`` int32 segment ids (0: void) and a table with one row per
        possible segment, row ``r`` describing segment id ``r + 1`` (``M = K + num_stuff``
        rows): ``labels`` ``(N, M)`` int64 categories (things ``< num_things``; -1 for unused
        rows), ``scores`` ``(N, M)`` (instance score; mean probability of a stuff segment's
        class over its pixels; 0 for unused rows), ``areas`` ``(N, M)`` int64 pixels, and
        ``num_segments`` ``(N,)`` int64: rows ``>= num_segments`` are unused.
    """
    n, k, h, w = masks.shape
    device = masks.device
    seg = torch.zeros(n, h, w, dtype=torch.int64, device=device)
    count = torch.zeros(n, dtype=torch.int64, device=device)  # segments so far, per image
    thing_ids = []
    for i in range(k):  # score ranks: sequential by nature (see the module docstring)
        m = masks[:, i]  # (N, H, W)
        area = m.flatten(1).sum(1)  # (N,)
        taken = (m & (seg > 0)).flatten(1).sum(1)
        # taken / area <= thresh, compared in integers (exact, and no float64: MPS has none)
        keep = (scores[:, i] >= score_thresh) & (area > 0) & (taken <= _floor_fraction(area, overlap_thresh))
        count = count + keep.long()
        new_id = torch.where(keep, count, 0)  # (N,)
        seg = torch.where(m & (seg == 0), new_id[:, None, None], seg)  # 0 paints nothing
        thing_ids.append(new_id)
    thing_ids = torch.stack(thing_ids, 1) if k else count.new_zeros(n, 0)  # (N, K)

    # stuff: free pixels per semantic label, one scatter for the batch
    free = seg == 0
    bins = num_stuff + 2  # 0 things, 1..S stuff, S + 1: taken or not paintable
    sem = torch.where(free & (semantic >= 0) & (semantic <= num_stuff), semantic, num_stuff + 1).flatten(1)
    stuff_area = torch.zeros(n, bins, dtype=torch.int64, device=device).scatter_add_(
        1, sem, torch.ones_like(sem))[:, 1 : num_stuff + 1]  # (N, S)
    prob_sum = torch.zeros(n, bins, dtype=torch.float32, device=device).scatter_add_(
        1, sem, semantic_scores.flatten(1).float())[:, 1 : num_stuff + 1]
    keep = (stuff_area >= stuff_area_thresh) & (stuff_area > 0)  # (N, S)
    stuff_ids = torch.where(keep, count[:, None] + keep.long().cumsum(1), 0)  # (N, S)
    lookup = torch.cat([stuff_ids.new_zeros(n, 1), stuff_ids, stuff_ids.new_zeros(n, 1)], 1)  # (N, S + 2)
    seg = torch.where(free, lookup.gather(1, sem).view(n, h, w), seg)
    count = count + keep.long().sum(1)

    # the table: row r describes segment id r + 1
    m_rows = k + num_stuff
    ids = torch.cat([thing_ids, stuff_ids], 1)  # (N, M), 0 where dropped
    stuff_labels = num_things + torch.arange(num_stuff, device=device)
    cand_labels = torch.cat([labels.long(), stuff_labels[None].expand(n, num_stuff)], 1)
    cand_scores = torch.cat([scores.float(), prob_sum / stuff_area.clamp(min=1)], 1)
    rows = torch.where(ids > 0, ids - 1, m_rows)  # dropped candidates go to a spare column
    table_labels = torch.full((n, m_rows + 1), -1, dtype=torch.int64, device=device).scatter_(
        1, rows, cand_labels)[:, :m_rows]
    table_scores = torch.zeros(n, m_rows + 1, dtype=torch.float32, device=device).scatter_(
        1, rows, cand_scores)[:, :m_rows]
    flat = seg.flatten(1)
    areas = torch.zeros(n, m_rows + 1, dtype=torch.int64, device=device).scatter_add_(
        1, flat, torch.ones_like(flat))[:, 1:]  # (N, M): pixels of id r + 1
    return {"segments": seg.to(torch.int32), "labels": table_labels, "scores": table_scores, "areas": areas,
            "num_segments": count}


def _floor_fraction(area: torch.Tensor, fraction: float) -> torch.Tensor:
    """``floor(fraction * area)`` for int64 ``area``: ``taken <= it`` is ``taken / area <= fraction``
    (``fraction`` as a ratio of integers below 2^20, exact for 0.5 and the like, and no int64 overflow
    below 2^43 pixels)."""
    ratio = Fraction(float(fraction)).limit_denominator(1 << 20)
    return area * ratio.numerator // ratio.denominator


__all__ = ["combine_panoptic"]
