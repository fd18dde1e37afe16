"""COCO-panoptic data: a json file plus one PNG per image whose colours encode segment ids.

Layout (COCO's ``panoptic_{split}2017.json`` and ``panoptic_{split}2017/``, also what
panopticapi's converters write): the json has ``images`` (``id``, ``file_name``, optional
``height``/``width``), ``categories`` (``id``, ``name``, ``isthing`` 0/1) and ``annotations``,
one per image: ``image_id``, ``file_name`` (the PNG) and ``segments_info``, a list of
``{"id", "category_id", "iscrowd", "bbox", "area"}``. A PNG pixel of colour (R, G, B) belongs to
segment ``id = R + 256 G + 256^2 B``; 0 is void (unlabelled).

Label space: categories become 0-based labels with the thing categories first (by increasing
id), then the stuff categories (by increasing id), so ``num_classes`` counts both and the last
``num_stuff`` labels are stuff, as :class:`~segzoo.models.panoptic_fpn.PanopticFPN` expects.
The PNG is read losslessly by :func:`segzoo.data.image.read_panoptic`; boxes and areas come
from the PNG, not from the json.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from segzoo.data.base import refuse_target
from segzoo.data.errors import DataError
from segzoo.data.formats.coco_json import JsonImages
from segzoo.data.image import image_size, read_image, read_panoptic
from segzoo.data.records import AnnotatedImages, Obj
from segzoo.data.targets import SEGMENTS

PathLike = str | os.PathLike


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 colours -> ``H x W`` int64 segment ids (``R + 256 G + 256^2 B``)."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def ids_to_rgb(ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """``H x W`` segment ids (``< 256^3``) -> ``H x W x 3`` uint8 colours, the inverse of :func:`rgb_to_ids`."""
    ids = np.asarray(torch.as_tensor(ids).cpu()).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise ValueError(f"segment ids must be in [0, 256^3), got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)


def _where(ann: dict) -> str:
    return f"image_id {ann.get('image_id')!r} ({ann.get('file_name', '?')})"


def _index(data: Any, ann_file: Path) -> tuple[list[dict], list[dict], dict[int, dict]]:
    """``(categories in label order, images, annotation by image id)``; refuses what cannot be indexed."""
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                        "categories")):
        raise DataError(f"{ann_file} is not a COCO-panoptic json: it needs the lists 'images', 'annotations' "
                        "(one per image, with segments_info) and 'categories' (with isthing)")
    cats = data["categories"]
    for c in cats:
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or c.get("isthing") not in (0, 1, True, False):
            raise DataError(f"{ann_file}: category {c!r} needs an integer id and isthing 0 or 1 (COCO-panoptic "
                            "categories say whether they are things or stuff)")
    dup = [k for k, n in Counter(c["id"] for c in cats).items() if n > 1]
    if dup:
        raise DataError(f"{ann_file}: category ids {dup} are used twice; give every category its own id")
    if not cats:
        raise DataError(f"{ann_file} has no categories")
    ordered = sorted(cats, key=lambda c: (not c["isthing"], c["id"]))  # things first, then stuff
    images = data["images"]
    for im in images:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int) or not isinstance(im.get("file_name"), str):
            raise DataError(f"{ann_file}: image entry {im!r} needs an integer id and a file_name")
    dup = [k for k, n in Counter(im["id"] for im in images).items() if n > 1]
    if dup:
        raise DataError(f"{ann_file}: image ids {dup[:5]} are used twice; give every image its own id")
    known_images = {im["id"] for im in images}
    known_cats = {c["id"] for c in cats}
    anns: dict[int, dict] = {}
    for a in data["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("file_name"), str) or \
                not isinstance(a.get("segments_info"), list):
            raise DataError(f"{ann_file}: annotation of {_where(a) if isinstance(a, dict) else a!r} needs a file_name "
                            "(its PNG) and a segments_info list")
        if a.get("image_id") not in known_images:
            raise DataError(f"{ann_file}: an annotation names {_where(a)}, which is not in 'images'")
        if a["image_id"] in anns:
            raise DataError(f"{ann_file}: {_where(a)} has two annotations; COCO-panoptic has one PNG per image")
        for s in a["segments_info"]:
            if not isinstance(s, dict) or not isinstance(s.get("id"), int) or s["id"] <= 0:
                raise DataError(f"{ann_file}: {_where(a)} has a segment {s!r} without an integer id > 0 (0 is void)")
            if s.get("category_id") not in known_cats:
                raise DataError(f"{ann_file}: {_where(a)}, segment {s['id']}: category_id {s.get('category_id')!r} "
                                "is not in 'categories'")
            if s.get("iscrowd", 0) not in (0, 1, True, False):
                raise DataError(f"{ann_file}: {_where(a)}, segment {s['id']}: iscrowd must be 0 or 1")
        dup = [k for k, n in Counter(s["id"] for s in a["segments_info"]).items() if n > 1]
        if dup:
            raise DataError(f"{ann_file}: {_where(a)} lists segment ids {dup} twice")
        anns[a["image_id"]] = a
    missing = [im for im in images if im["id"] not in anns]
    if missing:
        raise DataError(f"{ann_file}: {len(missing)} images have no annotation (e.g. image_id {missing[0]['id']}, "
                        f"{missing[0]['file_name']}); COCO-panoptic has one annotation per image (an empty "
                        "segments_info and an all-void PNG for an unlabelled image)")
    return ordered, images, anns


class CocoPanoptic(JsonImages, AnnotatedImages):
    """Panoptic segmentation data in the COCO-panoptic format (see the module docstring).

    Items are ``(image, target)``: ``image`` a ``3 x H x W`` :class:`tv_tensors.Image` and
    ``target`` a dict with one row per segment, things and stuff alike: ``boxes``
    (:class:`tv_tensors.BoundingBoxes`, xyxy, from the segment's pixels), ``labels`` (int64,
    things first), ``masks`` (:class:`tv_tensors.Mask`, ``K x H x W`` uint8, disjoint),
    ``iscrowd`` (int64 0/1) and ``image_id``; ``transforms(image, target)`` is applied when given.

    Args:
        root: folder the images' ``file_name`` entries are relative to.
        ann_file: the COCO-panoptic json.
        panoptic_root: folder of the PNGs (default: the json's path without ``.json``, COCO's layout).
        transforms: a joint transform called as ``transforms(image, target)``.

    Raises:
        DataError: for a json that cannot be indexed (when made) and for a PNG that does not
            match its ``segments_info`` or image (when its item is loaded).

    The reader is an :class:`~segzoo.data.records.AnnotatedImages` whose records are its segments
    (:meth:`segments`, one id map and its ``segments_info`` per image): its items and its data check
    are its own, since a segment target holds things and stuff alike.
    """

    targets = (SEGMENTS,)
    config_keys = config_paths = ("images", "annotations", "panoptic")
    config_required = ("images", "annotations")
    config_renames = MappingProxyType({"root": "images", "ann_file": "annotations", "panoptic_root": "panoptic"})

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        """``data.<split>.images``, ``.annotations`` and optionally ``.panoptic`` (the PNG folder)."""
        kw = cls.take(args)
        refuse_target(args.kind, cls.targets, target)
        return cls(kw["images"], kw["annotations"], kw.get("panoptic"), transforms)

    def __init__(self, root: PathLike, ann_file: PathLike, panoptic_root: PathLike | None = None,
                 transforms=None) -> None:
        super().__init__(SEGMENTS, transforms)
        self.root = Path(root)
        self.ann_file = Path(ann_file)
        self.panoptic_root = Path(panoptic_root) if panoptic_root is not None else self.ann_file.with_suffix("")
        for path, what in ((self.ann_file, "COCO-panoptic json"), (self.root, "image folder"),
                           (self.panoptic_root, "panoptic PNG folder")):
            if not path.exists():
                raise FileNotFoundError(f"{what} not found: {path}")
        try:
            data = json.loads(self.ann_file.read_bytes())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.ann_file} is not valid JSON: {e}") from None
        cats, self.images, self.anns = _index(data, self.ann_file)
        self.cat_ids = [c["id"] for c in cats]
        self.cat_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.object_classes = [str(c.get("name", c["id"])) for c in cats]  # every category, things then stuff
        self.num_stuff = sum(not c["isthing"] for c in cats)
        self.num_things = len(cats) - self.num_stuff

    def __len__(self) -> int:
        return len(self.images)

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        """Each segment as one record (its pixels, its label; ``iscrowd`` kept), things and stuff alike."""
        ids, info = self.segments(index, height, width)
        return [Obj(self.cat_to_label[s["category_id"]], mask=ids == s["id"], crowd=bool(s.get("iscrowd", 0)),
                    where=f"segment {s['id']}") for s in info]

    coco_ground_truth = None  # evaluated by its segments (PQ), not as COCO instances

    def png_path(self, index: int) -> Path:
        return self.panoptic_root / self.anns[self.images[index]["id"]]["file_name"]

    def segments(self, index: int, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
        """The image's id map (``H x W`` int64) and its ``segments_info``, checked against each other."""
        ann = self.anns[self.images[index]["id"]]
        path = self.png_path(index)
        ids = read_panoptic(path)
        if ids.shape != (height, width):
            raise DataError(f"{path} is {ids.shape[1]}x{ids.shape[0]} but its image {self.image_path(index)} is "
                            f"{width}x{height}; the PNG must be drawn on the image it annotates")
        info = ann["segments_info"]
        present = set(np.unique(ids).tolist()) - {0}
        listed = {s["id"] for s in info}
        if present - listed:
            raise DataError(f"{path} has segment ids {sorted(present - listed)[:10]} that its segments_info "
                            f"({self.ann_file}, {_where(ann)}) does not list; every non-zero PNG id needs an entry")
        if listed - present:
            raise DataError(f"{self.ann_file}: {_where(ann)} lists segments {sorted(listed - present)[:10]} that "
                            f"{path} does not contain (no pixel has their id)")
        return ids, info

    def load_target(self, index: int, height: int, width: int) -> dict[str, Any]:
        ids, info = self.segments(index, height, width)
        seg_ids = np.array([s["id"] for s in info], dtype=np.int64)
        masks = ids[None] == seg_ids[:, None, None]  # (K, H, W)
        rows, cols = masks.any(2), masks.any(1)  # (K, H), (K, W)
        boxes = np.zeros((len(info), 4), dtype=np.float32)
        if len(info):
            boxes[:, 0], boxes[:, 2] = cols.argmax(1), width - cols[:, ::-1].argmax(1)  # x1, x2 (exclusive)
            boxes[:, 1], boxes[:, 3] = rows.argmax(1), height - rows[:, ::-1].argmax(1)
        return {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([self.cat_to_label[s["category_id"]] for s in info], dtype=torch.int64),
            "masks": tv_tensors.Mask(torch.from_numpy(masks.astype(np.uint8))),
            "iscrowd": torch.tensor([int(s.get("iscrowd", 0)) for s in info], dtype=torch.int64),
            "image_id": self.image_id(index),
        }

    def __getitem__(self, index: int):
        image = read_image(self.image_path(index))
        target = self.load_target(index, *image.shape[-2:])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def check(self, report, num_classes: int, ignore_index: int = 255, allow_empty: bool = False) -> None:
        """Fill a :class:`~segzoo.data.checks.DataReport`: class count, unreadable or mismatched files, empty images."""
        report.num_items = len(self)
        if self.num_classes != num_classes:
            report.errors.append(
                f"{self.ann_file} has {self.num_classes} categories ({self.num_things} things + {self.num_stuff} "
                f"stuff) but num_classes={num_classes}; set model.num_classes={self.num_classes} and "
                f"model.num_stuff={self.num_stuff}")
        found: set[int] = set()
        bad, empty = [], []
        for i in range(len(self)):
            try:
                h, w = image_size(self.image_path(i))
                _, info = self.segments(i, h, w)
            except (OSError, ValueError) as e:
                bad.append(f"{self.images[i]['file_name']} ({e})")
                continue
            found.update(self.cat_to_label[s["category_id"]] for s in info)
            if not info:
                empty.append(self.images[i]["file_name"])
        report.classes_found = sorted(found)
        if bad:
            report.errors.append(f"{len(bad)} images cannot be used: " + "; ".join(bad[:3]))
        if empty:
            (report.warnings if allow_empty else report.errors).append(
                f"{len(empty)} images have no segment (all void): {', '.join(empty[:3])}"
                + ("" if allow_empty else "; remove them or set data.allow_empty: true"))


__all__ = ["CocoPanoptic", "ids_to_rgb", "rgb_to_ids"]
