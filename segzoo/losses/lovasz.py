"""Lovasz losses (Berman, Rannen Triki and Blaschko, CVPR 2018): convex surrogates of the Jaccard index.

The Lovasz extension of the Jaccard loss of one class is ``dot(sort(errors, descending), g)``
where ``g`` is the discrete gradient of ``1 - IoU`` along the sorted pixels (the paper's
Algorithm 1). Both losses here compute it for every class at once: the pixels' errors are
sorted per row of a ``classes x pixels`` matrix (the batch's labelled pixels; per image, ignored
pixels sort last and count nothing), so there is no Python loop over classes or images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from segzoo.losses.core import class_mean, valid_onehot


def _lovasz_rows(errors: torch.Tensor, fg: torch.Tensor, valid: torch.Tensor | None, hinge: bool) -> torch.Tensor:
    """The Lovasz extension of each row: errors and foreground (and labelled masks, or None when every
    pixel counts) are ``R x P``; returns ``R``.

    ``hinge``: the errors are margins' hinge errors (any real, ReLU'd after sorting as in the paper);
    otherwise they are absolute errors in [0, 1].
    """
    if valid is not None:
        errors = torch.where(valid, errors, torch.full_like(errors, -torch.inf))  # ignored pixels sort last
    err, perm = errors.sort(dim=1, descending=True)
    fg_sorted = fg.gather(1, perm)
    gts = fg_sorted.sum(1, keepdim=True)
    if valid is None:
        union = gts + (1 - fg_sorted).cumsum(1)
    else:
        valid_sorted = valid.gather(1, perm)
        fg_sorted = fg_sorted * valid_sorted
        union = gts + (valid_sorted.float() - fg_sorted).cumsum(1)
        err = torch.where(valid_sorted, err, torch.zeros_like(err))  # -inf -> 0: no value, no gradient
    inter = gts - fg_sorted.cumsum(1)
    jaccard = 1 - inter / union.clamp(min=torch.finfo(torch.float32).eps)
    grad = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], 1)  # (R, P)
    if hinge:
        err = F.relu(err)
    return (err * grad).sum(1)


def _rows(t: torch.Tensor, per_image: bool, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``N x C x H x W`` -> ``C x (N*H*W)`` rows, only the ``keep`` columns when given (``(N*C) x (H*W)``
    with ``per_image``)."""
    if per_image:
        return t.flatten(2).flatten(0, 1)
    rows = t.transpose(0, 1).flatten(1)
    return rows if keep is None else rows[:, keep]


def _reduce(per: torch.Tensor, present: torch.Tensor, classes: str,
            weight: Sequence[float] | torch.Tensor | None, per_image: bool) -> torch.Tensor:
    """Mean over the classes (all, or those present) and, with ``per_image``, over the labelled images."""
    counted = present if classes == "present" else torch.ones_like(present)
    if not per_image:
        return class_mean(per, weight, counted)
    per_img = class_mean(per, weight, counted)  # (N,)
    has = counted.any(1).float()
    return (per_img * has).sum() / has.sum().clamp(min=1)


def _check(classes: str) -> None:
    if classes not in ("present", "all"):
        raise ValueError(f"lovasz classes must be 'present' or 'all', got {classes!r}")


def lovasz_softmax(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
                   weight: Sequence[float] | torch.Tensor | None = None, classes: str = "present",
                   per_image: bool = False) -> torch.Tensor:
    """Lovasz-softmax loss: the Jaccard surrogate of each class on ``|onehot - softmax|`` errors.

    Args:
        classes: ``present`` averages the classes that occur in the labelled targets (the paper's
            and smp's default), ``all`` every class.
        per_image: one loss per image, averaged over the images that have labelled pixels,
            instead of one over the whole batch.
        weight: class weights of the average over classes.
    """
    _check(classes)
    valid, onehot = valid_onehot(logits, targets, ignore_index)
    probs = logits.float().softmax(1)
    keep = None if per_image else valid.flatten()  # the batch's labelled pixels: (N*H*W,)
    fg = _rows(onehot, per_image, keep)
    v = _rows(valid[:, None].expand_as(probs), per_image) if per_image else None
    per = _lovasz_rows((fg - _rows(probs, per_image, keep)).abs(), fg, v, hinge=False)
    present = fg.sum(-1) > 0
    c = logits.shape[1]
    if per_image:
        per, present = per.view(-1, c), present.view(-1, c)
    return _reduce(per, present, classes, weight, per_image)


def lovasz_hinge(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
                 weight: Sequence[float] | torch.Tensor | None = None, classes: str = "present",
                 per_image: bool = False) -> torch.Tensor:
    """Lovasz hinge loss: the Jaccard surrogate on the hinge errors ``1 - m * s`` of pixel margins.

    With one channel (a binary, sigmoid model) the margin is the logit and the targets are 0/1,
    the paper's binary hinge. With ``C >= 2`` channels it is applied one-vs-rest: class ``c``'s
    margin is ``l_c - max_{k != c} l_k`` (positive where ``c`` wins the argmax) with sign
    ``s = +1`` on its pixels and ``-1`` elsewhere, and the classes' losses are averaged as in
    :func:`lovasz_softmax`; with two classes, class 1's term is the binary hinge on ``l_1 - l_0``.
    """
    _check(classes)
    if logits.shape[1] == 1:
        valid = targets != ignore_index
        fg = (torch.where(valid, targets, 0) == 1).float()[:, None]  # (N, 1, H, W)
        margins = logits.float()
    else:
        valid, fg = valid_onehot(logits, targets, ignore_index)
        x = logits.float()
        top2 = x.topk(2, dim=1).values  # (N, 2, H, W)
        best_other = torch.where(x == top2[:, :1], top2[:, 1:], top2[:, :1])  # max over the other classes
        margins = x - best_other
    keep = None if per_image else valid.flatten()
    fg_rows = _rows(fg, per_image, keep)
    v = _rows(valid[:, None].expand_as(margins), per_image) if per_image else None
    per = _lovasz_rows(1 - _rows(margins, per_image, keep) * (2 * fg_rows - 1), fg_rows, v, hinge=True)
    present = fg_rows.sum(-1) > 0
    c = margins.shape[1]
    if per_image:
        per, present = per.view(-1, c), present.view(-1, c)
    if c == 1:
        present = torch.ones_like(present)  # the binary hinge also counts images with no foreground
    return _reduce(per, present, classes, weight, per_image)
