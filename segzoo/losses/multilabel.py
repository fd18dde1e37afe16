"""Losses of the sigmoid label modes (``binary`` and ``multilabel``), smp's ``mode="binary"|"multilabel"``.

A sigmoid model's targets are multi-hot: ``N x C x H x W`` with 1 where a pixel carries class ``c``, 0
where it does not and ``ignore_index`` where it is unlabelled (for that class). A binary model (``C = 1``)
also takes a 0/1 label map ``N x H x W`` (what 0/255 foreground masks become), turned into one channel
by :func:`multi_hot`. Every loss computes in float32 and returns 0, with a graph, when nothing is labelled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from segzoo.losses.core import class_weight_tensor

__all__ = ["multi_hot", "sigmoid_bce_loss", "sigmoid_dice_loss"]


def multi_hot(targets: torch.Tensor, num_channels: int, ignore_index: int = 255) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labelled N x C x H x W bool, 0/1 targets N x C x H x W float32)`` of sigmoid targets.

    ``targets`` is multi-hot ``N x C x H x W`` (any integer dtype), or for ``C = 1`` a 0/1 label map
    ``N x H x W`` (label 1 is the foreground)."""
    if targets.dim() == 3:
        if num_channels != 1:
            raise ValueError(f"a multi-label model with {num_channels} classes needs multi-hot targets N x C x H x W "
                             f"(one 0/1 mask per class), got a label map {tuple(targets.shape)}")
        targets = targets[:, None]
    valid = targets != ignore_index
    return valid, ((targets == 1) & valid).float()


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
                     weight: Sequence[float] | torch.Tensor | None = None,
                     pos_weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy, one sigmoid per channel: ``sum w_c BCE / sum w_c`` over labelled (pixel, class)
    pairs (the plain mean without class weights; ``pos_weight`` as ``F.binary_cross_entropy_with_logits``'s,
    one per class, up-weights the positives of rare classes)."""
    c = logits.shape[1]
    valid, target = multi_hot(targets, c, ignore_index)
    pw = None if pos_weight is None else class_weight_tensor(pos_weight, c, logits.device)[:, None, None]
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none", pos_weight=pw)
    w = valid.float()
    if weight is not None:
        w = w * class_weight_tensor(weight, c, logits.device)[None, :, None, None]
    return (bce * w).sum() / w.sum().clamp(min=torch.finfo(torch.float32).eps)


def sigmoid_dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255, smooth: float = 1.0,
                      weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice per class on sigmoid probabilities over the labelled pixels of the batch,
    ``1 - (2 |P_c G_c| + s) / (|P_c| + |G_c| + s)``, averaged over the classes (with ``weight``)."""
    c = logits.shape[1]
    valid, target = multi_hot(targets, c, ignore_index)
    probs = logits.float().sigmoid() * valid
    inter = (probs * target).sum((0, 2, 3))
    sizes = probs.sum((0, 2, 3)) + target.sum((0, 2, 3))
    per_class = 1 - (2 * inter + smooth) / (sizes + smooth)
    w = torch.ones(c, device=logits.device) if weight is None else class_weight_tensor(weight, c, logits.device)
    return (per_class * w).sum() / w.sum().clamp(min=torch.finfo(torch.float32).eps)
