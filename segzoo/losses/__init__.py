"""Semantic segmentation losses (detection losses live with their heads).

Every loss takes logits ``N x C x H x W`` and int64 targets ``N x H x W`` whose pixels equal to
``ignore_index`` do not count, computes in float32 (safe under autocast) and returns 0 (not NaN,
with a graph) when a batch has no labelled pixel. ``weight`` is an optional ``C`` vector of
class weights: per pixel for the cross-entropies, per class (the weights of the average over
classes) for Dice, Tversky, Lovasz and BCE.

- :mod:`~segzoo.losses.core`: cross-entropy (class weights, OHEM), softmax focal, soft Dice
- :mod:`~segzoo.losses.lovasz`: Lovasz-softmax and Lovasz hinge
- :mod:`~segzoo.losses.region`: Tversky, focal-Tversky, boundary-aware Dice, soft BCE
- :mod:`~segzoo.losses.combined`: losses by name, weighted and summed (``model.loss`` in configs)
"""

from segzoo.losses.combined import LOSSES, LossTerm, loss_options, parse_loss, weighted_losses
from segzoo.losses.core import (
    CITYSCAPES_CLASS_WEIGHTS,
    class_weight_tensor,
    cross_entropy,
    dice_loss,
    focal_loss,
    ohem_cross_entropy,
)
from segzoo.losses.lovasz import lovasz_hinge, lovasz_softmax
from segzoo.losses.region import (
    boundary_band,
    boundary_dice_loss,
    focal_tversky_loss,
    soft_bce_loss,
    tversky_index,
    tversky_loss,
)

__all__ = ["CITYSCAPES_CLASS_WEIGHTS", "LOSSES", "LossTerm", "boundary_band", "boundary_dice_loss",
           "class_weight_tensor", "cross_entropy", "dice_loss", "focal_loss", "focal_tversky_loss", "loss_options",
           "lovasz_hinge", "lovasz_softmax", "ohem_cross_entropy", "parse_loss", "soft_bce_loss", "tversky_index",
           "tversky_loss", "weighted_losses"]
