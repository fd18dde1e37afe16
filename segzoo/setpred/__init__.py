"""Set prediction for universal segmentation (Mask2Former, EoMT): a model predicts ``Q`` (class,
mask) pairs per image; training matches them one-to-one to the targets (:class:`HungarianMatcher`)
and supervises the matched pairs (:class:`SetCriterion`); inference merges them into a semantic
map, instances or a panoptic segmentation (:mod:`segzoo.setpred.merge`).

Conventions: class logits are ``B x Q x (C + 1)``, the last column "no object"; mask logits are
``B x Q x h x w`` at any resolution (points are sampled in normalised coordinates); targets are
segzoo's instance/panoptic targets, one dict per image with ``labels`` (``K``, 0-based, int64) and
``masks`` (``K x H x W``, binary).
"""

from segzoo.setpred.losses import SetCriterion
from segzoo.setpred.matcher import HungarianMatcher, pad_target_masks
from segzoo.setpred.merge import instance_merge, merge_all, panoptic_merge, semantic_merge
from segzoo.setpred.points import point_sample, uncertain_points
from segzoo.setpred.targets import drop_crowd, semantic_to_set_targets, set_targets

__all__ = ["HungarianMatcher", "SetCriterion", "drop_crowd", "instance_merge", "merge_all", "pad_target_masks",
           "panoptic_merge", "point_sample", "semantic_merge", "semantic_to_set_targets", "set_targets",
           "uncertain_points"]
