"""Cityscapes in its official layout, with the official label table (id -> trainId).

::

    leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png      label ids 0..33 (8-bit)
    gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_instanceIds.png   16-bit: id * 1000 + instance
                                                                        for objects, the label id for
                                                                        stuff and crowd groups

Semantic maps hold the 19 train ids (road .. bicycle) with 255 for everything the benchmark
ignores. Instances are the 8 classes with instances and a train id (person .. bicycle): pixels
``>= 1000`` are one object each, a thing-class label id ``< 1000`` is a crowd group (ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segzoo.data.records import AnnotatedImages, Obj, read_mask
from segzoo.data.targets import CLASS_MAP, Target

PathLike = str | os.PathLike

# the official table (cityscapesScripts helpers/labels.py): (name, id, trainId, hasInstances, colour)
LABELS = (
    ("unlabeled", 0, 255, False, (0, 0, 0)), ("ego vehicle", 1, 255, False, (0, 0, 0)),
    ("rectification border", 2, 255, False, (0, 0, 0)), ("out of roi", 3, 255, False, (0, 0, 0)),
    ("static", 4, 255, False, (0, 0, 0)), ("dynamic", 5, 255, False, (111, 74, 0)),
    ("ground", 6, 255, False, (81, 0, 81)), ("road", 7, 0, False, (128, 64, 128)),
    ("sidewalk", 8, 1, False, (244, 35, 232)), ("parking", 9, 255, False, (250, 170, 160)),
    ("rail track", 10, 255, False, (230, 150, 140)), ("building", 11, 2, False, (70, 70, 70)),
    ("wall", 12, 3, False, (102, 102, 156)), ("fence", 13, 4, False, (190, 153, 153)),
    ("guard rail", 14, 255, False, (180, 165, 180)), ("bridge", 15, 255, False, (150, 100, 100)),
    ("tunnel", 16, 255, False, (150, 120, 90)), ("pole", 17, 5, False, (153, 153, 153)),
    ("polegroup", 18, 255, False, (153, 153, 153)), ("traffic light", 19, 6, False, (250, 170, 30)),
    ("traffic sign", 20, 7, False, (220, 220, 0)), ("vegetation", 21, 8, False, (107, 142, 35)),
    ("terrain", 22, 9, False, (152, 251, 152)), ("sky", 23, 10, False, (70, 130, 180)),
    ("person", 24, 11, True, (220, 20, 60)), ("rider", 25, 12, True, (255, 0, 0)),
    ("car", 26, 13, True, (0, 0, 142)), ("truck", 27, 14, True, (0, 0, 70)),
    ("bus", 28, 15, True, (0, 60, 100)), ("caravan", 29, 255, True, (0, 0, 90)),
    ("trailer", 30, 255, True, (0, 0, 110)), ("train", 31, 16, True, (0, 80, 100)),
    ("motorcycle", 32, 17, True, (0, 0, 230)), ("bicycle", 33, 18, True, (119, 11, 32)),
    ("license plate", -1, -1, True, (0, 0, 142)),
)
TRAIN_CLASSES = tuple(name for name, _, train_id, _, _ in sorted(LABELS, key=lambda r: r[2]) if 0 <= train_id < 255)
TRAIN_PALETTE = tuple(colour for _, _, train_id, _, colour in sorted(LABELS, key=lambda r: r[2])
                      if 0 <= train_id < 255)
THING_IDS = tuple(label_id for _, label_id, train_id, inst, _ in LABELS if inst and 0 <= train_id < 255)
THING_CLASSES = tuple(name for name, label_id, *_ in LABELS if label_id in THING_IDS)


def train_id_lut(ignore_index: int = 255) -> np.ndarray:
    """A 256-entry table from label id to train id (``ignore_index`` for ignored ids)."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    for _, label_id, train_id, _, _ in LABELS:
        if label_id >= 0 and 0 <= train_id < 255:
            lut[label_id] = train_id
    return lut


class Cityscapes(AnnotatedImages):
    """Cityscapes, semantic (19 train ids, 255 ignore) or instance (8 thing classes).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: ``train``, ``val`` or ``test`` (``train_extra`` with ``annotations="gtCoarse"``).
        target: ``CLASS_MAP``, ``INSTANCE_MASKS`` or ``BOXES`` (:mod:`segzoo.data.targets`).
        annotations: ``gtFine`` or ``gtCoarse``.
        transforms: a joint transform ``transforms(image, target)``.
        ignore_index: the semantic ignore label.
    """

    config_keys = ("root", "split", "annotations", "ignore_index")

    def __init__(self, root: PathLike, split: str = "train", target: Target = CLASS_MAP, annotations: str = "gtFine",
                 transforms=None, ignore_index: int = 255) -> None:
        super().__init__(target, transforms, ignore_index)
        self.root = Path(root)
        self.split = split
        images_dir = self.root / "leftImg8bit" / split
        if not images_dir.is_dir():
            parent = self.root / "leftImg8bit"
            have = sorted(p.name for p in parent.iterdir()) if parent.is_dir() else []
            raise FileNotFoundError(f"Cityscapes images not found: {images_dir} (splits here: {have or 'none'}); root "
                                    "must hold leftImg8bit/ and gtFine/ as unpacked from the official zips")
        self.images = sorted(images_dir.glob("*/*_leftImg8bit.png"))
        if not self.images:
            raise ValueError(f"no */*_leftImg8bit.png files in {images_dir}")
        self.annotations = annotations
        suffix = "labelIds" if target.label_map else "instanceIds"
        self.labels = [self.root / annotations / split / p.parent.name /
                       p.name.replace("_leftImg8bit.png", f"_{annotations}_{suffix}.png") for p in self.images]
        missing = [str(p) for p in self.labels if not p.is_file()]
        if missing:
            self.problems.append(f"{len(missing)} images have no {annotations} *_{suffix}.png: {missing[:3]}")
        self.object_classes = list(THING_CLASSES)
        self.semantic_classes = list(TRAIN_CLASSES)
        self.palette = list(TRAIN_PALETTE)
        self._lut = train_id_lut(ignore_index)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def semantic_map(self, index: int, height: int, width: int) -> np.ndarray:
        ids = read_mask(self.labels[index])
        if ids.min() < 0 or ids.max() > 255:
            raise ValueError(f"{self.labels[index]} holds values outside 0..255; is it a *_labelIds.png?")
        return self._lut[ids]

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        ids = read_mask(self.labels[index])
        thing = {label_id: k for k, label_id in enumerate(THING_IDS)}
        out = []
        for v in np.unique(ids).tolist():
            label_id = v // 1000 if v >= 1000 else v
            if label_id in thing:  # >= 1000: one object; < 1000: a crowd group of that class
                out.append(Obj(thing[label_id], mask=ids == v, crowd=v < 1000))
        return out

    def item_name(self, index: int) -> str:
        return self.images[index].name.replace("_leftImg8bit.png", "")
