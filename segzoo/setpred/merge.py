"""Inference merges of a set of (class, mask) predictions (Mask2Former, Cheng et al. 2022; the
rules of its official ``semantic_inference``, ``instance_inference`` and ``panoptic_inference``).

Each takes ``class_logits`` ``B x Q x (C + 1)`` (last column: no object) and ``mask_logits``
``B x Q x h x w``; ``size=(H, W)`` first resizes the mask logits bilinearly (the paper resizes to
the image before merging) and ``crop=(h', w')`` then keeps their top-left pixels (an image inside
a padded batch). Batched over images and queries: no Python loop over pixels, queries or
segments; the instance and panoptic merges copy one small table to the host per batch.

Memory: no merge holds every query's mask at full resolution. The mask logits are resized a chunk
of queries at a time (at most :data:`CHUNK_ELEMENTS` floats per image) and each chunk is folded
into what the merges keep: the semantic sum, the panoptic running winner of each pixel, each
query's mask score and area. The instance merge chooses its top-k pairs from those scores and
resizes only the kept pairs' masks. :func:`merge_all` makes the three merges in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Full-resolution floats one chunk holds per image (``queries x H x W``): 64 queries at 1024 x 1024.
CHUNK_ELEMENTS = 1 << 26


def _upsample(mask_logits: torch.Tensor, size: Sequence[int] | None, crop: Sequence[int] | None) -> torch.Tensor:
    """Float32 mask logits resized (bilinear) to ``size`` (``None``: as they are), then their top-left
    ``crop`` kept, as a new contiguous tensor (the merges work on it in place)."""
    out = mask_logits.float()
    if out.numel() == 0:  # no query (or no kept pair): interpolate refuses empty tensors
        return out.new_zeros(*out.shape[:-2], *_out_size(out, size, crop))
    if size is not None and tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
    if crop is not None and tuple(out.shape[-2:]) != tuple(crop):
        out = out[..., : crop[0], : crop[1]]
    return out.clone() if out.data_ptr() == mask_logits.data_ptr() else out.contiguous()


def _out_size(mask_logits: torch.Tensor, size: Sequence[int] | None, crop: Sequence[int] | None) -> tuple[int, int]:
    h, w = (mask_logits.shape[-2:] if size is None else size)
    return (int(h), int(w)) if crop is None else (min(int(h), int(crop[0])), min(int(w), int(crop[1])))


def _stream(mask_logits: torch.Tensor, size: Sequence[int] | None, crop: Sequence[int] | None,
            folds: Sequence, binary: bool = False) -> None:
    """Resize consecutive chunks of queries (``n * H * W <= CHUNK_ELEMENTS``, at least one query) and
    call each ``fold(start, probs, positive)``: ``probs`` the chunk's sigmoid ``B x n x H x W``,
    ``positive`` its ``logit > 0`` (with ``binary``, else None)."""
    h, w = _out_size(mask_logits, size, crop)
    step = max(1, CHUNK_ELEMENTS // max(1, h * w))
    for start in range(0, mask_logits.shape[1], step):
        logits = _upsample(mask_logits[:, start: start + step], size, crop)
        positive = logits > 0 if binary else None
        probs = logits.sigmoid_()
        for fold in folds:
            fold(start, probs, positive)


class _SemanticSum:
    """``sum_q softmax(class_q)[c] * sigmoid(mask_q)``, no-object left out, a chunk at a time."""

    def __init__(self, class_logits: torch.Tensor, hw: tuple[int, int]) -> None:
        self.probs = class_logits.float().softmax(-1)[..., :-1]  # (B, Q, C)
        b, _, c = self.probs.shape
        self.hw = hw
        self.out = self.probs.new_zeros(b, c, hw[0] * hw[1])

    def __call__(self, start: int, probs: torch.Tensor, positive) -> None:
        part = self.probs[:, start: start + probs.shape[1]].transpose(1, 2)  # (B, C, n)
        self.out.baddbmm_(part, probs.flatten(2))

    def result(self) -> torch.Tensor:
        return self.out.view(*self.out.shape[:2], *self.hw)


class _MaskScores:
    """Each query's mean mask probability over its own pixels (``logit > 0``), ``B x Q``."""

    def __init__(self, batch: int) -> None:
        self.parts: list[torch.Tensor] = []
        self.batch = batch

    def __call__(self, start: int, probs: torch.Tensor, positive: torch.Tensor) -> None:
        fg = positive.flatten(2)
        self.parts.append((probs.flatten(2) * fg).sum(-1) / (fg.sum(-1) + 1e-6))

    def result(self) -> torch.Tensor:
        return torch.cat(self.parts, 1) if self.parts else torch.zeros(self.batch, 0)


class _Winners:
    """The panoptic merge's per-pixel winner (the kept query with the largest class probability x mask
    probability, the first on ties), its own mask probability, and each query's area
    (``probability >= mask_thresh``), as running values over the chunks."""

    def __init__(self, class_logits: torch.Tensor, hw: tuple[int, int], score_thresh: float,
                 mask_thresh: float) -> None:
        b, _, c1 = class_logits.shape
        self.scores, self.labels = class_logits.float().softmax(-1).max(-1)  # (B, Q)
        self.keep = (self.labels != c1 - 1) & (self.scores > score_thresh)
        self.mask_thresh = mask_thresh
        dev = class_logits.device
        self.best = torch.full((b, *hw), float("-inf"), device=dev)
        self.winner = torch.zeros(b, *hw, dtype=torch.int64, device=dev)
        self.winner_prob = torch.zeros(b, *hw, device=dev)
        self.areas: list[torch.Tensor] = []

    def __call__(self, start: int, probs: torch.Tensor, positive) -> None:
        n = probs.shape[1]
        self.areas.append((probs >= self.mask_thresh).flatten(2).sum(-1).float())
        keep, scores = self.keep[:, start: start + n, None, None], self.scores[:, start: start + n, None, None]
        weighted = torch.where(keep, scores * probs, -1.0)
        top = weighted.argmax(1, keepdim=True)  # the first maximum of the chunk
        value = weighted.gather(1, top)[:, 0]
        better = value > self.best  # strictly: an earlier chunk keeps a tie
        self.best = torch.where(better, value, self.best)
        self.winner = torch.where(better, top[:, 0] + start, self.winner)
        self.winner_prob = torch.where(better, probs.gather(1, top)[:, 0], self.winner_prob)


def semantic_merge(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                   size: Sequence[int] | None = None, *, crop: Sequence[int] | None = None) -> torch.Tensor:
    """Per-class scores ``B x C x H x W``: ``sum_q softmax(class_q)[c] * sigmoid(mask_q)``, no-object
    left out; their argmax over ``C`` is the semantic map. The sum runs over chunks of queries (the
    module docstring), equal to the sum over every query at once up to float rounding."""
    fold = _SemanticSum(class_logits, _out_size(mask_logits, size, crop))
    _stream(mask_logits, size, crop, [fold])
    return fold.result()


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
    stuff classes are dropped after the top-k, as the paper does. The pairs are chosen and scored
    before any mask is kept at full resolution; only the kept pairs' masks are resized for the output.

    Returns one dict per image, best first: ``boxes`` (``K x 4`` xyxy of the mask), ``scores``
    (``K``), ``labels`` (``K``, int64) and ``masks`` (``K x H x W`` float probabilities)."""
    fold = _MaskScores(class_logits.shape[0])
    _stream(mask_logits, size, crop, [fold], binary=True)
    return _instances(class_logits, mask_logits, fold.result(), topk=topk, thing_classes=thing_classes, size=size,
                      crop=crop)


def _instances(class_logits, mask_logits, mask_scores, *, topk, thing_classes, size, crop) -> list[dict]:
    b, q, c1 = class_logits.shape
    c = c1 - 1
    k = q if topk is None else min(int(topk), q * c)
    probs = class_logits.float().softmax(-1)[..., :-1].flatten(1)  # (B, Q * C)
    cls_scores, idx = probs.topk(k, dim=1)  # sorted, (B, k)
    labels, query = idx % c, idx // c
    scores = cls_scores * mask_scores.gather(1, query)
    order = scores.argsort(dim=1, descending=True, stable=True)
    scores, labels, query = scores.gather(1, order), labels.gather(1, order), query.gather(1, order)
    if thing_classes is None:
        keep = [slice(None)] * b
    else:
        things = torch.as_tensor(thing_classes, dtype=torch.bool).to(labels.device)[labels]  # (B, k)
        keep = [things[i] for i in range(b)]
    results = []
    for i in range(b):  # only the kept pairs' masks at full resolution
        masks = _upsample(mask_logits[i: i + 1, query[i][keep[i]]], size, crop)[0].sigmoid_()
        results.append({"boxes": mask_boxes(masks > 0.5), "scores": scores[i][keep[i]],
                        "labels": labels[i][keep[i]], "masks": masks})
    return results


def _check_things(thing_classes, class_logits: torch.Tensor) -> torch.Tensor:
    c = class_logits.shape[-1] - 1
    thing_classes = torch.as_tensor(thing_classes, dtype=torch.bool, device=class_logits.device)
    if thing_classes.shape != (c,):
        raise ValueError(f"thing_classes must hold one bool per class ({c}), got shape {tuple(thing_classes.shape)}")
    return thing_classes


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

    Args:
        thing_classes: a ``C`` bool tensor, True for thing classes.

    Returns one dict per image: ``segments`` (``H x W`` int32) and ``segments_info``, one dict per
    segment in id order: ``id``, ``category`` (0-based class), ``is_thing``, ``score`` (class
    probability of the segment's first query) and ``area`` (pixels) — the form
    :class:`~segzoo.metrics.panoptic.PanopticQuality` and the COCO-panoptic writer take."""
    thing_classes = _check_things(thing_classes, class_logits)
    fold = _Winners(class_logits, _out_size(mask_logits, size, crop), score_thresh, mask_thresh)
    _stream(mask_logits, size, crop, [fold])
    return _panoptic(fold, thing_classes, overlap_thresh)


def merge_all(class_logits: torch.Tensor, mask_logits: torch.Tensor, thing_classes: torch.Tensor, *,
              topk: int | None = None, instance_things: bool = False, score_thresh: float = 0.8,
              overlap_thresh: float = 0.8, mask_thresh: float = 0.5, size: Sequence[int] | None = None,
              crop: Sequence[int] | None = None) -> tuple[torch.Tensor, list[dict], list[dict]]:
    """:func:`semantic_merge`, :func:`instance_merge` (``thing_classes`` applied when
    ``instance_things``) and :func:`panoptic_merge` from one pass over the resized masks (each chunk
    resized once): ``(sem_seg, instances, panoptic)``, equal to the three calls."""
    thing_classes = _check_things(thing_classes, class_logits)
    hw = _out_size(mask_logits, size, crop)
    sem, scores = _SemanticSum(class_logits, hw), _MaskScores(class_logits.shape[0])
    winners = _Winners(class_logits, hw, score_thresh, mask_thresh)
    _stream(mask_logits, size, crop, [sem, scores, winners], binary=True)
    inst = _instances(class_logits, mask_logits, scores.result(), topk=topk,
                      thing_classes=thing_classes if instance_things else None, size=size, crop=crop)
    return sem.result(), inst, _panoptic(winners, thing_classes, overlap_thresh)


def _panoptic(fold: _Winners, thing_classes: torch.Tensor, overlap_thresh: float) -> list[dict]:
    """Segments and their table from the winners (the rules of :func:`panoptic_merge`)."""
    keep, scores, labels, winner = fold.keep, fold.scores, fold.labels, fold.winner
    b, q = keep.shape
    c = thing_classes.shape[0]
    area = torch.cat(fold.areas, 1) if fold.areas else torch.zeros(b, 0)  # (B, Q): each query's own mask
    own = fold.winner_prob >= fold.mask_thresh  # the winner's own mask covers the pixel
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
