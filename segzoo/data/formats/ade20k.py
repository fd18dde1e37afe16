"""ADE20K (the SceneParsing / ADEChallengeData2016 release) in its official layout.

::

    ADEChallengeData2016/images/training/ADE_train_00000001.jpg
    ADEChallengeData2016/annotations/training/ADE_train_00000001.png     grey: 0 other, 1..150 classes
    ADEChallengeData2016/images/validation/ADE_val_00000001.jpg
    ADEChallengeData2016/annotations/validation/ADE_val_00000001.png

With ``reduce_zero_label`` (the benchmark's convention, as mmsegmentation trains it), 0 becomes the
ignore label and 1..150 become 0..149. Class names are the first name of each row of the release's
``objectInfo150.csv``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from segzoo.data.records import AnnotatedImages, read_mask, voc_colormap
from segzoo.data.targets import CLASS_MAP

PathLike = str | os.PathLike

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier",
    "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
SPLIT_FOLDERS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}


class ADE20K(AnnotatedImages):
    """ADE20K scene parsing, 150 classes (semantic only).

    Args:
        root: ``ADEChallengeData2016`` (or the folder holding it).
        split: ``train``/``training`` or ``val``/``validation``.
        reduce_zero_label: 0 ("other") -> ``ignore_index`` and ``k`` -> ``k - 1`` (150 classes);
            False keeps 0 as a class ("other", 151 classes).
        transforms: a joint transform ``transforms(image, mask)``.
        ignore_index: the ignore label.
    """

    config_keys = ("root", "split", "reduce_zero_label", "ignore_index")

    def __init__(self, root: PathLike, split: str = "train", reduce_zero_label: bool = True, transforms=None,
                 ignore_index: int = 255) -> None:
        super().__init__(CLASS_MAP, transforms, ignore_index)
        root = Path(root)
        if not (root / "images").is_dir() and (root / "ADEChallengeData2016").is_dir():
            root = root / "ADEChallengeData2016"
        self.root = root
        if split not in SPLIT_FOLDERS:
            raise ValueError(f"split must be one of {', '.join(SPLIT_FOLDERS)}, got {split!r}")
        folder = SPLIT_FOLDERS[split]
        images_dir, labels_dir = root / "images" / folder, root / "annotations" / folder
        for what, d in (("images", images_dir), ("annotations", labels_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"ADE20K {what} folder not found: {d}; root must be ADEChallengeData2016 "
                                        "(with images/ and annotations/)")
        self.images = sorted(images_dir.glob("*.jpg"))
        if not self.images:
            raise ValueError(f"no .jpg images in {images_dir}")
        self.labels = [labels_dir / f"{p.stem}.png" for p in self.images]
        missing = [str(p) for p in self.labels if not p.is_file()]
        if missing:
            self.problems.append(f"{len(missing)} images have no annotation PNG: {missing[:3]}")
        self.reduce_zero_label = reduce_zero_label
        self.object_classes = list(ADE20K_CLASSES)
        self.semantic_classes = list(ADE20K_CLASSES) if reduce_zero_label else ["other", *ADE20K_CLASSES]
        self.palette = voc_colormap(len(self.semantic_classes) + 1)[1:]  # generated colours, not the release's

    targets = (CLASS_MAP,)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def semantic_map(self, index: int, height: int, width: int) -> np.ndarray:
        labels = read_mask(self.labels[index])
        if not self.reduce_zero_label:
            return labels
        out = labels - 1
        out[(labels == 0) | (labels == 255)] = self.ignore_index
        return out
