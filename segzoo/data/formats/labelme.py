"""LabelMe json files: one ``NAME.json`` per image, beside it (what the ``labelme`` tool saves).

Each file holds ``imagePath`` (relative to the json), optional ``imageData`` (the image, base64),
``imageHeight``/``imageWidth`` and ``shapes``: ``label``, ``points`` (``[[x, y], ...]`` in pixels),
``shape_type`` and ``group_id``. Shapes with the same label and ``group_id`` are one object
(``group_id: null`` is an object of its own), as ``labelme2coco`` reads them. Supported shape types:
``polygon``, ``rectangle`` (two corners), ``circle`` (centre and a point on the circle) and
``mask`` (two corners and a base64 PNG of the pixels between them); ``line``, ``linestrip`` and
``point`` have no area and are skipped (the data check says how many). The label ``__ignore__``
marks regions to ignore (crowd), ``_background_`` is skipped, as in labelme's own converters.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision import tv_tensors

from segzoo.data.base import OBJECT_TARGETS
from segzoo.data.image import image_from_pil
from segzoo.data.records import AnnotatedImages, Obj, box_polygon, decode_segmentation, polygon_from_points
from segzoo.data.targets import INSTANCE_MASKS, MULTI_HOT, Target
from segzoo.data.validation import BadObject, check_polygons

PathLike = str | os.PathLike
IGNORE_LABEL, BACKGROUND_LABEL = "__ignore__", "_background_"
AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")
CIRCLE_VERTICES = 64


def shape_polygon(shape: dict, where: str) -> list[float] | None:
    """A polygon / rectangle / circle shape as a flat polygon in pixels (None for a mask shape)."""
    kind = shape.get("shape_type") or "polygon"
    pts = np.asarray(shape.get("points") or [], dtype=np.float64).reshape(-1, 2)
    if kind == "polygon":
        if len(pts) < 3:
            raise ValueError(f"{where}: polygon {shape.get('label')!r} has {len(pts)} points; it needs at least 3")
        return polygon_from_points(pts)
    if kind == "rectangle":
        if len(pts) < 2:
            raise ValueError(f"{where}: rectangle {shape.get('label')!r} needs two corner points")
        (x1, y1), (x2, y2) = pts[:2].min(0), pts[:2].max(0)
        return box_polygon(x1, y1, x2, y2)
    if kind == "circle":
        if len(pts) != 2:
            raise ValueError(f"{where}: circle {shape.get('label')!r} needs its centre and a point on it")
        (cx, cy), (px, py) = pts
        r = math.hypot(px - cx, py - cy)
        t = np.linspace(0, 2 * np.pi, CIRCLE_VERTICES, endpoint=False)
        return polygon_from_points(np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1))
    return None


def shape_mask(shape: dict, height: int, width: int, where: str) -> np.ndarray:
    """A ``mask`` shape's pixels placed in an ``H x W`` bool array.

    Its crop must lie in the image (1 px of slack); this is checked from the embedded PNG's header,
    before it is decoded."""
    pts = np.asarray(shape.get("points") or [], dtype=np.float64).reshape(-1, 2)
    if len(pts) != 2 or not shape.get("mask") or not np.isfinite(pts).all():
        raise ValueError(f"{where}: mask shape {shape.get('label')!r} needs two finite corner points and base64 "
                         "'mask' data")
    x1, y1 = (int(round(v)) for v in pts.min(0))
    with Image.open(io.BytesIO(base64.b64decode(shape["mask"]))) as im:
        mw, mh = im.size
        if x1 < -1 or y1 < -1 or x1 + mw > width + 1 or y1 + mh > height + 1:
            raise BadObject("outside", f"{where}: mask shape {shape.get('label')!r} of {mw}x{mh} pixels at "
                                       f"({x1}, {y1}) in a {width}x{height} image")
        pixels = np.asarray(im.convert("L")) > 0
    x0, y0 = max(x1, 0), max(y1, 0)
    out = np.zeros((height, width), dtype=bool)
    crop = pixels[y0 - y1: height - y1, x0 - x1: width - x1]
    out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return out


class LabelMe(AnnotatedImages):
    """A folder of LabelMe json files (searched recursively) with their images.

    Args:
        root: the folder.
        target: ``INSTANCE_MASKS``, ``BOXES`` or ``CLASS_MAP`` (:mod:`segzoo.data.targets`).
        classes: class names in label order (``data.classes``): the object classes for instance and
            detection, every label with background first for semantic (:func:`split_classes`);
            default ``labels.txt`` in ``root`` or its parent (labelme's convention: one name per
            line, ``__ignore__`` and ``_background_`` skipped), else the labels found, sorted.
        transforms: a joint transform ``transforms(image, target)``.
        ignore_index: semantic label of ``__ignore__`` regions.
    """

    targets = (*OBJECT_TARGETS, MULTI_HOT)  # multi-label models: overlapping regions kept
    config_keys = ("root", "classes", "ignore_index")

    def __init__(self, root: PathLike, target: Target = INSTANCE_MASKS, classes: list[str] | None = None,
                 transforms=None, ignore_index: int = 255) -> None:
        super().__init__(target, transforms, ignore_index)
        classes = self.set_classes(classes)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"LabelMe folder not found: {self.root}")
        self.files: list[Path] = []
        self.docs: list[dict] = []
        skipped_json, skipped_shapes = [], Counter()
        for path in sorted(self.root.rglob("*.json")):
            try:
                doc = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                self.problems.append(f"{path} is not valid JSON: {e}")
                continue
            if not isinstance(doc, dict) or "shapes" not in doc or "imagePath" not in doc:
                skipped_json.append(path.name)
                continue
            for s in doc["shapes"]:
                if (s.get("shape_type") or "polygon") not in AREA_SHAPES:
                    skipped_shapes[s.get("shape_type")] += 1
            self.files.append(path)
            self.docs.append(doc)
        if not self.files:
            raise ValueError(f"no LabelMe json files (with 'shapes' and 'imagePath') under {self.root}")
        if skipped_json:
            self.notices.append(f"{len(skipped_json)} json files are not LabelMe annotations and were skipped: "
                                f"{skipped_json[:3]}")
        if skipped_shapes:
            self.notices.append("shapes without area were skipped: " +
                                ", ".join(f"{n} {k}" for k, n in sorted(skipped_shapes.items())))
        found = sorted({str(s.get("label")) for d in self.docs for s in d["shapes"]} - {IGNORE_LABEL, BACKGROUND_LABEL})
        if classes is None:
            listed = next((p for p in (self.root / "labels.txt", self.root.parent / "labels.txt") if p.is_file()), None)
            if listed is not None:
                classes = [n.strip() for n in listed.read_text().splitlines()
                           if n.strip() and n.strip() not in (IGNORE_LABEL, BACKGROUND_LABEL)]
            else:
                classes, self.classes_inferred = found, True
        self.object_classes = [str(c) for c in classes]
        self.check_class_names(found)
        unknown = sorted(set(found) - set(self.object_classes) - {self.background_name})
        if unknown:
            self.problems.append(f"labels {unknown} are not in the classes {self.object_classes}; add them to "
                                 "data.classes (or labels.txt)")

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        rel = str(self.docs[index]["imagePath"]).replace("\\", "/")
        return self.files[index].parent / rel

    def declared_hw(self, index: int) -> tuple[int, int] | None:
        """``imageHeight``/``imageWidth`` of the json (checked against the image)."""
        doc = self.docs[index]
        if doc.get("imageHeight") is None and doc.get("imageWidth") is None:
            return None
        return doc.get("imageHeight"), doc.get("imageWidth")

    def image_hw(self, index: int) -> tuple[int, int]:
        doc = self.docs[index]
        if not self.image_path(index).is_file() and doc.get("imageData"):
            return tuple(self.load_image(index).shape[-2:])
        return super().image_hw(index)

    def load_image(self, index: int) -> tv_tensors.Image:
        path = self.image_path(index)
        data = self.docs[index].get("imageData")
        if path.is_file() or not data:
            return super().load_image(index)
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:  # the image embedded in the json
            return image_from_pil(im, f"{self.files[index]} (imageData)")  # the one reader's rules, EXIF included

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        where = str(self.files[index])
        label_of = {c: k for k, c in enumerate(self.object_classes)}
        groups: dict[tuple, list[dict]] = {}
        for n, s in enumerate(self.docs[index]["shapes"]):
            name = str(s.get("label"))
            if name == BACKGROUND_LABEL or (s.get("shape_type") or "polygon") not in AREA_SHAPES:
                continue
            if name != IGNORE_LABEL and name not in label_of:
                raise ValueError(f"{where}: label {name!r} is not one of the classes {self.object_classes}")
            gid = s.get("group_id")
            groups.setdefault((name, ("shape", n) if gid is None else ("group", gid)), []).append(s)
        out = []
        for (name, (kind, n)), shapes in groups.items():
            at = f"shape {n + 1}" if kind == "shape" else f"group {n}"
            polys = [p for p in (shape_polygon(s, where) for s in shapes) if p is not None]
            masks = [shape_mask(s, height, width, where) for s in shapes if s.get("shape_type") == "mask"]
            label, crowd = (0, True) if name == IGNORE_LABEL else (label_of[name], False)
            if masks:
                m = np.logical_or.reduce(masks)
                if polys:
                    check_polygons(polys, height, width, f"{where} {at}")  # before they are rasterised
                    m |= decode_segmentation(polys, height, width).astype(bool)
                out.append(Obj(label, mask=m, crowd=crowd, where=at))
            else:
                out.append(Obj(label, segmentation=polys, crowd=crowd, where=at))
        return out

    def item_name(self, index: int) -> str:
        return self.files[index].name
