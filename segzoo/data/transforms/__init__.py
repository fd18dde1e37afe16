"""Joint image/target transforms: the augmentation steps (:mod:`.augment`), the presets
(:mod:`.presets`, :func:`build_transforms`) and the collate functions (:mod:`.collate`)."""

from segzoo.data.transforms.collate import SEMANTIC_IGNORE, collate_instances, collate_multi_hot, collate_semantic
from segzoo.data.transforms.presets import (
    CROP_MODES,
    DROPPED,
    CountedSanitize,
    PadToSize,
    build_transforms,
    instance_transforms,
    pop_dropped,
    semantic_transforms,
)

__all__ = [
    "CROP_MODES", "DROPPED", "SEMANTIC_IGNORE", "CountedSanitize", "PadToSize", "build_transforms",
    "collate_instances", "collate_multi_hot", "collate_semantic", "instance_transforms", "pop_dropped",
    "semantic_transforms",
]
