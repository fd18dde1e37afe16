"""Hungarian matching of predicted (class, mask) pairs to targets (DETR, Carion et al. 2020;
with Mask2Former's point-sampled mask cost, Cheng et al. 2022).

The cost of pairing query ``q`` with target ``k`` is
``cost_class * (-p_q(class_k)) + cost_mask * BCE(q, k) + cost_dice * Dice(q, k)``, the mask terms
on ``num_points`` uniformly drawn points shared by every query and target of an image. The
``B x Q x K`` cost matrices of a batch are computed at once (targets padded to the batch's
largest ``K``) and copied to the host once; ``scipy.optimize.linear_sum_assignment`` then solves
each image's ``Q x K_i`` block.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from segzoo.setpred.points import point_sample


def _check_targets(targets: Sequence[dict], batch: int) -> None:
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images; give one dict per image")
    for i, t in enumerate(targets):
        if "labels" not in t or "masks" not in t:
            raise ValueError(f"targets[{i}] needs 'labels' (K) and 'masks' (K x H x W), got keys {sorted(t)}")
        labels, masks = t["labels"], t["masks"]
        if masks.dim() != 3 or labels.dim() != 1 or len(labels) != len(masks):
            raise ValueError(f"targets[{i}] has labels of shape {tuple(labels.shape)} and masks of shape "
                             f"{tuple(masks.shape)}; expected K and K x H x W with the same K")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"targets[{i}]['labels'] have dtype {labels.dtype}; give integer class indices "
                             "(labels.long())")


def pad_target_masks(targets: Sequence[dict], device: torch.device,
                     canvas: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The batch's target masks as one float32 ``B x Kmax x H x W`` tensor (each image's masks at
    the top left of ``canvas``, by default the largest ``H x W``, zeros elsewhere, as a padded
    image batch), their labels ``B x Kmax`` (0 where padded) and the counts ``K_i``."""
    sizes = [len(t["labels"]) for t in targets]
    h = max(int(t["masks"].shape[-2]) for t in targets)
    w = max(int(t["masks"].shape[-1]) for t in targets)
    if canvas is not None:
        if h > canvas[0] or w > canvas[1]:
            raise ValueError(f"target masks of {h} x {w} do not fit the {canvas[0]} x {canvas[1]} image canvas")
        h, w = int(canvas[0]), int(canvas[1])
    k = max(sizes, default=0)
    masks = torch.zeros(len(targets), k, h, w, device=device)
    labels = torch.zeros(len(targets), k, dtype=torch.int64, device=device)
    for i, t in enumerate(targets):  # one copy per image, not per mask
        m = t["masks"]
        masks[i, : m.shape[0], : m.shape[1], : m.shape[2]] = m.to(device=device, dtype=torch.float32)
        labels[i, : len(t["labels"])] = t["labels"].to(device)
    return masks, labels, sizes


def pairwise_mask_costs(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid-BCE and Dice costs of every (query, target) pair from point logits ``pred``
    (``B x Q x P``) and point labels ``target`` (``B x K x P``): two ``B x Q x K`` tensors."""
    p = pred.shape[-1]
    pos = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred, torch.zeros_like(pred), reduction="none")
    tt = target.transpose(1, 2)  # (B, P, K)
    bce = torch.bmm(pos / p, tt) + torch.bmm(neg / p, 1 - tt)
    prob = pred.sigmoid()
    inter = 2 * torch.bmm(prob, tt)
    union = prob.sum(-1)[:, :, None] + target.sum(-1)[:, None, :]
    dice = 1 - (inter + 1) / (union + 1)
    return bce, dice


class HungarianMatcher:
    """One-to-one assignment of queries to targets, per image, on the class + mask cost above.

    ``matcher(class_logits, mask_logits, targets)`` with ``class_logits`` ``B x Q x (C + 1)``,
    ``mask_logits`` ``B x Q x h x w`` and one target dict per image returns one pair
    ``(query_idx, target_idx)`` of int64 CPU tensors per image, each ``min(Q, K_i)`` long, query
    indices ascending. Costs are float32 whatever the input dtype; NaN or infinite costs become
    the largest float so that such pairs are matched only when nothing else is left.

    Args:
        cost_class, cost_mask, cost_dice: weights of the three terms (Mask2Former: 2, 5, 5).
        num_points: uniformly drawn points per image for the mask costs (Mask2Former: 112 * 112).
        generator: optional ``torch.Generator`` for the points (default: the global one).
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int = 12544, generator: torch.Generator | None = None) -> None:
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("cost_class, cost_mask and cost_dice are all 0; give at least one a positive weight")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.cost_class, self.cost_mask, self.cost_dice = float(cost_class), float(cost_mask), float(cost_dice)
        self.num_points = int(num_points)
        self.generator = generator

    @torch.no_grad()
    def cost_matrices(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, target_masks: torch.Tensor,
                      target_labels: torch.Tensor) -> torch.Tensor:
        """The ``B x Q x Kmax`` float32 costs from padded targets (:func:`pad_target_masks`)."""
        b, q = class_logits.shape[:2]
        k = target_labels.shape[1]
        with torch.autocast(class_logits.device.type, enabled=False):
            prob = class_logits.float().softmax(-1)
            cost_class = -prob.gather(2, target_labels[:, None, :].expand(b, q, k))  # (B, Q, K)
            # one draw per image, in image order (the reference's draws on every device)
            coords = torch.cat([torch.rand(1, self.num_points, 2, device=class_logits.device,
                                           generator=self.generator) for _ in range(b)])
            pred_pts = point_sample(mask_logits.float(), coords)  # (B, Q, P)
            tgt_pts = point_sample(target_masks, coords)  # (B, K, P)
            bce, dice = pairwise_mask_costs(pred_pts, tgt_pts)
            cost = self.cost_mask * bce + self.cost_class * cost_class + self.cost_dice * dice
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)

    @torch.no_grad()
    def __call__(self, class_logits: torch.Tensor, mask_logits: torch.Tensor,
                 targets: Sequence[dict]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        _check_targets(targets, class_logits.shape[0])
        masks, labels, sizes = pad_target_masks(targets, class_logits.device)
        return self.match(class_logits, mask_logits, masks, labels, sizes)

    @torch.no_grad()
    def match(self, class_logits: torch.Tensor, mask_logits: torch.Tensor, target_masks: torch.Tensor,
              target_labels: torch.Tensor, sizes: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """As calling the matcher, on targets already padded (:func:`pad_target_masks`)."""
        try:
            from scipy.optimize import linear_sum_assignment
        except ImportError as e:  # training only: inference needs no scipy
            raise ImportError("matching needs scipy: pip install scipy (or segzoo[universal])") from e
        cost = self.cost_matrices(class_logits, mask_logits, target_masks, target_labels).cpu()  # host sync
        out = []
        for i, k in enumerate(sizes):
            rows, cols = linear_sum_assignment(cost[i, :, :k].numpy())
            out.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return out
