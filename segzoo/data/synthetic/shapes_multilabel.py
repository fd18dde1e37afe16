"""Overlapping Shapes: the Shapes scenes with translucent shapes, so that a pixel can carry several classes.

Each image has the Shapes background and 2-6 circles, squares and triangles drawn half-transparent
(alpha 0.6): where two overlap both stay visible, mixed. The labels are the shapes' full areas, one
0/1 PNG per class: ``{split}/images/*.png`` and ``{split}/masks/<class>/*.png`` (0/255), read back
with :class:`~segzoo.data.formats.multilabel.MultiLabelMasks` (``data.type: mask_folders`` reads the
same layout of user data). Asked for a class map (a binary model), the items are the union: any
shape (label 1) on background (0).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from segzoo.data.base import ConfigReader, refuse_target
from segzoo.data.formats.multilabel import MultiLabelMasks
from segzoo.data.synthetic.shapes import SHAPE_CLASSES, SourceView, _background, _polygon, write_splits_once
from segzoo.data.targets import CLASS_MAP, MULTI_HOT, Target

PathLike = str | os.PathLike
FORMAT_VERSION = 1
ALPHA = 0.6


def render_overlapping(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One sample: ``(image H x W x 3 uint8, masks C x H x W bool)``, class order :data:`SHAPE_CLASSES`."""
    rng = np.random.RandomState((seed * 1_000_033 + index) % (2**32))
    img = _background(rng, size)
    masks = np.zeros((len(SHAPE_CLASSES), size, size), dtype=bool)
    for _ in range(rng.randint(2, 7)):
        kind = rng.randint(len(SHAPE_CLASSES))
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(_polygon(rng, kind, size), fill=1)
        full = np.asarray(canvas).astype(bool)
        colour = rng.uniform(0, 255, 3)
        img[full] = (1 - ALPHA) * img[full] + ALPHA * (colour + rng.normal(0, 8, (int(full.sum()), 3)))
        masks[kind] |= full
    return np.clip(img, 0, 255).astype(np.uint8), masks


def _write_split(folder: Path, start: int, count: int, size: int, seed: int) -> None:
    (folder / "images").mkdir(parents=True)
    for name in SHAPE_CLASSES:
        (folder / "masks" / name).mkdir(parents=True)
    for i in range(start, start + count):
        img, masks = render_overlapping(i, size, seed)
        stem = f"{i:06d}"
        Image.fromarray(img).save(folder / "images" / f"{stem}.png")
        for name, m in zip(SHAPE_CLASSES, masks):
            Image.fromarray(m.astype(np.uint8) * 255, mode="L").save(folder / "masks" / name / f"{stem}.png")


def generate_overlapping(root: PathLike, num_train: int = 200, num_val: int = 50, size: int = 128,
                         seed: int = 0) -> Path:
    """Write the overlapping Shapes under ``root`` unless an identical copy is there (atomically, as Shapes)."""
    meta = {"kind": "overlapping", "version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
            "size": size, "seed": seed}
    return write_splits_once(root, meta, _write_split)


class ShapesMultiLabel(SourceView, ConfigReader, Dataset):
    """The overlapping Shapes (``data.type: shapes_multilabel``), generated on first use.

    Args:
        root: where the files live (written if missing or generated with other settings).
        split: ``"train"`` or ``"val"``.
        target: ``MULTI_HOT`` (3 channels: circle, square, triangle) or ``CLASS_MAP`` (binary: any shape).
        num_train, num_val, size, seed: as :class:`~segzoo.data.synthetic.shapes.Shapes`.
        transforms: joint transform applied to each item.
    """

    targets = (MULTI_HOT, CLASS_MAP)
    config_keys = ("root", "num_train", "num_val", "size", "seed")
    config_required = config_paths = ()
    DEFAULT_ROOT = "data/shapes_multilabel"  # data.root left at its default (Shapes') must not share Shapes' files

    def __init__(self, root: PathLike = "data/shapes_multilabel", split: str = "train", target: Target = MULTI_HOT,
                 num_train: int = 200, num_val: int = 50, size: int = 128, seed: int = 0, transforms=None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"Shapes split must be 'train' or 'val', got {split!r}")
        folder = generate_overlapping(root, num_train, num_val, size, seed) / split
        self.source = MultiLabelMasks(folder / "images", folder / "masks", classes=list(SHAPE_CLASSES), target=target,
                                      transforms=transforms)
        self.target = self.source.target

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        """As :class:`~segzoo.data.synthetic.shapes.Shapes`, in its own folder when ``data.root`` is the default."""
        kw = cls.take(args)
        refuse_target(args.kind, cls.targets, target)
        default = type(cfg)().root  # the data.root default belongs to Shapes
        kw.setdefault("root", cls.DEFAULT_ROOT if cfg.root == default else cfg.root)
        return cls(split=args.split, target=target, transforms=transforms, **kw)



__all__ = ["ShapesMultiLabel", "generate_overlapping", "render_overlapping"]
