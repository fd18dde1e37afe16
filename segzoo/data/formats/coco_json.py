"""Validation of COCO ``instances`` json files. Every problem names the image id and the annotation id.

Two levels of problems:

* **Index problems** leave an annotation without a place: a missing required key, an id that
  is not an integer, two images or two categories with one id, an annotation that names an
  image or category that does not exist. :func:`index_coco` refuses them. The datasets call it,
  so no data trains on them, even with ``data.check: false``.
* **Content problems** concern one annotation's numbers: a malformed or non-finite bbox, a
  polygon with fewer than 3 points (its mask would be empty), an RLE whose size is not its
  image's, and so on. :func:`annotation_problems` finds them. ``segzoo data check`` and the
  trainer report every one of them before training, and loading an image refuses it when its
  annotations have one of the kinds marked ``"error"``.

Two annotations with one id, and an image file listed twice, are reported by the checks only:
training on them gives correct targets, but COCO evaluation does not.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from segzoo.data.errors import DataError
from segzoo.data.image import image_size

MAX_POLYGON_POINTS = 1_000_000  # per annotation: bounds what rasterising its polygons allocates
REQUIRED = {"image": ("id", "file_name"), "annotation": ("id", "image_id", "category_id"), "category": ("id",)}
INT_KEYS = {"image": ("id",), "annotation": ("id", "image_id", "category_id"), "category": ("id",)}

# kind -> (severity, what the problem is, how to fix it). The severity decides what happens:
# "error" is a data-check error and the image is refused when loaded; "report" is a data-check
# error only (training transforms drop such boxes); "warning" is a data-check warning.
KINDS: dict[str, tuple[str, str, str]] = {
    "iscrowd": ("error", "annotations whose iscrowd is not 0 or 1", "set iscrowd to 0 (object) or 1 (crowd region)"),
    "bbox_format": ("error", "annotations without a bbox of 4 numbers",
                    "COCO bbox is [x, y, width, height] in pixels"),
    "non_finite": ("error", "annotations with NaN or infinite numbers", "fix the export: every coordinate must be "
                   "a finite number"),
    "area": ("error", "annotations whose area is not a finite number >= 0", "fix or drop the 'area' field"),
    "bbox_size": ("report", "boxes with zero or negative width/height",
                  "COCO bbox is [x, y, width, height]: was it exported as [x1, y1, x2, y2]?"),
    "segm_missing": ("error", "annotations without a segmentation although the task needs masks",
                     "add polygons or RLE to them, or train a detection model"),
    "segm_format": ("error", "segmentations that are neither polygons nor RLE",
                    "use [[x1, y1, x2, y2, ...], ...] or {'size': [height, width], 'counts': ...}"),
    "polygon_format": ("error", "malformed polygons", "a segmentation is a list of polygons, each a flat list "
                       "[x1, y1, x2, y2, ...] with an even number of coordinates"),
    "polygon_points": ("error", "annotations whose polygons all have fewer than 3 points (their mask would be "
                       "empty)", "redraw or remove these annotations"),
    "polygon_size": ("error", "polygons with more points than an annotation can hold",
                     f"an object's polygons hold at most {MAX_POLYGON_POINTS:,} points: simplify them, or store a "
                     "mask (RLE)"),
    "polygon_far": ("error", "polygons reaching far outside their image (rasterising them would allocate memory in "
                    "proportion to their length)", "fix the export's coordinates: polygons are in pixels of this "
                    "image"),
    "polygon_part": ("warning", "polygon parts with fewer than 3 points, left out of the masks (they cover no "
                     "area)", "remove them from the export"),
    "rle_format": ("error", "malformed RLE segmentations", "RLE is {'size': [height, width], 'counts': [...]} "
                   "with counts adding up to height * width, or a compressed counts string"),
    "rle_size": ("error", "RLE masks whose size is not their image's",
                 "an RLE's size is [height, width] of the image it was drawn on: re-export it for this image"),
    "image_size": ("error", "images whose width/height in the json differ from the image file",
                   "COCO width and height are the size of the image as displayed, EXIF orientation applied (as "
                   "CVAT, LabelMe and detectron2 read it): fix them, or use the images the annotations were drawn on"),
    "duplicate_annotation_id": ("report", "annotations that share an id with another",
                                "give every annotation its own id (COCO evaluation indexes them by id)"),
    "duplicate_file": ("report", "image files listed under two image ids",
                       "merge the two entries: each id would train with half of the objects"),
    "duplicate_category_name": ("warning", "category names used by several categories",
                                "they train as separate classes; merge them if they are one"),
}
INDEX_PROBLEMS = {
    "not_object": ("entries that are not JSON objects", "images, annotations and categories are lists of objects"),
    "missing_key": ("entries without a required key", "every image needs id and file_name, every annotation "
                    "id, image_id and category_id, every category id"),
    "bad_id": ("ids that are not integers", "COCO ids are integers"),
    "bad_file_name": ("images whose file_name is not a string", "file_name is a path relative to the image folder"),
    "duplicate_image_id": ("image ids used by several images", "give every image its own id: annotations find "
                           "their image by id, so one image would train with the other's objects"),
    "duplicate_category_id": ("category ids used by several categories", "give every category its own id"),
    "unknown_image": ("annotations naming an image id that is not in 'images'",
                      "add the images or remove these annotations"),
    "unknown_category": ("annotations naming a category id that is not in 'categories'",
                         "add the categories or remove these annotations"),
}


def examples(items: list, n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return "; ".join(str(i) for i in items[:n]) + more


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def image_where(image: dict) -> str:
    return f"image {image.get('id')} ({image.get('file_name')})"


def ann_where(ann: dict, image: dict | None = None) -> str:
    ann_id = f"annotation {ann['id']}" if "id" in ann else "annotation (no id)"
    return f"{image_where(image)} {ann_id}" if image is not None else ann_id


@dataclasses.dataclass
class CocoIndex:
    """A validated COCO file: images and categories sorted by id, annotations grouped by image id.

    ``problems`` maps each reported kind (``duplicate_annotation_id``, ``duplicate_file``) to its
    examples.
    """

    images: list[dict]
    categories: list[dict]
    anns: dict[int, list[dict]]
    problems: dict[str, list[str]]


def index_coco(data: Any, ann_file: Path) -> CocoIndex:
    """Index a parsed COCO json. Raises a DataError listing every index problem (see the module docstring)."""
    if not isinstance(data, dict):
        raise DataError(f"{ann_file} holds a JSON {type(data).__name__}, not a COCO object with 'images', "
                        "'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            problem = "no" if key not in data else f"a {type(data[key]).__name__} instead of a"
            raise DataError(f"{ann_file} has {problem} {key!r} list; it is not a COCO instances file")
    fatal: dict[str, list[str]] = defaultdict(list)

    def entries(key: str, what: str) -> list[dict]:
        out = []
        for i, e in enumerate(data[key]):
            label = f"{what} #{i}" + (f" (id {e['id']!r})" if isinstance(e, dict) and "id" in e else "")
            if not isinstance(e, dict):
                fatal["not_object"].append(f"{label} is a {type(e).__name__}")
                continue
            missing = [k for k in REQUIRED[what] if k not in e]
            if missing:
                fatal["missing_key"].append(f"{label} has no {', '.join(repr(k) for k in missing)}")
                continue
            bad = [f"{k}={e[k]!r}" for k in INT_KEYS[what] if not _is_int(e[k])]
            if bad:
                fatal["bad_id"].append(f"{label}: {', '.join(bad)}")
                continue
            if what == "image" and not isinstance(e["file_name"], str):
                fatal["bad_file_name"].append(f"{label}: file_name={e['file_name']!r}")
                continue
            out.append(e)
        return out

    images, annotations, categories = entries("images", "image"), entries("annotations", "annotation"), \
        entries("categories", "category")
    by_id: dict[int, dict] = {}
    for im in images:
        if im["id"] in by_id:
            fatal["duplicate_image_id"].append(f"id {im['id']}: {by_id[im['id']]['file_name']} and {im['file_name']}")
        by_id.setdefault(im["id"], im)
    cat_ids = Counter(c["id"] for c in categories)
    fatal["duplicate_category_id"] += [f"id {c} ({n} categories)" for c, n in sorted(cat_ids.items()) if n > 1]
    anns: dict[int, list[dict]] = {i: [] for i in by_id}
    for a in annotations:
        if a["image_id"] not in by_id:
            fatal["unknown_image"].append(f"{ann_where(a)} -> image_id {a['image_id']}")
        elif a["category_id"] not in cat_ids:
            fatal["unknown_category"].append(f"{ann_where(a, by_id[a['image_id']])} -> category_id {a['category_id']}")
        else:
            anns[a["image_id"]].append(a)
    fatal = {k: v for k, v in fatal.items() if v}
    if fatal:
        lines = [f"{len(v)} {INDEX_PROBLEMS[k][0]} ({examples(v)}): {INDEX_PROBLEMS[k][1]}" for k, v in fatal.items()]
        raise DataError(f"{ann_file} cannot be used:\n" + "\n".join(f"  - {line}" for line in lines))
    problems: dict[str, list[str]] = {}
    ann_ids = Counter(a["id"] for a in annotations)
    dup_ids = [f"annotation id {i} ({n} annotations)" for i, n in sorted(ann_ids.items()) if n > 1]
    files = Counter(im["file_name"] for im in by_id.values())
    dup_files = [f"{f} ({n} image ids)" for f, n in sorted(files.items()) if n > 1]
    if dup_ids:
        problems["duplicate_annotation_id"] = dup_ids
    if dup_files:
        problems["duplicate_file"] = dup_files
    names = Counter(str(c.get("name", c["id"])) for c in categories)
    dup_names = [f"{n!r} ({k} categories)" for n, k in sorted(names.items()) if k > 1]
    if dup_names:
        problems["duplicate_category_name"] = dup_names
    return CocoIndex(images=sorted(by_id.values(), key=lambda im: im["id"]),
                     categories=sorted(categories, key=lambda c: c["id"]), anns=anns, problems=problems)


def annotation_problems(ann: dict, size: tuple[int, int] | None, needs_bbox: bool, needs_segm: bool
                        ) -> list[tuple[str, str]]:
    """The content problems of one annotation as ``(kind, detail)`` pairs (kinds in :data:`KINDS`).

    Args:
        ann: the annotation.
        size: ``(height, width)`` of its image, for RLE sizes; None to skip that check.
        needs_bbox: the task uses boxes (instance, detection); crowd regions need none.
        needs_segm: the task uses masks (instance, semantic).
    """
    out = []
    crowd = ann.get("iscrowd", 0)
    if crowd not in (0, 1):  # True and False compare equal to 1 and 0
        out.append(("iscrowd", f"iscrowd={crowd!r}"))
    bbox = ann.get("bbox")
    if not needs_bbox or (bbox is None and crowd):
        pass
    elif bbox is None:
        out.append(("bbox_format", "has no 'bbox'"))
    elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        out.append(("bbox_format", f"bbox {_short(bbox)}"))
    elif not all(math.isfinite(v) for v in bbox):
        out.append(("non_finite", f"bbox {bbox}"))
    elif not crowd and (bbox[2] <= 0 or bbox[3] <= 0):
        out.append(("bbox_size", f"bbox xywh {bbox}"))
    area = ann.get("area")
    if area is not None and not (_is_number(area) and math.isfinite(area) and area >= 0):
        out.append(("area", f"area={area!r}"))
    if needs_segm:
        out += segmentation_problems(ann.get("segmentation"), size)
    return out


def segmentation_problems(segm: Any, size: tuple[int, int] | None) -> list[tuple[str, str]]:
    """The problems of one COCO ``segmentation`` (polygons or RLE) as ``(kind, detail)`` pairs."""
    if segm is None or (isinstance(segm, (list, dict)) and not segm):
        return [("segm_missing", f"segmentation={segm!r}")]
    if isinstance(segm, list):
        if all(_is_number(v) for v in segm):
            return [("polygon_format", f"segmentation {_short(segm)} is one flat list; wrap it: [[x1, y1, ...]]")]
        for poly in segm:
            if not (isinstance(poly, list) and all(_is_number(v) for v in poly)):
                return [("polygon_format", f"polygon {_short(poly)} is not a list of numbers")]
            if len(poly) % 2:
                return [("polygon_format", f"polygon {_short(poly)} has an odd number of coordinates ({len(poly)})")]
            if not all(math.isfinite(v) for v in poly):
                return [("non_finite", f"polygon {_short(poly)}")]
        if sum(len(p) for p in segm) > 2 * MAX_POLYGON_POINTS:
            return [("polygon_size", f"{sum(len(p) for p in segm) // 2:,} points")]
        if size is not None:
            far = _far_outside(segm, size)
            if far:
                return [("polygon_far", far)]
        short = [p for p in segm if len(p) < 6]
        if len(short) == len(segm):
            return [("polygon_points", f"polygon {_short(short[0])} has {len(short[0]) // 2} points")]
        if short:
            return [("polygon_part", f"{len(short)} of {len(segm)} polygon parts")]
        return []
    if isinstance(segm, dict):
        counts, rle_size = segm.get("counts"), segm.get("size")
        if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(_is_int(v) and v >= 0 for v in rle_size)):
            return [("rle_format", f"RLE size {_short(rle_size)} is not [height, width]")]
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                return [("rle_format", f"RLE counts {_short(counts)} are not non-negative integers")]
            if sum(counts) != rle_size[0] * rle_size[1]:
                return [("rle_format", f"RLE counts add up to {sum(counts)} pixels but its size {rle_size} has "
                         f"{rle_size[0] * rle_size[1]}")]
        elif isinstance(counts, (str, bytes)):
            runs = rle_string_counts(counts.decode("ascii", "replace") if isinstance(counts, bytes) else counts)
            if runs is None:
                return [("rle_format", f"compressed RLE counts {_short(counts)} are not a valid COCO RLE string")]
            if sum(runs) != rle_size[0] * rle_size[1]:
                return [("rle_format", f"compressed RLE counts add up to {sum(runs)} pixels but its size {rle_size} "
                         f"has {rle_size[0] * rle_size[1]}")]
        else:
            return [("rle_format", f"RLE counts {_short(counts)} are neither a list nor a string")]
        if size is not None and tuple(rle_size) != tuple(size):
            return [("rle_size", f"RLE size [height, width] = {rle_size} but the image is {size[1]}x{size[0]} "
                     f"(width x height)")]
        return []
    return [("segm_format", f"segmentation is a {type(segm).__name__}")]


def _far_outside(polygons: list[list], size: tuple[int, int]) -> str | None:
    """A detail when a polygon reaches more than one image size beyond the image (None when it does not)."""
    h, w = size
    for poly in polygons:
        xs, ys = poly[0::2], poly[1::2]
        if xs and (min(xs) < -w - 1 or max(xs) > 2 * w + 1 or min(ys) < -h - 1 or max(ys) > 2 * h + 1):
            return (f"polygon spans x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g} in a {w}x{h} image")
    return None


def rle_string_counts(text: str) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string, or None when it is malformed.

    The format is pycocotools' ``rleToString``: each run is a little-endian sequence of 5-bit
    groups stored as ``chr(48 + group)``, with bit 0x20 meaning "more groups follow" and bit 0x10
    of the last group the sign; from the third run on, runs are stored as differences to the run
    two places before. pycocotools decodes malformed strings into garbage masks without an
    error, so they are checked here.
    """
    counts: list[int] = []
    x = k = 0
    for ch in text:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            return None
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:
            continue
        if c & 0x10:
            x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        if x < 0:
            return None
        counts.append(x)
        x = k = 0
    return None if k else counts


def group(kind: str, items: list[str], prefix: str = "") -> str:
    """One report line: how many, what, examples, how to fix it."""
    if kind in KINDS:
        _, title, hint = KINDS[kind]
    else:
        title, hint = INDEX_PROBLEMS[kind]
    return f"{prefix}{len(items)} {title} ({examples(items)}): {hint}"


class JsonImages:
    """The image side of a COCO-style reader (instances and panoptic): ``self.root`` and the json's
    ``self.images`` entries give each image's path, size and id."""

    root: Path
    images: list[dict]

    def image_path(self, index: int) -> Path:
        return self.root / self.images[index]["file_name"]

    def image_hw(self, index: int) -> tuple[int, int]:
        """``(height, width)`` from the json where it gives both, else from the image file's header."""
        info = self.images[index]
        h, w = info.get("height"), info.get("width")
        if isinstance(h, (int, float)) and isinstance(w, (int, float)) and not isinstance(h, bool):
            return int(h), int(w)
        return image_size(self.image_path(index))

    def image_id(self, index: int) -> int:
        return int(self.images[index]["id"])
