"""What a dataset item's target holds: one small object per kind, built from the one record.

Every reader gives the same record per image (:class:`~segzoo.data.records.Obj` lists or a label
map); a :class:`Target` says which target an item carries and how a batch of them is collated:

* :data:`CLASS_MAP`: an int64 ``H x W`` label map; background is label 0 and counts as a class
  (what semantic models train on; binary models: labels 0 and 1);
* :data:`MULTI_HOT`: a uint8 ``C x H x W`` stack of 0/1 masks, one per class, no background channel: a
  pixel may carry several classes or none, 255 where unlabelled (what multi-label models train on);
* :data:`BOXES`: ``boxes`` (xyxy), ``labels`` (0-based object classes; background implicit);
* :data:`INSTANCE_MASKS`: the boxes plus ``masks`` (``K x H x W``);
* :data:`SEGMENTS`: one box, label and mask per panoptic segment, things and stuff, with ``iscrowd``.

Data code decides by these attributes, never by a task name: each task object of
:mod:`segzoo.tasks` names its target kind (``get_task(model).target``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from segzoo.data.transforms.collate import collate_instances, collate_multi_hot, collate_semantic

__all__ = ["BOXES", "CLASS_MAP", "INSTANCE_MASKS", "MULTI_HOT", "SEGMENTS", "TARGETS", "Target"]


@dataclasses.dataclass(frozen=True)
class Target:
    """One kind of target.

    Attributes:
        name: the kind of data, for messages (``"semantic"``, ``"instance"``, ...): "semantic data
            lists every label including background".
        label_map: the target is a class map, background (label 0) counted as a class; else object
            rows (boxes and labels), background implicit.
        masks: object rows carry ``K x H x W`` masks (a box alone gets its rectangle).
        segments: panoptic segments: stuff regions are rows too, each with ``iscrowd``.
        multi_hot: the target is a ``C x H x W`` stack of per-class 0/1 masks (no background channel).
        collate: the batch function (:mod:`segzoo.data.transforms.collate`).
    """

    name: str
    label_map: bool = False
    masks: bool = False
    segments: bool = False
    multi_hot: bool = False
    collate: Callable = collate_instances

    @property
    def boxes_only(self) -> bool:
        """Object rows with boxes and labels alone (no masks)."""
        return not (self.label_map or self.masks or self.multi_hot)

    @property
    def dense(self) -> bool:
        """A per-pixel target (a label map or a multi-hot stack): the semantic transform preset."""
        return self.label_map or self.multi_hot

    @property
    def per_box(self) -> tuple[str, ...]:
        """Target entries that the box sanitiser drops together with their box."""
        return ("iscrowd",) if self.segments else ()

    def __repr__(self) -> str:
        return f"Target({self.name})"


CLASS_MAP = Target("semantic", label_map=True, collate=collate_semantic)
BOXES = Target("detection")
INSTANCE_MASKS = Target("instance", masks=True)
SEGMENTS = Target("panoptic", masks=True, segments=True)
MULTI_HOT = Target("multi-label", multi_hot=True, collate=collate_multi_hot)
TARGETS = (CLASS_MAP, INSTANCE_MASKS, BOXES, SEGMENTS, MULTI_HOT)
