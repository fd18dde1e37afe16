"""Mask2Former's training loss (Cheng et al., "Masked-attention Mask Transformer for Universal
Image Segmentation", CVPR 2022, section 3.2.4 and appendix).

For each decoder layer's predictions (the last layer's and, with deep supervision, every
earlier one's), queries are matched to targets (:class:`~segzoo.setpred.HungarianMatcher`) and

- ``loss_class``: cross-entropy of every query's class, the unmatched ones' target being "no
  object" (the last class) with weight ``no_object_weight`` (0.1) in the weighted mean;
- ``loss_mask``: sigmoid BCE of the matched masks on ``num_points`` points per mask, importance
  sampled (:func:`~segzoo.setpred.uncertain_points`: oversample 3, 75 % most uncertain);
- ``loss_dice``: Dice loss on the same points;

both mask terms summed over masks and divided by the batch's number of target masks (averaged
over processes under ``torch.distributed``, at least 1). Everything is computed in float32 with
autocast off, whatever the dtype of the logits (mmdet #10909, #8155: half-precision point BCE and
Dice overflow).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from segzoo.setpred.matcher import HungarianMatcher, _check_targets, pad_target_masks
from segzoo.setpred.points import point_sample, uncertain_points


def _num_masks(sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    n = torch.tensor(float(sum(sizes)), device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return n.clamp(min=1)


class SetCriterion(nn.Module):
    """The matched class + mask losses above, with deep supervision.

    ``criterion(class_logits, mask_logits, targets, aux=())``: ``class_logits`` ``B x Q x (C + 1)``,
    ``mask_logits`` ``B x Q x h x w`` (the last decoder layer), ``targets`` one dict per image
    (``labels`` K, ``masks`` K x H x W; ``H x W`` need not equal ``h x w``: points are sampled in
    normalised coordinates, the targets of a batch padded at the bottom right to its largest size)
    and ``aux`` the earlier layers' ``(class_logits, mask_logits)`` pairs; ``canvas`` is the
    ``(H, W)`` of the padded input batch the mask logits cover (default: the largest target). Returns
    ``loss_class``, ``loss_mask``, ``loss_dice`` (last layer), ``loss_class_{i}``, ... for
    ``aux[i]``, all unweighted, and ``loss``: their sum weighted by ``class_weight``,
    ``mask_weight``, ``dice_weight``.

    Random draws, in order: for the last layer then each ``aux`` layer, the matcher's points
    then the loss's points (:func:`~segzoo.setpred.uncertain_points`).
    """

    def __init__(self, num_classes: int, *, class_weight: float = 2.0, mask_weight: float = 5.0,
                 dice_weight: float = 5.0, no_object_weight: float = 0.1, num_points: int = 12544,
                 oversample_ratio: float = 3.0, importance_sample_ratio: float = 0.75,
                 matcher: HungarianMatcher | None = None, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0 <= importance_sample_ratio <= 1 or oversample_ratio < 1:
            raise ValueError(f"need oversample_ratio >= 1 and importance_sample_ratio in [0, 1], got "
                             f"{oversample_ratio} and {importance_sample_ratio}")
        self.num_classes = int(num_classes)
        self.weights = {"loss_class": float(class_weight), "loss_mask": float(mask_weight),
                        "loss_dice": float(dice_weight)}
        self.num_points = int(num_points)
        self.oversample_ratio = float(oversample_ratio)
        self.importance_sample_ratio = float(importance_sample_ratio)
        self.generator = generator
        self.matcher = matcher if matcher is not None else HungarianMatcher(
            class_weight, mask_weight, dice_weight, num_points=num_points, generator=generator)
        class_w = torch.ones(num_classes + 1)
        class_w[-1] = no_object_weight
        self.register_buffer("class_weights", class_w, persistent=False)

    def forward(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, targets: Sequence[dict],
                aux: Sequence[tuple[torch.Tensor, torch.Tensor]] = (),
                canvas: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
        if class_logits.dim() != 3 or class_logits.shape[-1] != self.num_classes + 1:
            raise ValueError(f"class_logits must be B x Q x (num_classes + 1) = B x Q x {self.num_classes + 1}, "
                             f"got {tuple(class_logits.shape)}")
        _check_targets(targets, class_logits.shape[0])
        device = class_logits.device
        masks, labels, sizes = pad_target_masks(targets, device, canvas)
        if any(sizes):  # one host sync per batch: labels must name a class
            lo, hi = torch.aminmax(torch.cat([t["labels"].reshape(-1).to(device) for t in targets]))
            lo, hi = torch.stack([lo, hi]).tolist()
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"target labels span [{lo}, {hi}] but num_classes={self.num_classes}; labels are "
                                 f"0-based object classes (no-object is implicit)")
        num_masks = _num_masks(sizes, device)
        losses: dict[str, torch.Tensor] = {}
        total = class_logits.new_zeros((), dtype=torch.float32)
        layers = [(class_logits, mask_logits, "")] + [(c, m, f"_{i}") for i, (c, m) in enumerate(aux)]
        with torch.autocast(device.type, enabled=False):
            for cls, msk, suffix in layers:
                cls, msk = cls.float(), msk.float()
                indices = self.matcher.match(cls, msk, masks, labels, sizes)
                src_b, src_q, tgt_k = self._flat(indices, device)
                layer = self.mask_losses(msk, masks, src_b, src_q, tgt_k, num_masks)
                layer["loss_class"] = self.class_loss(cls, labels, src_b, src_q, tgt_k)
                for name, value in layer.items():
                    losses[name + suffix] = value
                    total = total + self.weights[name] * value
        losses["loss"] = total
        return losses

    @staticmethod
    def _flat(indices: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device):
        """(image, query, target) index vectors of every matched pair of the batch."""
        b = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
        q = torch.cat([q for q, _ in indices]).to(device)
        k = torch.cat([k for _, k in indices]).to(device)
        return b, q, k

    def class_loss(self, class_logits: torch.Tensor, labels: torch.Tensor, src_b: torch.Tensor,
                   src_q: torch.Tensor, tgt_k: torch.Tensor) -> torch.Tensor:
        """Weighted cross-entropy over every query; unmatched queries' target is no-object."""
        target = torch.full(class_logits.shape[:2], self.num_classes, dtype=torch.int64, device=class_logits.device)
        target[src_b, src_q] = labels[src_b, tgt_k]
        return F.cross_entropy(class_logits.transpose(1, 2), target, weight=self.class_weights)

    def mask_losses(self, mask_logits: torch.Tensor, target_masks: torch.Tensor, src_b: torch.Tensor,
                    src_q: torch.Tensor, tgt_k: torch.Tensor, num_masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Point-sampled BCE and Dice of the matched masks, each summed over masks / ``num_masks``."""
        pred = mask_logits[src_b, src_q][:, None]  # (M, 1, h, w)
        if pred.shape[0] == 0:  # no target in the batch: zero, with a graph
            zero = mask_logits.sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero.clone()}
        with torch.no_grad():
            coords = uncertain_points(pred, self.num_points, self.oversample_ratio, self.importance_sample_ratio,
                                      generator=self.generator)  # (M, P, 2)
            point_labels = point_sample(target_masks[src_b, tgt_k][:, None], coords)[:, 0]  # (M, P)
        point_logits = point_sample(pred, coords)[:, 0]  # (M, P)
        bce = F.binary_cross_entropy_with_logits(point_logits, point_labels, reduction="none").mean(1)
        prob = point_logits.sigmoid()
        dice = 1 - (2 * (prob * point_labels).sum(-1) + 1) / (prob.sum(-1) + point_labels.sum(-1) + 1)
        return {"loss_mask": bce.sum() / num_masks, "loss_dice": dice.sum() / num_masks}
