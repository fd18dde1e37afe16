"""Matching predictions to ground truth by IoU, and balanced sampling of the matches.

Both work on whole batches: the matcher on an ``(N, G, P)`` IoU tensor with padded
ground truth, the sampler on flat labels with a group (image) id per element.
"""

from __future__ import annotations

import torch

from segzoo.detection.boxes import rank_in_group

BELOW_LOW = -1
BETWEEN = -2


class Matcher:
    """Assign each prediction (anchor or proposal) the ground-truth box it overlaps most.

    A prediction whose best IoU is ``>= high`` is matched (its ground-truth index is
    returned); below ``low`` it gets ``BELOW_LOW`` (-1, background) and in between
    ``BETWEEN`` (-2, ignored). With ``allow_low_quality_matches`` every ground-truth box
    also keeps the predictions that overlap it most even if below ``high`` (Faster R-CNN's
    RPN rule), so that no object is left without a positive anchor.

    Args:
        high: IoU from which a prediction is foreground.
        low: IoU below which a prediction is background.
        allow_low_quality_matches: keep each ground truth's best predictions.
    """

    def __init__(self, high: float, low: float, allow_low_quality_matches: bool = False) -> None:
        if low > high:
            raise ValueError(f"low threshold {low} must not exceed high threshold {high}")
        self.high = high
        self.low = low
        self.allow_low_quality_matches = allow_low_quality_matches

    def __call__(self, iou: torch.Tensor, gt_valid: torch.Tensor) -> torch.Tensor:
        """Match predictions to ground truth.

        Args:
            iou: ``(N, G, P)`` IoU of each (padded) ground truth with each prediction.
            gt_valid: ``(N, G)`` bool, False for padding rows.

        Returns:
            ``(N, P)`` int64: ground-truth index, ``BELOW_LOW`` or ``BETWEEN``.
        """
        iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
        best, matches = iou.max(dim=1)  # (N, P)
        out = matches.clone()
        out[best < self.low] = BELOW_LOW
        out[(best >= self.low) & (best < self.high)] = BETWEEN
        if self.allow_low_quality_matches:
            best_per_gt = iou.max(dim=2, keepdim=True).values  # (N, G, 1)
            ties = (iou == best_per_gt) & gt_valid[:, :, None]  # (N, G, P)
            update = ties.any(dim=1)  # (N, P)
            out = torch.where(update, matches, out)
        return out


class BalancedSampler:
    """Sample a fixed number of elements per image with a bounded fraction of positives.

    Per image: up to ``int(batch_size_per_image * positive_fraction)`` positives chosen at
    random, then negatives to fill ``batch_size_per_image``; ignored elements are never
    sampled.

    Args:
        batch_size_per_image: elements sampled per image.
        positive_fraction: largest share of positives.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: torch.Tensor, group: torch.Tensor, num_groups: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose positives and negatives.

        Args:
            labels: ``(L,)`` int: ``> 0`` positive, ``0`` negative, ``< 0`` ignored.
            group: ``(L,)`` int64 image index of each element.
            num_groups: number of images.

        Returns:
            Boolean ``(L,)`` masks of the sampled positives and negatives.
        """
        pos = labels > 0
        neg = labels == 0
        perm = torch.randperm(len(labels), device=labels.device)  # random order inside each image
        max_pos = int(self.batch_size_per_image * self.positive_fraction)
        pos_rank = torch.full_like(group, len(labels))
        neg_rank = torch.full_like(group, len(labels))
        for kind, rank in ((pos, pos_rank), (neg, neg_rank)):
            idx = perm[kind[perm]]  # elements of this kind, in random order
            rank[idx] = rank_in_group(group[idx], num_groups)
        sampled_pos = pos & (pos_rank < max_pos)
        num_pos = torch.bincount(group[sampled_pos], minlength=num_groups)  # (num_groups,)
        num_neg = self.batch_size_per_image - num_pos
        sampled_neg = neg & (neg_rank < num_neg[group])
        return sampled_pos, sampled_neg
