"""Panoptic Shapes: the built-in Shapes things on textured "stuff" regions, in the COCO-panoptic format.

Each image is split by wavy boundaries into 2 or 3 regions, each a different stuff class with
its own texture: ``sky`` (smooth vertical gradient), ``grass`` (fine vertical stripes) and
``brick`` (a mortar grid of staggered bricks), with colours drawn at random around each
class's hue. On top, 1-4 shapes (``circle``, ``square``, ``triangle``; solid colour with noise)
may occlude each other; shape fragments of fewer than 16 visible pixels and a one-pixel
border between stuff regions are void. Categories: things 1-3 (``isthing: 1``), stuff 4-6,
so the labels are 0-2 for the shapes and 3-5 for the stuff.

Written once per settings under ``root``: ``{split}/images/*.png``, ``{split}/panoptic/*.png``
(RGB-encoded segment ids) and ``{split}/panoptic.json``, read back with
:class:`~segzoo.data.formats.coco_panoptic.CocoPanoptic`. No download; the same seed always gives the
same files.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from segzoo.data.base import ConfigReader, refuse_target
from segzoo.data.formats.coco_panoptic import CocoPanoptic, ids_to_rgb
from segzoo.data.synthetic.shapes import SHAPE_CLASSES, SourceView, _polygon, write_splits_once
from segzoo.data.targets import SEGMENTS

PathLike = str | os.PathLike
STUFF_CLASSES = ("sky", "grass", "brick")
FORMAT_VERSION = 1
MIN_THING_PIXELS = 16


def _texture(rng: np.random.RandomState, kind: int, size: int) -> np.ndarray:
    """A full ``size x size x 3`` float texture of stuff class ``kind``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if kind == 0:  # sky: smooth vertical gradient from a pale to a deeper blue
        top, bottom = rng.uniform([120, 160, 210], [180, 210, 255]), rng.uniform([40, 80, 150], [100, 140, 220])
        img = top * (1 - yy[..., None]) + bottom * yy[..., None] + rng.normal(0, 3, (size, size, 3))
    elif kind == 1:  # grass: green with fine vertical stripes
        base = rng.uniform([40, 110, 30], [90, 170, 70])
        stripes = np.sin(2 * math.pi * rng.uniform(10, 16) * xx + rng.uniform(0, 6.3) + 3 * yy)[..., None]
        img = base + 30 * stripes + rng.normal(0, 12, (size, size, 3))
    else:  # brick: reddish bricks in staggered rows with light mortar lines
        base = rng.uniform([140, 50, 30], [190, 90, 60])
        bh, bw = size / rng.uniform(7, 10), size / rng.uniform(3.5, 5)
        row = np.floor(yy * size / bh)
        shift = (row % 2) * bw / 2
        mortar = ((yy * size % bh) < 1.5) | (((xx * size + shift) % bw) < 1.5)
        img = np.where(mortar[..., None], np.array([210.0, 205, 195]), base) + rng.normal(0, 6, (size, size, 3))
    return img


def _regions(rng: np.random.RandomState, size: int) -> np.ndarray:
    """``size x size`` region index map (0..R-1) of 2 or 3 regions split by wavy boundaries."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = size * rng.uniform(0.3, 0.6) + size * 0.06 * np.sin(2 * math.pi * xx / size * rng.uniform(1, 2.5)
                                                                 + rng.uniform(0, 6.3))
    regions = (yy >= wave).astype(np.int64)  # 0 above, 1 below
    if rng.rand() < 0.6:  # the lower part split again, left and right
        cut = size * rng.uniform(0.3, 0.7) + size * 0.05 * np.sin(2 * math.pi * yy / size * 2 + rng.uniform(0, 6.3))
        regions = np.where((regions == 1) & (xx >= cut), 2, regions)
    return regions


def render(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One sample: ``(image H x W x 3 uint8, segment ids H x W int64, segments_info)``.

    Segment ids are 1, 2, ...; ``segments_info`` holds ``id`` and the COCO ``category_id``
    (shapes 1-3, stuff 4-6).
    """
    rng = np.random.RandomState((seed * 1_000_003 + index + 7_919) % (2**32))
    regions = _regions(rng, size)
    n_regions = int(regions.max()) + 1
    kinds = rng.permutation(len(STUFF_CLASSES))[:n_regions]
    img = np.zeros((size, size, 3), dtype=np.float32)
    for r, kind in enumerate(kinds):
        img = np.where((regions == r)[..., None], _texture(rng, int(kind), size), img)
    # a one-pixel void border where the regions meet
    edge = np.zeros((size, size), dtype=bool)
    edge[:, 1:] |= regions[:, 1:] != regions[:, :-1]
    edge[1:, :] |= regions[1:, :] != regions[:-1, :]
    owner = np.full((size, size), -1, dtype=np.int64)  # -1 stuff, k: shape k
    shapes = []
    for k in range(rng.randint(1, 5)):
        kind = rng.randint(len(SHAPE_CLASSES))
        poly = _polygon(rng, kind, size)
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(poly, fill=1)
        full = np.asarray(canvas).astype(bool)
        img[full] = rng.uniform(0, 255, 3) + rng.normal(0, 8, (int(full.sum()), 3))
        owner[full] = k
        shapes.append(kind)
    ids = np.zeros((size, size), dtype=np.int64)
    info = []
    for k, kind in enumerate(shapes):
        visible = owner == k
        if visible.sum() >= MIN_THING_PIXELS:
            ids[visible] = len(info) + 1
            info.append({"id": len(info) + 1, "category_id": kind + 1})
    stuff = (owner < 0) & ~edge
    for r, kind in enumerate(kinds):
        region = stuff & (regions == r)
        if region.any():
            ids[region] = len(info) + 1
            info.append({"id": len(info) + 1, "category_id": len(SHAPE_CLASSES) + int(kind) + 1})
    return np.clip(img, 0, 255).astype(np.uint8), ids, info


def _write_split(folder: Path, start: int, count: int, size: int, seed: int) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "panoptic").mkdir()
    images, annotations = [], []
    for i in range(start, start + count):
        img, ids, info = render(i, size, seed)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(folder / "images" / name)
        Image.fromarray(ids_to_rgb(ids)).save(folder / "panoptic" / name)
        images.append({"id": i, "file_name": name, "height": size, "width": size})
        segments = []
        for s in info:
            ys, xs = np.nonzero(ids == s["id"])
            x0, y0 = int(xs.min()), int(ys.min())
            segments.append({**s, "iscrowd": 0, "area": int(len(xs)),
                             "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]})
        annotations.append({"image_id": i, "file_name": name, "segments_info": segments})
    categories = [{"id": k + 1, "name": n, "isthing": 1} for k, n in enumerate(SHAPE_CLASSES)]
    categories += [{"id": len(SHAPE_CLASSES) + k + 1, "name": n, "isthing": 0} for k, n in enumerate(STUFF_CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "panoptic.json").write_text(json.dumps(coco))


def generate(root: PathLike, num_train: int = 200, num_val: int = 50, size: int = 128, seed: int = 0) -> Path:
    """Write the panoptic Shapes data under ``root`` unless an identical copy is already there
    (atomically, as :func:`segzoo.data.synthetic.shapes.generate`)."""
    meta = {"kind": "shapes_panoptic", "version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val,
            "size": size, "seed": seed}
    return write_splits_once(root, meta, _write_split)


class ShapesPanoptic(SourceView, ConfigReader, Dataset):
    """The built-in panoptic Shapes data, generated on first use and read back from its files.

    6 categories: things ``circle``, ``square``, ``triangle`` (labels 0-2), stuff ``sky``,
    ``grass``, ``brick`` (labels 3-5): a panoptic model takes ``num_classes=6, num_stuff=3``.
    Items and attributes are those of :class:`~segzoo.data.formats.coco_panoptic.CocoPanoptic`
    (``dataset.source``).

    Args:
        root: where the files live (written if missing or generated with other settings).
        split: ``"train"`` or ``"val"``.
        num_train: images in the train split.
        num_val: images in the val split.
        size: image side in pixels.
        seed: generation seed.
        transforms: joint transform applied to each item.
    """

    def __init__(self, root: PathLike = "data/shapes_panoptic", split: str = "train", num_train: int = 200,
                 num_val: int = 50, size: int = 128, seed: int = 0, transforms=None) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"ShapesPanoptic split must be 'train' or 'val', got {split!r}")
        folder = generate(root, num_train, num_val, size, seed) / split
        self.source = CocoPanoptic(folder / "images", folder / "panoptic.json", folder / "panoptic",
                                   transforms=transforms)

    targets = (SEGMENTS,)
    config_keys = ("root", "num_train", "num_val", "size", "seed")
    config_required = config_paths = ()
    DEFAULT_ROOT = "data/shapes_panoptic"  # data.root left at its default (Shapes') must not share Shapes' files

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        """As :class:`~segzoo.data.synthetic.shapes.Shapes`, in its own folder when ``data.root`` is the default."""
        kw = cls.take(args)
        refuse_target(args.kind, cls.targets, target)
        default = type(cfg)().root  # the data.root default belongs to Shapes
        kw.setdefault("root", cls.DEFAULT_ROOT if cfg.root == default else cfg.root)
        return cls(split=args.split, transforms=transforms, **kw)



__all__ = ["STUFF_CLASSES", "ShapesPanoptic", "generate", "render"]
