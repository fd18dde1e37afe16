"""CVAT for images 1.1: one ``annotations.xml`` with an ``<image>`` element per image, and ``images/``.

The layout of CVAT's "CVAT for images 1.1" export (a task, job or project)::

    annotations.xml
        <annotations><version>1.1</version>
          <meta><task> (or <project>, <job>) ... <labels><label><name>car</name>...</labels></meta>
          <image id="0" name="a.jpg" width="640" height="480" [subset="Train"]>
            <box label="car" xtl="1.5" ytl="2" xbr="30" ybr="40" [rotation="15"] occluded="0" z_order="0"/>
            <polygon label="car" points="x1,y1;x2,y2;..." [group_id="3"]/>
            <mask label="car" rle="c0, c1, ..." left="10" top="20" width="30" height="40"/>
            <ellipse label="car" cx="50" cy="60" rx="10" ry="5"/>
            <tag label="night"/>
            ...
    images/a.jpg          (project exports: images/<subset>/a.jpg)

A mask's ``rle`` is run lengths over its ``width x height`` crop in row-major order, starting with
a run of background. Shapes of one label with the same non-zero ``group_id`` are one object.
An ``is_crowd`` attribute set to true marks a crowd (ignore) region, as CVAT's COCO export reads it.
``polyline``, ``points``, ``cuboid``, ``skeleton`` and ``tag`` have no area and are skipped (the data
check counts them).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np

from segzoo.data.base import OBJECT_TARGETS
from segzoo.data.records import AnnotatedImages, Obj, box_polygon, decode_segmentation
from segzoo.data.targets import INSTANCE_MASKS, MULTI_HOT, Target
from segzoo.data.validation import BadObject, check_polygons

PathLike = str | os.PathLike
AREA_SHAPES = ("box", "polygon", "mask", "ellipse")
SKIPPED = ("polyline", "points", "cuboid", "skeleton", "tag")
ELLIPSE_VERTICES = 64


def decode_cvat_rle(rle: str, left: int, top: int, width: int, height: int, img_h: int, img_w: int) -> np.ndarray:
    """A CVAT ``<mask>`` as an ``H x W`` bool array.

    The crop must lie in the image (1 px of slack) and its runs must not add up to more than its
    ``width x height``: both are checked from the numbers, before anything is allocated
    (:class:`~segzoo.data.validation.BadObject` otherwise)."""
    if width < 1 or height < 1 or left < -1 or top < -1 or left + width > img_w + 1 or top + height > img_h + 1:
        raise BadObject("outside", f"<mask> crop {width}x{height} at ({left}, {top}) in a {img_w}x{img_h} image")
    counts = np.asarray([int(float(v)) for v in rle.replace(" ", "").split(",") if v], dtype=np.int64)
    if (counts < 0).any() or int(counts.sum()) > width * height:
        raise BadObject("rle_format", f"<mask> runs add up to {int(counts.sum()):,} pixels (negative runs: "
                                      f"{int((counts < 0).sum())}) but its crop is {width}x{height}")
    flat = np.repeat(np.arange(len(counts)) % 2 == 1, counts)[: width * height]
    flat = np.pad(flat, (0, width * height - len(flat)))
    crop = flat.reshape(height, width)
    out = np.zeros((img_h, img_w), dtype=bool)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, img_h), min(left + width, img_w)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = crop[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def _rotated(points: np.ndarray, cx: float, cy: float, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    d = points - (cx, cy)
    return np.stack([cx + d[:, 0] * c - d[:, 1] * s, cy + d[:, 0] * s + d[:, 1] * c], 1)


def element_polygon(el: ET.Element, where: str) -> list[float] | None:
    """A ``box`` / ``polygon`` / ``ellipse`` element as a flat polygon in pixels (None for a mask)."""
    a = el.attrib
    rot = float(a.get("rotation", 0) or 0)
    try:
        if el.tag == "box":
            x1, y1, x2, y2 = (float(a[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
            pts = np.asarray(box_polygon(x1, y1, x2, y2)).reshape(-1, 2)
            return (_rotated(pts, (x1 + x2) / 2, (y1 + y2) / 2, rot) if rot else pts).reshape(-1).tolist()
        if el.tag == "polygon":
            pts = [float(v) for pair in a["points"].split(";") for v in pair.split(",")]
            if len(pts) < 6:
                raise ValueError(f"{where}: polygon {a.get('label')!r} has fewer than 3 points")
            return pts
        if el.tag == "ellipse":
            cx, cy, rx, ry = (float(a[k]) for k in ("cx", "cy", "rx", "ry"))
            t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
            pts = np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)
            return (_rotated(pts, cx, cy, rot) if rot else pts).reshape(-1).tolist()
    except (KeyError, ValueError) as e:
        if isinstance(e, ValueError) and where in str(e):
            raise
        raise ValueError(f"{where}: <{el.tag}> has missing or malformed coordinates ({e})") from None
    return None


def _int_or_text(value: str | None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def _is_crowd(el: ET.Element) -> bool:
    return any(at.get("name") in ("is_crowd", "iscrowd") and (at.text or "").strip().lower() in ("true", "1")
               for at in el.findall("attribute"))


class CVAT(AnnotatedImages):
    """A "CVAT for images 1.1" export.

    Args:
        root: the export folder (``annotations.xml`` + ``images/``) or the xml file.
        target: ``INSTANCE_MASKS``, ``BOXES`` or ``CLASS_MAP`` (:mod:`segzoo.data.targets`).
        subset: keep the images of one project subset (``<image subset=...>``, e.g. ``Train``).
        classes: class names in label order (``data.classes``): the object classes for instance and
            detection, every label with background first for semantic (:func:`split_classes`);
            default: the ``<labels>`` of ``<meta>`` in file order, else the labels used, sorted.
        images: the image folder (default ``images/`` beside the xml, or the xml's folder).
        transforms: a joint transform ``transforms(image, target)``.
        ignore_index: semantic label of crowd regions.
    """

    targets = (*OBJECT_TARGETS, MULTI_HOT)  # multi-label models: overlapping regions kept
    config_keys = ("root", "subset", "classes", "images", "ignore_index")
    config_paths = ("root", "images")

    def __init__(self, root: PathLike, target: Target = INSTANCE_MASKS, subset: str | None = None,
                 classes: list[str] | None = None, images: PathLike | None = None, transforms=None,
                 ignore_index: int = 255) -> None:
        super().__init__(target, transforms, ignore_index)
        classes = self.set_classes(classes)
        root = Path(root)
        self.xml = root / "annotations.xml" if root.is_dir() else root
        if not self.xml.is_file():
            raise FileNotFoundError(f"CVAT annotations not found: {self.xml} (export 'CVAT for images 1.1')")
        try:
            doc = ET.parse(self.xml).getroot()
        except ET.ParseError as e:
            raise ValueError(f"{self.xml} is not valid XML: {e}") from None
        if doc.tag != "annotations" or doc.find("image") is None and doc.find("track") is not None:
            raise ValueError(f"{self.xml} is not a 'CVAT for images' file (root <{doc.tag}>, video tracks?); export "
                             "the task as 'CVAT for images 1.1'")
        folder = self.xml.parent / "images"
        self.images_dir = Path(images) if images is not None else (folder if folder.is_dir() else self.xml.parent)
        self.entries = [im for im in doc.findall("image") if subset is None or im.get("subset") == subset]
        if not self.entries:
            have = sorted({im.get("subset") for im in doc.findall("image") if im.get("subset")})
            raise ValueError(f"{self.xml} has no <image> entries" + (f" in subset {subset!r} (subsets: {have})"
                                                                    if subset else ""))
        meta = doc.find("meta")
        declared = [lb.findtext("name") for lb in meta.findall(".//labels/label")] if meta is not None else []
        used = sorted({el.get("label") for im in self.entries for el in im if el.tag in AREA_SHAPES})
        if classes is None:
            classes = [n for n in declared if n] or used
            self.classes_inferred = not declared
        self.object_classes = [str(c) for c in classes]
        self.check_class_names(used)
        unknown = sorted(set(used) - set(self.object_classes) - {self.background_name})
        if unknown:
            self.problems.append(f"shapes use labels {unknown} that are not in the classes {self.object_classes}")
        skipped = Counter(el.tag for im in self.entries for el in im if el.tag in SKIPPED)
        if skipped:
            self.notices.append("elements without area were skipped: " +
                                ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())))

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, index: int) -> Path:
        im = self.entries[index]
        name = im.get("name", "")
        direct = self.images_dir / name
        if not direct.is_file() and im.get("subset") and (self.images_dir / im.get("subset") / name).is_file():
            return self.images_dir / im.get("subset") / name
        return direct

    def declared_hw(self, index: int) -> tuple[int, int] | None:
        """The ``<image>`` element's ``height`` and ``width`` (checked against the image file)."""
        im = self.entries[index]
        if im.get("height") is None and im.get("width") is None:
            return None
        return _int_or_text(im.get("height")), _int_or_text(im.get("width"))

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        im = self.entries[index]
        where = f"{self.xml} image {im.get('name')!r}"
        label_of = {c: k for k, c in enumerate(self.object_classes)}
        groups: dict[tuple, list[ET.Element]] = {}
        for n, el in enumerate(im):
            if el.tag not in AREA_SHAPES:
                continue
            name = el.get("label")
            if name not in label_of:
                raise ValueError(f"{where}: label {name!r} is not one of the classes {self.object_classes}")
            gid = int(el.get("group_id", 0) or 0)
            groups.setdefault((name, gid if gid else ("shape", n)), []).append(el)
        out = []
        for (name, key), els in groups.items():
            at = f"<{els[0].tag}> {key[1] + 1}" if isinstance(key, tuple) else f"group_id {key}"
            crowd = any(_is_crowd(el) for el in els)
            polys = [p for p in (element_polygon(el, where) for el in els) if p is not None]
            masks = [self._mask(el, height, width, f"{where} {at}") for el in els if el.tag == "mask"]
            if masks:
                m = np.logical_or.reduce(masks)
                if polys:
                    check_polygons(polys, height, width, f"{where} {at}")  # before they are rasterised
                    m |= decode_segmentation(polys, height, width).astype(bool)
                out.append(Obj(label_of[name], mask=m, crowd=crowd, where=at))
            elif len(els) == 1 and els[0].tag == "box" and not float(els[0].get("rotation", 0) or 0):
                a = els[0].attrib
                box = tuple(float(a[k]) for k in ("xtl", "ytl", "xbr", "ybr"))
                out.append(Obj(label_of[name], box=box, crowd=crowd, where=at))
            else:
                out.append(Obj(label_of[name], segmentation=polys, crowd=crowd, where=at))
        return out

    @staticmethod
    def _mask(el: ET.Element, height: int, width: int, where: str) -> np.ndarray:
        try:
            left, top, w, h = (int(float(el.get(k))) for k in ("left", "top", "width", "height"))
            return decode_cvat_rle(el.get("rle", ""), left, top, w, h, height, width)
        except BadObject as e:
            raise BadObject(e.kind, f"{where}: {e.detail}") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{where}: <mask> needs rle, left, top, width and height ({e})") from None

    def item_name(self, index: int) -> str:
        return str(self.entries[index].get("name"))
