"""Losses for classes that cover few pixels: Tversky, focal-Tversky, boundary-aware Dice and soft BCE.

Same conventions as :mod:`segzoo.losses.core`: logits ``N x C x H x W``, int64 targets
``N x H x W`` with ``ignore_index`` for unlabelled pixels, float32 arithmetic, an optional ``C``
vector of class weights (here: the weights of the average over classes), and 0 with a graph
when nothing is labelled.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from segzoo.losses.core import class_mean, class_weight_tensor, valid_onehot


def _check_smooth(smooth: float) -> None:
    if not smooth >= 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")


def tversky_index(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255, alpha: float = 0.3,
                  beta: float = 0.7, smooth: float = 1.0) -> torch.Tensor:
    """Per-class soft Tversky index ``(TP + s) / (TP + alpha FP + beta FN + s)`` over the batch: ``C``.

    ``TP = sum p_c g_c``, ``FP = sum p_c (1 - g_c)``, ``FN = sum (1 - p_c) g_c`` over the labelled
    pixels, with ``p_c`` the softmax probability of class ``c`` and ``g_c`` its one-hot target.
    """
    if alpha < 0 or beta < 0:
        raise ValueError(f"tversky alpha and beta must be >= 0, got alpha={alpha}, beta={beta}")
    _check_smooth(smooth)
    valid, onehot = valid_onehot(logits, targets, ignore_index)
    probs = logits.float().softmax(1) * valid[:, None]  # (N, C, H, W)
    tp = (probs * onehot).sum((0, 2, 3))
    fp = probs.sum((0, 2, 3)) - tp
    fn = onehot.sum((0, 2, 3)) - tp
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp(min=torch.finfo(torch.float32).eps)


def tversky_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255, alpha: float = 0.3,
                 beta: float = 0.7, smooth: float = 1.0,
                 weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Tversky loss ``mean_c (1 - TI_c)`` (Salehi et al., 2017).

    ``alpha`` weighs the false positives and ``beta`` the false negatives; ``beta > alpha``
    (0.3 / 0.7, the paper's best) trades precision for the recall of small classes, and
    ``alpha = beta = 0.5`` is the soft Dice loss (:func:`dice_loss` with smooth ``2 s``). Every class
    counts, as in :func:`dice_loss`.
    """
    return class_mean(1 - tversky_index(logits, targets, ignore_index, alpha, beta, smooth), weight)


def focal_tversky_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255, alpha: float = 0.3,
                       beta: float = 0.7, gamma: float = 0.75, smooth: float = 1.0,
                       weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Focal Tversky loss ``mean_c (1 - TI_c)^gamma`` (Abraham and Khan, 2019).

    ``gamma`` is the exponent itself: the paper writes ``1/gamma`` with its gamma = 4/3, hence
    0.75 here; ``gamma < 1`` raises the loss of the classes that are already fairly well
    segmented less than that of the hard ones. ``gamma = 1`` is :func:`tversky_loss`.
    """
    if not gamma > 0:
        raise ValueError(f"focal_tversky gamma must be > 0, got {gamma}")
    ti = tversky_index(logits, targets, ignore_index, alpha, beta, smooth)
    return class_mean((1 - ti).clamp(min=0).pow(gamma), weight)


def boundary_band(targets: torch.Tensor, num_classes: int, ignore_index: int = 255, width: int = 3) -> torch.Tensor:
    """``N x H x W`` bool: labelled pixels with a pixel of another class within ``width`` (Chebyshev distance).

    A pixel is on a boundary when the ``(2 width + 1)^2`` window around it holds labels of two
    classes or more; ignored pixels and the image border make no boundary.
    """
    if width < 1:
        raise ValueError(f"boundary width must be >= 1 pixel, got {width}")
    valid = targets != ignore_index
    onehot = F.one_hot(torch.where(valid, targets, 0), num_classes).permute(0, 3, 1, 2) * valid[:, None]
    k = 2 * int(width) + 1
    near = F.max_pool2d(onehot.float(), k, stride=1, padding=int(width))  # (N, C, H, W): class c in the window
    return (near.sum(1) >= 2) & valid


def boundary_dice_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255, width: int = 3,
                       boundary_weight: float = 4.0, smooth: float = 1.0,
                       weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Boundary-aware soft Dice: the Dice loss with each pixel weighted ``1 + boundary_weight`` on the
    class boundaries of the targets (:func:`boundary_band`, ``width`` pixels each side) and 1 elsewhere.

    ``1 - mean_c (2 sum u p_c g_c + s) / (sum u p_c + sum u g_c + s)`` with ``u`` the pixel
    weights; thin structures and object outlines, few pixels of the total, then weigh as much as
    region interiors. ``boundary_weight=0`` is :func:`dice_loss`.
    """
    if not boundary_weight >= 0:
        raise ValueError(f"boundary_weight must be >= 0, got {boundary_weight}")
    _check_smooth(smooth)
    valid, onehot = valid_onehot(logits, targets, ignore_index)
    u = (1 + boundary_weight * boundary_band(targets, logits.shape[1], ignore_index, width).float()) * valid
    probs = logits.float().softmax(1) * u[:, None]  # (N, C, H, W)
    inter = (probs * onehot).sum((0, 2, 3))
    sizes = probs.sum((0, 2, 3)) + (onehot * u[:, None]).sum((0, 2, 3))
    return class_mean(1 - (2 * inter + smooth) / (sizes + smooth), weight)


def soft_bce_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255, smooth_factor: float = 0.0,
                  weight: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy with label smoothing, one sigmoid per channel (one-vs-rest).

    The targets become ``g (1 - e) + (1 - g) e`` (``e = smooth_factor``) of the one-hot labels (a
    one-channel, binary model: the 0/1 labels themselves); the loss is
    ``sum_{pixels, c} w_c BCE / (labelled pixels x sum_c w_c)``, the plain mean over labelled
    pixels and channels without class weights.
    """
    if not 0 <= smooth_factor < 1:
        raise ValueError(f"bce smooth_factor must be in [0, 1), got {smooth_factor}")
    c = logits.shape[1]
    if c == 1:
        valid = targets != ignore_index
        onehot = (torch.where(valid, targets, 0) == 1).float()[:, None]
    else:
        valid, onehot = valid_onehot(logits, targets, ignore_index)
    soft = onehot * (1 - 2 * smooth_factor) + smooth_factor if smooth_factor else onehot
    bce = F.binary_cross_entropy_with_logits(logits.float(), soft, reduction="none")  # (N, C, H, W)
    if weight is None:
        return (bce * valid[:, None]).sum() / (valid.sum() * c).clamp(min=1)
    w = class_weight_tensor(weight, c, logits.device)
    total = (bce * (w[None, :, None, None] * valid[:, None])).sum()
    return total / (valid.sum() * w.sum()).clamp(min=torch.finfo(torch.float32).eps)
