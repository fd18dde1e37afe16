"""The one validation of parsed annotations that every format reader feeds (VOC, YOLO, LabelMe, CVAT, ...).

Each reader parses its files into :class:`~segzoo.data.records.Obj` records and may declare the
image size its files state (VOC ``<size>``, CVAT ``width``/``height``, LabelMe
``imageHeight``/``imageWidth``). :func:`object_problems` and :func:`size_problem` check them against
the image as read, with the COCO reader's rules (:mod:`segzoo.data.formats.coco_json`, whose polygon and
RLE checks are reused as they are):

* a declared size that differs from the image file;
* NaN or infinite coordinates, malformed polygons or RLE, RLE masks whose size is not the image's,
  polygons with too many points or reaching far outside the image (refused before a mask is
  allocated);
* pixel masks whose size is not the image's;
* boxes and shapes outside the image, boxes without area.

Each problem is a ``(kind, detail)`` pair; :data:`KINDS` gives its severity, title and fix.
``"error"`` kinds are refused when the image is loaded for training (so ``data.check: false``
never trains on them) and reported by ``segzoo data check``; ``"report"`` kinds are data-check
errors only (the trainer runs the check; transforms clip such boxes); ``"warning"`` kinds are
warnings.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from segzoo.data.errors import DataError
from segzoo.data.formats import coco_json

OUTSIDE_SLACK = 1.0  # pixels a box or shape may exceed the image by (rounding of exports)

KINDS: dict[str, tuple[str, str, str]] = {
    **{k: coco_json.KINDS[k] for k in ("non_finite", "segm_format", "polygon_format", "polygon_points",
                                       "polygon_size", "polygon_far", "polygon_part", "rle_format", "rle_size")},
    "image_size": ("error", "images whose size in the annotation file differs from the image file",
                   "the annotation's width and height are the size of the image as displayed (EXIF orientation "
                   "applied): fix them, or use the images the annotations were drawn on"),
    "box_format": ("error", "boxes that are not 4 numbers", "a box is (x1, y1, x2, y2) in pixels"),
    "mask_size": ("error", "pixel masks whose size is not their image's",
                  "re-export the masks for these images"),
    "outside": ("report", "boxes or shapes outside their image",
                "check the export's coordinate convention (pixels of this image; YOLO: normalised to [0, 1])"),
    "box_far": ("error", "boxes reaching far outside their image (rasterising them would allocate memory in "
                "proportion to their size)", "fix the export's coordinates: boxes are in pixels of this image"),
    "degenerate": ("report", "boxes with zero or negative width/height", "redraw or remove these objects"),
}


class BadObject(DataError):
    """A reader met an object it cannot turn into a target (a mask crop outside the image, an RLE longer than
    its crop): raised before anything is allocated; the data check reports it under its kind."""

    def __init__(self, kind: str, detail: str) -> None:
        _, title, hint = KINDS[kind]
        super().__init__(f"{detail} (one of the {title}); {hint}")
        self.kind, self.detail = kind, detail


def _numbers(values: Any) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def size_problem(declared: tuple[Any, Any] | None, height: int, width: int) -> tuple[str, str] | None:
    """``("image_size", detail)`` when the annotation file's ``(height, width)`` is not the image's."""
    if declared is None:
        return None
    dh, dw = declared
    if (dh, dw) != (height, width):
        return ("image_size", f"the annotation says width x height {dw}x{dh} but the image file is {width}x{height}")
    return None


def _extent_problem(x1: float, y1: float, x2: float, y2: float, height: int, width: int,
                    what: str) -> tuple[str, str] | None:
    shown = [round(v, 2) for v in (x1, y1, x2, y2)]
    if x1 < -OUTSIDE_SLACK or y1 < -OUTSIDE_SLACK or x2 > width + OUTSIDE_SLACK or y2 > height + OUTSIDE_SLACK:
        return ("outside", f"{what} {shown} in a {width}x{height} image")
    return None


def object_problems(obj: Any, height: int, width: int) -> list[tuple[str, str]]:
    """The problems of one parsed object (an :class:`~segzoo.data.records.Obj`) in an image of this size.

    Only the object's numbers are read: nothing is rasterised, so a hostile polygon or RLE costs
    nothing here.
    """
    out: list[tuple[str, str]] = []
    if obj.box is not None:
        box = tuple(obj.box)
        if len(box) != 4 or not _numbers(box):
            return [("box_format", f"box {box!r}")]
        if not all(math.isfinite(float(v)) for v in box):
            return [("non_finite", f"box {[float(v) for v in box]}")]
        x1, y1, x2, y2 = (float(v) for v in box)
        if min(x1, x2) < -width - 1 or max(x1, x2) > 2 * width + 1 or min(y1, y2) < -height - 1 or \
                max(y1, y2) > 2 * height + 1:
            return [("box_far", f"box {[round(v, 2) for v in (x1, y1, x2, y2)]} in a {width}x{height} image")]
        if x2 <= x1 or y2 <= y1:
            out.append(("degenerate", f"box {[round(v, 2) for v in (x1, y1, x2, y2)]}"))
        else:
            problem = _extent_problem(x1, y1, x2, y2, height, width, "box")
            out += [problem] if problem else []
    if obj.segmentation is not None:
        segm = obj.segmentation
        found = [(k, d) for k, d in coco_json.segmentation_problems(segm, (height, width)) if k in KINDS]
        out += found
        if not found and isinstance(segm, list) and segm:
            pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in segm if len(p) >= 2])
            if len(pts):
                (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
                problem = _extent_problem(float(x1), float(y1), float(x2), float(y2), height, width, "polygon")
                out += [problem] if problem and obj.box is None else []
    if obj.mask is not None and tuple(obj.mask.shape) != (height, width):
        out.append(("mask_size", f"mask {obj.mask.shape[1]}x{obj.mask.shape[0]} in a {width}x{height} image"))
    return out


def check_polygons(polygons: list, height: int, width: int, where: str) -> None:
    """Raise :class:`BadObject` for polygons with an ``"error"`` problem, before a reader rasterises them."""
    for kind, detail in coco_json.segmentation_problems(polygons, (height, width)):
        if kind in KINDS and severity(kind) == "error":
            raise BadObject(kind, f"{where}: {detail}")


def severity(kind: str) -> str:
    return KINDS[kind][0]


def line(kind: str, items: list[str]) -> str:
    """One report line: how many, what, examples (file and object named), how to fix it."""
    _, title, hint = KINDS[kind]
    return f"{len(items)} {title} ({coco_json.examples(items)}): {hint}"
