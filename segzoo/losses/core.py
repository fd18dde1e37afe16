"""The pixel losses: cross-entropy (class weights, OHEM), softmax focal and soft Dice.

Every loss takes logits ``N x C x H x W`` and int64 targets ``N x H x W`` whose pixels equal to
``ignore_index`` do not count, computes in float32 (safe under autocast) and returns 0 (not NaN,
with a graph) when a batch has no labelled pixel. ``weight`` is an optional ``C`` vector of
class weights, as ``torch.nn.functional.cross_entropy``'s.

For binary or multi-label (sigmoid) outputs use :func:`torchvision.ops.sigmoid_focal_loss`;
:func:`focal_loss` here is the softmax (one label per pixel) form.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The Cityscapes class weights of the official HRNet-Semantic-Segmentation code
# (lib/datasets/cityscapes.py), in the order of the 19 train ids.
CITYSCAPES_CLASS_WEIGHTS = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
    0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507,
)


def class_weight_tensor(weight: Sequence[float] | torch.Tensor | None, num_classes: int,
                        device: torch.device | None = None) -> torch.Tensor | None:
    """``weight`` as a float32 ``C`` tensor on ``device``, checked against ``num_classes``
    (and, for a Python sequence, to be finite and >= 0)."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float32, device=device)
    if w.dim() != 1 or w.numel() != num_classes:
        raise ValueError(f"class_weights has {w.numel()} values but the logits have {num_classes} classes; "
                         "give one weight per class (background included)")
    if not isinstance(weight, torch.Tensor):  # values of a Python list: checked without a device sync
        bad = [v for v in weight if not (float(v) >= 0 and float(v) < float("inf"))]
        if bad:
            raise ValueError(f"class_weights must be finite and >= 0, got {list(weight)}")
    return w


def _pixel_losses(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int,
                  weight: torch.Tensor | None) -> torch.Tensor:
    """``w_y * -log p_y`` per pixel, 0 at ignored pixels: ``N x H x W`` float32."""
    w = class_weight_tensor(weight, logits.shape[1], logits.device) if weight is not None else None
    return F.cross_entropy(logits.float(), targets, weight=w, ignore_index=ignore_index, reduction="none")


def valid_onehot(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled ``N x H x W`` bool, one-hot targets ``N x C x H x W`` float32, 0 at ignored pixels)."""
    valid = targets != ignore_index
    onehot = F.one_hot(torch.where(valid, targets, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid[:, None]
    return valid, onehot.float()


def class_mean(per_class: torch.Tensor, weight: Sequence[float] | torch.Tensor | None,
               counted: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_c w_c l_c / sum_c w_c`` over the classes (``counted``: a ``C`` bool mask of those that count);
    0, with a graph, when none counts."""
    w = torch.ones_like(per_class) if weight is None else class_weight_tensor(weight, per_class.shape[-1],
                                                                                per_class.device)
    if counted is not None:
        w = w * counted
    return (per_class * w).sum(-1) / w.sum(-1).clamp(min=torch.finfo(torch.float32).eps)


def _target_weights(targets: torch.Tensor, ignore_index: int, weight: torch.Tensor | None,
                    num_classes: int) -> torch.Tensor:
    """The weight of each pixel's class (1 without class weights), 0 at ignored pixels."""
    valid = targets != ignore_index
    if weight is None:
        return valid.float()
    w = class_weight_tensor(weight, num_classes, targets.device)
    return w[torch.where(valid, targets, 0)] * valid


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
                  weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled pixels.

    With ``weight`` it is ``F.cross_entropy(weight=...)``'s weighted mean,
    ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (the official HRNet code's class-weighted loss).
    """
    if weight is None:
        total = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
        return total / (targets != ignore_index).sum().clamp(min=1)
    losses = _pixel_losses(logits, targets, ignore_index, weight)
    norm = _target_weights(targets, ignore_index, weight, logits.shape[1]).sum()
    return losses.sum() / norm.clamp(min=torch.finfo(torch.float32).eps)


def ohem_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, thresh: float = 0.7,
                       min_kept: int = 100_000, ignore_index: int = 255,
                       weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the hard pixels only (online hard example mining).

    The rule of the official HRNet/OCR ``OhemCrossEntropy``: among the labelled pixels of the
    whole batch, with ``p`` the softmax probability of each pixel's true class, keep those with
    ``p < max(thresh, p_(k))`` where ``p_(k)`` is the ``k``-th smallest ``p`` (0-based) and
    ``k = min(min_kept, labelled - 1)``; so at least ``min_kept`` pixels are kept whenever the
    batch has that many (ties aside), and all pixels with ``p < thresh``. The loss is the plain
    mean of the kept pixels' (class-weighted, ``w_y * -log p_y``) losses. Where the official code
    returns NaN (no pixel kept) this returns 0.

    Args:
        thresh: probability below which a pixel counts as hard (0.7 in the class, 0.9 in the
            official Cityscapes OHEM configs).
        min_kept: the least number of pixels kept per batch (100000; 131072 in the configs).
    """
    if not 0 < thresh <= 1:
        raise ValueError(f"ohem_thresh must be in (0, 1], got {thresh}")
    min_kept = max(1, int(min_kept))
    losses = _pixel_losses(logits, targets, ignore_index, weight).flatten()  # (N*H*W,)
    valid = (targets != ignore_index).flatten()
    with torch.no_grad():
        logp = logits.detach().float().log_softmax(1)
        p = logp.gather(1, torch.where(targets != ignore_index, targets, 0)[:, None]).exp().flatten()
        p = torch.where(valid, p, torch.full_like(p, 2.0))  # ignored pixels sort last
        ranked = p.sort().values
        k = (valid.sum() - 1).clamp(min=0, max=min_kept)  # a tensor: no host sync
        threshold = ranked.gather(0, k.view(1)).clamp(min=thresh)  # (1,)
        keep = valid & (p < threshold)
    return (losses * keep).sum() / keep.sum().clamp(min=1)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, ignore_index: int = 255,
               weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Softmax focal loss ``-(1 - p_y)^gamma log p_y`` averaged like :func:`cross_entropy`.

    Per pixel ``(1 - p_y)^gamma`` scales the cross-entropy, so well-classified pixels count
    less (Lin et al., 2017); ``weight`` plays the role of the per-class ``alpha``. With
    ``gamma=0`` it equals :func:`cross_entropy` with the same ``weight``.
    """
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma}")
    valid = targets != ignore_index
    logp = logits.float().log_softmax(1).gather(1, torch.where(valid, targets, 0)[:, None])[:, 0]  # (N, H, W)
    w = _target_weights(targets, ignore_index, weight, logits.shape[1])  # 0 where ignored
    per_pixel = -(1 - logp.exp()).clamp(min=0).pow(gamma) * logp * w
    norm = w.sum().clamp(min=1) if weight is None else w.sum().clamp(min=torch.finfo(torch.float32).eps)
    return per_pixel.sum() / norm


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
              smooth: float = 1.0, weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Soft multi-class Dice loss: ``1 - mean_c (2 |P_c G_c| + s) / (|P_c| + |G_c| + s)``.

    ``P_c`` are the softmax probabilities of class ``c`` and ``G_c`` its one-hot targets,
    summed over the labelled pixels of the whole batch; every class counts equally, so
    small classes weigh as much as the background (the reason to add it to the
    cross-entropy on unbalanced data). ``smooth`` keeps classes absent from both finite.
    With ``weight`` the classes' losses are averaged with those weights.
    """
    valid, onehot = valid_onehot(logits, targets, ignore_index)
    probs = logits.float().softmax(1) * valid[:, None]  # (N, C, H, W)
    inter = (probs * onehot).sum((0, 2, 3))  # (C,)
    sizes = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))  # (C,)
    return class_mean(1 - (2 * inter + smooth) / (sizes + smooth), weight)


