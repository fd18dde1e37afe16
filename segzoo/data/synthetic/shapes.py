"""Shapes: a built-in, deterministic, procedurally generated segmentation dataset.

Each image has a textured background (colour gradient, stripes and noise) and 2-6 shapes
(circles, squares, triangles) of random size, colour and rotation that may occlude each
other. The data is written to disk once, as real files: ``{split}/images/*.png``,
``{split}/masks/*.png`` (palette PNG label maps, 0 = background) and
``{split}/instances.json`` (COCO, polygons for unoccluded shapes and uncompressed RLE for
occluded ones), so the quickstart exercises the same loaders as user data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from segzoo.data.base import ConfigReader, check_target, refuse_target
from segzoo.data.formats.coco import CocoInstances, CocoSemantic
from segzoo.data.formats.mask_folder import MaskFolder
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, Target

PathLike = str | os.PathLike
SHAPE_CLASSES = ("circle", "square", "triangle")
FORMAT_VERSION = 1
# palette colours of the mask PNGs: background, circle, square, triangle
_PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75, 0, 130, 200]


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1 = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = (xx * math.cos(rng.uniform(0, 6.3)) + yy * math.sin(rng.uniform(0, 6.3)))[..., None]
    img = c0 * (1 - t) + c1 * t
    freq, phase = rng.uniform(4, 16), rng.uniform(0, 6.3)
    img += 18 * np.sin(2 * math.pi * freq * (xx + 0.3 * yy) + phase)[..., None]
    img += rng.normal(0, 10, (size, size, 3))
    return img


def _polygon(rng: np.random.RandomState, kind: int, size: int) -> list[tuple[float, float]]:
    r = rng.uniform(0.08, 0.22) * size
    cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
    rot = rng.uniform(0, 2 * math.pi)
    n = (32, 4, 3)[kind]
    return [(cx + r * math.cos(rot + 2 * math.pi * i / n), cy + r * math.sin(rot + 2 * math.pi * i / n))
            for i in range(n)]


def encode_rle(mask: np.ndarray) -> dict:
    """An ``H x W`` binary mask as COCO uncompressed RLE (column-major run lengths, zeros first)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def render(index: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One sample: ``(image H x W x 3 uint8, labels H x W uint8, instances)``.

    ``instances`` holds for each visible shape its ``label`` (0-based), visible ``mask``
    and, when nothing occludes it, its ``polygon``.
    """
    rng = np.random.RandomState((seed * 1_000_003 + index) % (2**32))
    img = _background(rng, size)
    ids = np.zeros((size, size), dtype=np.int32)  # 0 = background, k + 1 = shape k
    shapes = []
    for k in range(rng.randint(2, 7)):
        kind = rng.randint(len(SHAPE_CLASSES))
        poly = _polygon(rng, kind, size)
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(poly, fill=1)
        full = np.asarray(canvas).astype(bool)
        colour = rng.uniform(0, 255, 3)
        img[full] = colour + rng.normal(0, 8, (int(full.sum()), 3))
        ids[full] = k + 1
        shapes.append((kind, poly, full))
    instances = []
    for k, (kind, poly, full) in enumerate(shapes):
        visible = ids == k + 1
        if visible.sum() < 4:
            continue
        inst = {"label": kind, "mask": visible}
        if visible.sum() == full.sum():
            inst["polygon"] = [round(v, 2) for xy in poly for v in xy]
        instances.append(inst)
    labels = np.zeros((size, size), dtype=np.uint8)
    for inst in instances:
        labels[inst["mask"]] = inst["label"] + 1
    return np.clip(img, 0, 255).astype(np.uint8), labels, instances


def _write_split(folder: Path, start: int, count: int, size: int, seed: int) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    images, annotations = [], []
    for i in range(start, start + count):
        img, labels, instances = render(i, size, seed)
        name = f"{i:06d}.png"
        Image.fromarray(img).save(folder / "images" / name)
        lab = Image.fromarray(labels, mode="P")
        lab.putpalette(_PALETTE)
        lab.save(folder / "masks" / name)
        images.append({"id": i, "file_name": name, "height": size, "width": size})
        for inst in instances:
            ys, xs = np.nonzero(inst["mask"])
            x0, y0 = int(xs.min()), int(ys.min())
            bbox = [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0]
            segm = [inst["polygon"]] if "polygon" in inst else encode_rle(inst["mask"])
            annotations.append({
                "id": len(annotations) + 1, "image_id": i, "category_id": inst["label"] + 1,
                "bbox": bbox, "area": int(inst["mask"].sum()), "iscrowd": 0, "segmentation": segm,
            })
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPE_CLASSES)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(coco))


def generate(root: PathLike, num_train: int = 200, num_val: int = 50, size: int = 128, seed: int = 0) -> Path:
    """Write the Shapes dataset under ``root`` unless an identical copy is already there.

    The files are built in a temporary folder and renamed into place, so concurrent callers
    (DDP ranks) and interrupted runs never see half-written data.

    Returns:
        ``root`` as a Path.
    """
    meta = {"version": FORMAT_VERSION, "num_train": num_train, "num_val": num_val, "size": size, "seed": seed}
    return write_splits_once(root, meta, _write_split)


def write_splits_once(root: PathLike, meta: dict, write_split, min_size: int = 32) -> Path:
    """:func:`write_once` of a generated train/val pair: ``write_split(folder, start, count, size, seed)`` writes
    images ``0 .. num_train - 1`` to ``train/`` and the next ``num_val`` to ``val/`` (the counts, size and seed
    are ``meta``'s)."""
    n, size, seed = meta["num_train"], meta["size"], meta["seed"]

    def write(tmp: Path) -> None:
        write_split(tmp / "train", 0, n, size, seed)
        write_split(tmp / "val", n, meta["num_val"], size, seed)

    return write_once(root, meta, write, min_size=min_size)


def write_once(root: PathLike, meta: dict, write, min_size: int = 32) -> Path:
    """Run ``write(folder)`` into a temporary folder and rename it to ``root``, unless ``root/meta.json``
    already holds ``meta`` (a generated dataset's settings); a ``root`` with other settings is replaced."""
    root = Path(root)
    meta_file = root / "meta.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()) == meta:
        return root
    if meta["size"] < min_size:
        raise ValueError(f"Shapes size must be at least {min_size} pixels, got {meta['size']}")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    (tmp / "meta.json").write_text(json.dumps(meta))
    if meta_file.is_file() and json.loads(meta_file.read_text()) == meta:  # another process won
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        os.replace(root, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(tmp, root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not meta_file.is_file():
            raise
    return root


class SourceView:
    """A generated dataset read back through the format reader it wrote (``self.source``): length, items and
    every other attribute are the reader's."""

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        return self.source[index]

    def __getattr__(self, name: str):
        if name == "source":  # not yet set: avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.source, name)


class Shapes(SourceView, ConfigReader, Dataset):
    """The built-in Shapes dataset, generated on first use and read back from its files.

    ``target=CLASS_MAP`` reads the PNG label maps with :class:`MaskFolder` (4 classes:
    background, circle, square, triangle); ``INSTANCE_MASKS`` and ``BOXES`` read the COCO json
    with :class:`CocoInstances` (3 object classes; boxes without masks for ``BOXES``). Items and
    attributes are those of the underlying dataset (``dataset.source``).

    Args:
        root: where the files live (written if missing or generated with other settings).
        split: ``"train"`` or ``"val"``.
        target: ``CLASS_MAP``, ``INSTANCE_MASKS`` or ``BOXES`` (:mod:`segzoo.data.targets`).
        num_train: images in the train split.
        num_val: images in the val split.
        size: image side in pixels.
        seed: generation seed; the same seed always gives the same files.
        transforms: joint transform applied to each item.
    """

    def __init__(
        self,
        root: PathLike = "data/shapes",
        split: str = "train",
        target: Target = CLASS_MAP,
        num_train: int = 200,
        num_val: int = 50,
        size: int = 128,
        seed: int = 0,
        transforms=None,
    ) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"Shapes split must be 'train' or 'val', got {split!r}")
        try:
            check_target(target, self.targets, "Shapes")
        except ValueError as e:
            hint = "; for panoptic models use data.type: shapes_panoptic (segzoo.data.ShapesPanoptic)" \
                if target.segments else ""
            raise ValueError(f"{e}{hint}") from None
        folder = generate(root, num_train, num_val, size, seed) / split
        if target.label_map:
            self.source = MaskFolder(folder / "images", folder / "masks",
                                     classes=["background", *SHAPE_CLASSES], transforms=transforms)
        else:
            self.source = CocoInstances(folder / "images", folder / "instances.json", transforms=transforms,
                                        with_masks=target.masks)
        self.target = target

    targets = (CLASS_MAP, INSTANCE_MASKS, BOXES)
    config_keys = ("root", "num_train", "num_val", "size", "seed")
    config_required = config_paths = ()

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        """Generated under ``data.root`` (or ``data.<split>.root``): ``num_train``, ``num_val``, ``size``, ``seed``."""
        kw = cls.take(args)
        if not target.segments:
            refuse_target(args.kind, cls.targets, target)
        kw.setdefault("root", cfg.root)
        return cls(split=args.split, target=target, transforms=transforms, **kw)




__all__ = ["CocoSemantic", "Shapes", "encode_rle", "generate", "render", "write_once"]
