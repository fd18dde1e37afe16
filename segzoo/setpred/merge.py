"""Inference merges of a set of (class, mask) predictions (Mask2Former, Cheng et al. 2022; the
rules of its official ``semantic_inference``, ``instance_inference`` and ``panoptic_inference``).

Each takes ``class_logits`` ``B x Q x (C + 1)`` (last column: no object) and ``mask_logits``
``B x Q x h x w``; ``size=(H, W)`` first resizes the mask logits bilinearly (the paper resizes to
the image before merging). Batched over images and queries: no Python loop over pixels, queries
or segments; the instance and panoptic merges copy one small table to the host per batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Full-resolution floats one step of a merge holds per image (``queries x H x W``): the merges resize
#: the mask logits a chunk of queries at a time, so 200 queries at 1024 px never hold ``Q x H x W``.
CHUNK_ELEMENTS = 1 << 24


def _upsample(mask_logits: torch.Tensor, size: Sequence[int] | None, crop: Sequence[int] | None) -> torch.Tensor:
    """Float32 mask logits resized (bilinear) to ``size`` (``None``: as they are), then their top-left
    ``crop`` kept (the image inside a padded batch)."""
    mask_logits = mask_logits.float()
    if size is not None and tuple(mask_logits.shape[-2:]) != tuple(size):
        mask_logits = F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)
    if crop is not None and tuple(mask_logits.shape[-2:]) != tuple(crop):
        mask_logits = mask_logits[..., : crop[0], : crop[1]]
    return mask_logits


def _out_size(mask_logits: torch.Tensor, size: Sequence[int] | None, crop: Sequence[int] | None) -> tuple[int, int]:
    h, w = (mask_logits.shape[-2:] if size is None else size)
    return (int(h), int(w)) if crop is None else (min(int(h), int(crop[0])), min(int(w), int(crop[1])))


def _chunks(mask_logits: torch.Tensor, size: Sequence[int] | None, crop: Sequence[int] | None):
    """``(start, logits)`` for consecutive chunks of queries, each resized (``B x n x H x W``) with
    ``n * H * W <= CHUNK_ELEMENTS`` (at least one query)."""
    h, w = _out_size(mask_logits, size, crop)
    step = max(1, CHUNK_ELEMENTS // max(1, h * w))
    for start in range(0, mask_logits.shape[1], step):
        part = mask_logits[:, start: start + step]
        out = _upsample(part, size, crop)
        yield start, (out.clone() if out.data_ptr() == part.data_ptr() else out)  # the merges work in place


def semantic_merge(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                   size: Sequence[int] | None = None, *, crop: Sequence[int] | None = None) -> torch.Tensor:
    """Per-class scores ``B x C x H x W``: ``sum_q softmax(class_q)[c] * sigmoid(mask_q)``, no-object
    left out; their argmax over ``C`` is the semantic map. ``size`` resizes the mask logits first and
    ``crop`` then keeps their top-left ``crop`` pixels; the sum runs over chunks of queries, so no
    ``Q x H x W`` tensor is made."""
    probs = class_logits.float().softmax(-1)[..., :-1]  # (B, Q, C)
    b, _, c = probs.shape
    h, w = _out_size(mask_logits, size, crop)
    out = probs.new_zeros(b, c, h * w)
    for start, logits in _chunks(mask_logits, size, crop):
        part = probs[:, start: start + logits.shape[1]].transpose(1, 2)  # (B, C, n)
        out.baddbmm_(part, logits.sigmoid_().flatten(2))
    return out.view(b, c, h, w)


def _mask_scores(mask_logits: torch.Tensor, size: Sequence[int] | None, crop: Sequence[int] | None) -> torch.Tensor:
    """Each query's mean mask probability over its own pixels (``logit > 0``), ``B x Q``."""
    scores = []
    for _, logits in _chunks(mask_logits, size, crop):
        binary = (logits > 0).flatten(2)
        masks = logits.sigmoid_().flatten(2)
        scores.append((masks * binary).sum(-1) / (binary.sum(-1) + 1e-6))
    return torch.cat(scores, 1)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight ``xyxy`` boxes (pixel edges: ``x2 = last column + 1``) of boolean masks ``... x H x W``;
    an empty mask's box is all zeros."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)  # (..., H), (..., W)
    y1 = rows.float().argmax(-1)
    y2 = h - rows.flip(-1).float().argmax(-1)
    x1 = cols.float().argmax(-1)
    x2 = w - cols.flip(-1).float().argmax(-1)
    boxes = torch.stack([x1, y1, x2, y2], -1).float()
    return boxes * rows.any(-1, keepdim=True)


def instance_merge(class_logits: torch.Tensor, mask_logits: torch.Tensor, topk: int | None = None,
                   thing_classes: torch.Tensor | None = None, size: Sequence[int] | None = None, *,
                   crop: Sequence[int] | None = None) -> list[dict]:
    """Instances from the ``topk`` best (query, class) pairs of each image (default ``Q``): the score
    of a pair is its class probability times its mask's mean probability over the mask's pixels
    (``mask_logit > 0``). With ``thing_classes`` (a ``C`` bool tensor, panoptic models) pairs of
    stuff classes are dropped after the top-k, as the paper does. ``size`` and ``crop`` as
    :func:`semantic_merge`.

    The pairs are chosen and scored before any mask is kept at full resolution: the mask scores are
    measured a chunk of queries at a time, and only the kept pairs' masks are resized for the output.

    Returns one dict per image, best first: ``boxes`` (``K x 4`` xyxy of the mask), ``scores``
    (``K``), ``labels`` (``K``, int64) and ``masks`` (``K x H x W`` float probabilities)."""
    b, q, c1 = class_logits.shape
    c = c1 - 1
    k = q if topk is None else min(int(topk), q * c)
    probs = class_logits.float().softmax(-1)[..., :-1].flatten(1)  # (B, Q * C)
    cls_scores, idx = probs.topk(k, dim=1)  # sorted, (B, k)
    labels, query = idx % c, idx // c
    scores = cls_scores * _mask_scores(mask_logits, size, crop).gather(1, query)
    order = scores.argsort(dim=1, descending=True, stable=True)
    scores, labels, query = scores.gather(1, order), labels.gather(1, order), query.gather(1, order)
    if thing_classes is None:
        keep = [slice(None)] * b
    else:
        things = thing_classes.to(labels.device)[labels]  # (B, k)
        keep = [things[i] for i in range(b)]
    results = []
    for i in range(b):  # only the kept pairs' masks at full resolution
        masks = _upsample(mask_logits[i: i + 1, query[i][keep[i]]], size, crop)[0]  # a copy (indexed)
        masks = masks.sigmoid_() if masks.is_contiguous() else masks.sigmoid()
        results.append({"boxes": mask_boxes(masks > 0.5), "scores": scores[i][keep[i]],
                        "labels": labels[i][keep[i]], "masks": masks})
    return results


def panoptic_merge(class_logits: torch.Tensor, mask_logits: torch.Tensor, thing_classes: torch.Tensor, *,
                   score_thresh: float = 0.8, overlap_thresh: float = 0.8, mask_thresh: float = 0.5,
                   size: Sequence[int] | None = None, crop: Sequence[int] | None = None) -> list[dict]:
    """The paper's panoptic merge. Queries whose best class is an object with probability
    ``> score_thresh`` are kept; each pixel goes to the kept query with the largest
    ``class probability * mask probability``; a query becomes a segment when it wins pixels
    where its own mask probability is ``>= mask_thresh`` and the pixels it wins are at least
    ``overlap_thresh`` of its own mask (``mask probability >= mask_thresh``); its segment is
    those won pixels. Segments of one stuff class are fused into the first (in query order);
    things never are. Ids count from 1 in query order; pixels of no segment are 0 (void).
    ``size`` and ``crop`` as :func:`semantic_merge`; the winners are found a chunk of queries at a
    time (a running maximum), so no ``Q x H x W`` tensor is made.

    Args:
        thing_classes: a ``C`` bool tensor, True for thing classes.

    Returns one dict per image: ``segments`` (``H x W`` int32) and ``segments_info``, one dict per
    segment in id order: ``id``, ``category`` (0-based class), ``is_thing``, ``score`` (class
    probability of the segment's first query) and ``area`` (pixels) — the form
    :class:`~segzoo.metrics.panoptic.PanopticQuality` and the COCO-panoptic writer take."""
    b, q, c1 = class_logits.shape
    c = c1 - 1
    thing_classes = torch.as_tensor(thing_classes, dtype=torch.bool, device=class_logits.device)
    if thing_classes.shape != (c,):
        raise ValueError(f"thing_classes must hold one bool per class ({c}), got shape {tuple(thing_classes.shape)}")
    scores, labels = class_logits.float().softmax(-1).max(-1)  # (B, Q)
    keep = (labels != c) & (scores > score_thresh)
    h, w = _out_size(mask_logits, size, crop)
    best = class_logits.new_full((b, h, w), float("-inf"), dtype=torch.float32)  # running maximum over queries
    winner = torch.zeros(b, h, w, dtype=torch.int64, device=class_logits.device)
    winner_prob = torch.zeros(b, h, w, device=class_logits.device)  # the winner's own mask probability
    area = []
    for start, logits in _chunks(mask_logits, size, crop):
        n = logits.shape[1]
        probs = logits.sigmoid_()  # (B, n, H, W)
        area.append((probs >= mask_thresh).flatten(2).sum(-1).float())
        weighted = torch.where(keep[:, start: start + n, None, None], scores[:, start: start + n, None, None] * probs,
                               -1.0)
        top = weighted.argmax(1, keepdim=True)  # the first maximum, as argmax over every query
        value = weighted.gather(1, top)[:, 0]
        better = value > best  # strictly: an earlier query keeps a tie
        best = torch.where(better, value, best)
        winner = torch.where(better, top[:, 0] + start, winner)
        winner_prob = torch.where(better, probs.gather(1, top)[:, 0], winner_prob)
    area = torch.cat(area, 1)  # (B, Q): each query's own mask (probability >= mask_thresh)
    own = winner_prob >= mask_thresh  # the winner's own mask covers the pixel
    flat = winner.flatten(1)
    won = torch.zeros(b, q, device=flat.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    won_own = torch.zeros(b, q, device=flat.device).scatter_add_(1, flat, own.flatten(1).float())
    ok = keep & (won > 0) & (area > 0) & (won_own > 0) & (won / area.clamp(min=1) >= overlap_thresh)
    # stuff fusion: a stuff segment joins the first earlier ok query of its class
    stuff = ~thing_classes[labels.clamp(max=c - 1)]
    earlier = torch.ones(q, q, dtype=torch.bool, device=flat.device).tril(-1)  # [q, q'] = q' < q
    same = (labels[:, :, None] == labels[:, None, :]) & earlier & ok[:, None, :]  # (B, Q, Q')
    fused = ok & stuff & same.any(-1)
    new = ok & ~fused
    ids = new.long().cumsum(1) * new  # (B, Q): ids 1, 2, ... of the new segments
    first = same.float().argmax(-1)  # the earliest same-class ok query
    ids = torch.where(fused, ids.gather(1, first), ids)
    segments = (ids.gather(1, flat).view_as(winner) * own).int()  # (B, H, W)
    seg_area = torch.zeros(b, q + 1, device=flat.device).scatter_add_(
        1, segments.flatten(1).long(), torch.ones_like(flat, dtype=torch.float32))[:, 1:]  # area of id j at j - 1
    # one host copy: per query, is it new, its label and score; per id, its area
    table = torch.stack([new.float(), labels.float(), scores, seg_area], -1).cpu().tolist()
    things = thing_classes.tolist()
    results = []
    for i in range(b):
        rows = [(lab, sc) for n, lab, sc, _ in table[i] if n]
        info = [{"id": j, "category": int(lab), "is_thing": things[int(lab)], "score": sc,
                 "area": int(table[i][j - 1][3])} for j, (lab, sc) in enumerate(rows, start=1)]
        results.append({"segments": segments[i], "segments_info": info})
    return results
