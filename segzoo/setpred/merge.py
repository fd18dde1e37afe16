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


def _resized(mask_logits: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    mask_logits = mask_logits.float()
    if size is None or tuple(mask_logits.shape[-2:]) == tuple(size):
        return mask_logits
    return F.interpolate(mask_logits, size=tuple(size), mode="bilinear", align_corners=False)


def semantic_merge(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                   size: Sequence[int] | None = None) -> torch.Tensor:
    """Per-class scores ``B x C x H x W``: ``sum_q softmax(class_q)[c] * sigmoid(mask_q)``, no-object
    left out; their argmax over ``C`` is the semantic map."""
    probs = class_logits.float().softmax(-1)[..., :-1]  # (B, Q, C)
    masks = _resized(mask_logits, size).sigmoid()  # (B, Q, H, W)
    return torch.einsum("bqc,bqhw->bchw", probs, masks)


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
                   thing_classes: torch.Tensor | None = None, size: Sequence[int] | None = None) -> list[dict]:
    """Instances from the ``topk`` best (query, class) pairs of each image (default ``Q``): the score
    of a pair is its class probability times its mask's mean probability over the mask's pixels
    (``mask_logit > 0``). With ``thing_classes`` (a ``C`` bool tensor, panoptic models) pairs of
    stuff classes are dropped after the top-k, as the paper does.

    Returns one dict per image, best first: ``boxes`` (``K x 4`` xyxy of the mask), ``scores``
    (``K``), ``labels`` (``K``, int64) and ``masks`` (``K x H x W`` float probabilities)."""
    b, q, c1 = class_logits.shape
    c = c1 - 1
    k = q if topk is None else min(int(topk), q * c)
    probs = class_logits.float().softmax(-1)[..., :-1].flatten(1)  # (B, Q * C)
    cls_scores, idx = probs.topk(k, dim=1)  # sorted, (B, k)
    labels, query = idx % c, idx // c
    logits = _resized(mask_logits, size)
    logits = logits.gather(1, query[..., None, None].expand(b, k, *logits.shape[-2:]))  # (B, k, H, W)
    binary = logits > 0
    masks = logits.sigmoid()
    mask_scores = (masks * binary).flatten(2).sum(-1) / (binary.flatten(2).sum(-1) + 1e-6)
    scores = cls_scores * mask_scores
    order = scores.argsort(dim=1, descending=True, stable=True)
    scores, labels = scores.gather(1, order), labels.gather(1, order)
    masks = masks.gather(1, order[..., None, None].expand_as(masks))
    boxes = mask_boxes(masks > 0.5)
    if thing_classes is None:
        return [{"boxes": boxes[i], "scores": scores[i], "labels": labels[i], "masks": masks[i]} for i in range(b)]
    keep = thing_classes.to(labels.device)[labels]  # (B, k)
    counts = keep.sum(1).tolist()  # host sync
    parts = [torch.split(x[keep], counts) for x in (boxes, scores, labels, masks)]
    return [{"boxes": parts[0][i], "scores": parts[1][i], "labels": parts[2][i], "masks": parts[3][i]}
            for i in range(b)]


def panoptic_merge(class_logits: torch.Tensor, mask_logits: torch.Tensor, thing_classes: torch.Tensor, *,
                   score_thresh: float = 0.8, overlap_thresh: float = 0.8, mask_thresh: float = 0.5,
                   size: Sequence[int] | None = None) -> list[dict]:
    """The paper's panoptic merge. Queries whose best class is an object with probability
    ``> score_thresh`` are kept; each pixel goes to the kept query with the largest
    ``class probability * mask probability``; a query becomes a segment when it wins pixels
    where its own mask probability is ``>= mask_thresh`` and the pixels it wins are at least
    ``overlap_thresh`` of its own mask (``mask probability >= mask_thresh``); its segment is
    those won pixels. Segments of one stuff class are fused into the first (in query order);
    things never are. Ids count from 1 in query order; pixels of no segment are 0 (void).

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
    probs = _resized(mask_logits, size).sigmoid()  # (B, Q, H, W)
    weighted = torch.where(keep[..., None, None], scores[..., None, None] * probs, -1.0)
    winner = weighted.argmax(1)  # (B, H, W): the kept query with the largest weighted probability
    own = probs.gather(1, winner[:, None])[:, 0] >= mask_thresh  # the winner's own mask covers the pixel
    flat = winner.flatten(1)
    won = torch.zeros(b, q, device=probs.device).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float32))
    won_own = torch.zeros(b, q, device=probs.device).scatter_add_(1, flat, own.flatten(1).float())
    area = (probs >= mask_thresh).flatten(2).sum(-1).float()  # (B, Q)
    ok = keep & (won > 0) & (area > 0) & (won_own > 0) & (won / area.clamp(min=1) >= overlap_thresh)
    # stuff fusion: a stuff segment joins the first earlier ok query of its class
    stuff = ~thing_classes[labels.clamp(max=c - 1)]
    earlier = torch.ones(q, q, dtype=torch.bool, device=probs.device).tril(-1)  # [q, q'] = q' < q
    same = (labels[:, :, None] == labels[:, None, :]) & earlier & ok[:, None, :]  # (B, Q, Q')
    fused = ok & stuff & same.any(-1)
    new = ok & ~fused
    ids = new.long().cumsum(1) * new  # (B, Q): ids 1, 2, ... of the new segments
    first = same.float().argmax(-1)  # the earliest same-class ok query
    ids = torch.where(fused, ids.gather(1, first), ids)
    segments = (ids.gather(1, flat).view_as(winner) * own).int()  # (B, H, W)
    seg_area = torch.zeros(b, q + 1, device=probs.device).scatter_add_(
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
