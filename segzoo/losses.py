"""Semantic segmentation losses (detection losses live with their heads).

Both take logits ``N x C x H x W`` and int64 targets ``N x H x W`` whose pixels equal to
``ignore_index`` do not count, and compute in float32 (safe under autocast).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels; 0 (not NaN) when a batch has none."""
    total = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
              smooth: float = 1.0) -> torch.Tensor:
    """Soft multi-class Dice loss: ``1 - mean_c (2 |P_c G_c| + s) / (|P_c| + |G_c| + s)``.

    ``P_c`` are the softmax probabilities of class ``c`` and ``G_c`` its one-hot targets,
    summed over the labelled pixels of the whole batch; every class counts equally, so
    small classes weigh as much as the background (the reason to add it to the
    cross-entropy on unbalanced data). ``smooth`` keeps classes absent from both finite.
    """
    c = logits.shape[1]
    valid = targets != ignore_index  # (N, H, W)
    probs = logits.float().softmax(1) * valid[:, None]  # (N, C, H, W)
    onehot = F.one_hot(torch.where(valid, targets, 0), c).permute(0, 3, 1, 2) * valid[:, None]
    inter = (probs * onehot).sum((0, 2, 3))  # (C,)
    sizes = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))  # (C,)
    return 1 - ((2 * inter + smooth) / (sizes + smooth)).mean()


__all__ = ["cross_entropy", "dice_loss"]
