"""What the annotation-format readers share: one object record, one dataset base, and its data check.

Every reader (Pascal VOC, YOLO, LabelMe, CVAT, Cityscapes, ADE20K, the real-data tiles) parses its
files into :class:`Obj` records per image and inherits from :class:`AnnotatedImages`, which turns
them into what the COCO and mask-folder datasets yield for the task:

* :data:`~segzoo.data.targets.CLASS_MAP`: ``(image, mask)``, ``mask`` an int64 ``H x W`` :class:`tv_tensors.Mask`;
* :data:`~segzoo.data.targets.INSTANCE_MASKS`: ``(image, target)`` with ``boxes`` (xyxy), ``labels``
  (0-based), ``masks`` (``K x H x W`` uint8) and ``image_id``;
* :data:`~segzoo.data.targets.BOXES`: the same without ``masks``.

Coordinates are continuous pixels: pixel ``(row, col)`` covers ``[col, col + 1] x [row, row + 1]``
(the COCO convention), so a box ``(0, 0, W, H)`` covers the whole image.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

import segzoo.data.validation as validation
from segzoo.data.base import ConfigReader, check_target

# the project's one image reader: the readers below read images and label PNGs through these two names
from segzoo.data.errors import DataError
from segzoo.data.image import image_size as header_size
from segzoo.data.image import read_image, read_mask
from segzoo.data.targets import Target

__all__ = ["AnnotatedImages", "Obj", "decode_segmentation", "read_image", "read_mask"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _mask_api():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ImportError(
            "decoding COCO polygons and RLE needs pycocotools; install it with "
            "`pip install 'segzoo[coco]'` (or `pip install pycocotools`)"
        ) from None
    return mask_utils


def decode_segmentation(segm: Any, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, uncompressed or compressed RLE) as an ``H x W`` uint8 mask."""
    mask_utils = _mask_api()
    if isinstance(segm, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, height, width)
    elif isinstance(segm, dict):  # compressed RLE
        rle = dict(segm)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unknown COCO segmentation format {type(segm).__name__}; expected polygons or RLE")
    return mask_utils.decode(rle).astype(np.uint8)


@dataclasses.dataclass
class Obj:
    """One annotated object.

    Attributes:
        label: 0-based index into the dataset's object classes.
        box: ``(x1, y1, x2, y2)`` in pixels; None to take it from the segmentation.
        segmentation: COCO polygons (``[[x1, y1, x2, y2, ...], ...]`` in pixels) or a COCO RLE.
        mask: an ``H x W`` bool array, for formats that store pixels.
        crowd: a region to ignore (COCO ``iscrowd``); left out of instance targets, ``ignore_index``
            in semantic maps.
        where: where the reader found it (``"line 3"``, ``"<polygon> 2"``), for messages.
        score: a model's confidence, for pre-labels (``segzoo infer --to``); None for annotations.
    """

    label: int
    box: tuple[float, float, float, float] | None = None
    segmentation: list | dict | None = None
    mask: np.ndarray | None = None
    crowd: bool = False
    where: str | None = None
    score: float | None = None

    @property
    def has_shape(self) -> bool:
        return self.segmentation is not None or self.mask is not None

    def pixels(self, height: int, width: int) -> np.ndarray:
        """The object's ``H x W`` bool mask (a box without a segmentation fills its rectangle)."""
        if self.mask is not None:
            return self.mask.astype(bool)
        if self.segmentation is not None:
            return decode_segmentation(self.segmentation, height, width).astype(bool)
        x1, y1, x2, y2 = self.box
        return decode_segmentation([[x1, y1, x2, y1, x2, y2, x1, y2]], height, width).astype(bool)

    def xyxy(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The box: given, else the polygons' extent, else the mask's pixel extent (``(0, 0, 0, 0)`` if empty)."""
        if self.box is not None:
            return tuple(float(v) for v in self.box)
        if isinstance(self.segmentation, list):
            pts = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in self.segmentation])
            return (*pts.min(0).tolist(), *pts.max(0).tolist())
        return mask_box(self.pixels(height, width))

    def to_coco(self, height: int, width: int) -> dict:
        """The object as a COCO annotation (no ids): polygons kept, pixel masks and crowd regions as
        compressed RLE, ``segmentation: []`` for a box alone; ``area`` is the shape's pixel count, or
        the box area for a box alone (COCO's convention)."""
        ann: dict = {"category_id": self.label + 1, "iscrowd": int(self.crowd)}
        if not self.has_shape:
            ann["segmentation"] = []
        elif isinstance(self.segmentation, list) and not self.crowd:
            ann["segmentation"] = [[round(float(v), 3) for v in p] for p in self.segmentation]
        else:
            ann["segmentation"] = _to_rle(self.pixels(height, width))
        x1, y1, x2, y2 = self.xyxy(height, width)
        ann["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        ann["area"] = float(self.pixels(height, width).sum()) if self.has_shape else (x2 - x1) * (y2 - y1)
        if self.score is not None:
            ann["score"] = round(float(self.score), 4)
        return ann


def _to_rle(mask: np.ndarray) -> dict:
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ImportError("writing COCO masks needs pycocotools: `pip install 'segzoo[coco]'`") from None
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The pixel extent of a bool mask as a box (pixel edges), ``(0, 0, 0, 0)`` when empty."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def polygon_from_points(points: Any) -> list[float]:
    """``[[x, y], ...]`` (or ``[x1, y1, x2, ...]``) as a flat COCO polygon."""
    return [float(v) for v in np.asarray(points, dtype=np.float64).reshape(-1)]


def box_polygon(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    return [x1, y1, x2, y1, x2, y2, x1, y2]


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the image header, as :func:`read_image` gives it (EXIF orientation applied)."""
    return header_size(path)


BACKGROUND_NAMES = ("background", "_background_", "__background__", "bg")


def split_classes(classes: list[str] | None, target: Target) -> tuple[list[str] | None, str | None]:
    """``data.classes`` as ``(object class names, background name)``, one convention for every dataset type.

    Semantic data lists every label including background, label 0 first (as ``mask_folder`` and
    ``num_classes`` count them): ``[background, cat, dog]``. Instance and detection data list the
    object classes only, label 0 the first object class (background is implicit): ``[cat, dog]``.
    """
    if classes is None:
        return None, None
    if isinstance(classes, str) or not all(isinstance(c, (str, int)) for c in classes):
        raise ValueError(f"data.classes must be a list of names, got {classes!r}")
    names = [str(c) for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"data.classes names a class twice: {names}")
    if target.label_map:
        if len(names) < 2:
            raise ValueError(f"data.classes for semantic data lists every label including background, label 0 first "
                             f"(e.g. [background, cat, dog]); got {names}")
        return names[1:], names[0]
    if names and names[0].lower() in BACKGROUND_NAMES:
        raise ValueError(f"data.classes for {target.name} data lists the object classes only, label 0 first "
                         f"(background is implicit): remove {names[0]!r} from {names}")
    return names, None


def examples(items: list, n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def palette_bytes(palette: list[tuple[int, int, int]] | None) -> list[int]:
    """A 256-entry flat palette for ``Image.putpalette`` (the VOC colour map past the given colours)."""
    base = voc_colormap(256)
    if palette:
        base[: len(palette)] = [tuple(c) for c in palette]
    return [v for rgb in base for v in rgb]


def voc_colormap(n: int = 256) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map: label bits spread over the high bits of R, G and B."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


class AnnotatedImages(ConfigReader, Dataset):
    """Base of the format readers: images with per-image :class:`Obj` lists or label maps.

    Subclasses set ``object_classes`` (names of the object classes, background excluded) and
    implement ``__len__``, :meth:`image_path` and :meth:`objects`; label-map formats override
    :meth:`semantic_map` instead (and set ``semantic_classes``). ``problems`` collects what the
    parser found wrong per file (the data check reports it).

    Args:
        target: what an item's target holds (:mod:`segzoo.data.targets`), one of :attr:`targets`.
        transforms: a joint transform called as ``transforms(image, target)``.
        ignore_index: label-map value of crowd regions and unlabelled pixels.
    """

    object_classes: list[str]
    semantic_classes: list[str] | None = None  # label-map formats: the names of the map's values
    background_name = "background"  # label 0 of semantic maps (the first name of a semantic data.classes)
    palette: list[tuple[int, int, int]] | None = None
    classes_inferred = False  # object classes read from the labels found (sorted), not given

    def __init__(self, target: Target, transforms=None, ignore_index: int = 255) -> None:
        self.target = check_target(target, self.targets, type(self).__name__)
        self.transforms = transforms
        self.ignore_index = ignore_index
        self.problems: list[str] = []  # errors the parser found (the data check reports them)
        self.notices: list[str] = []  # what it skipped or assumed (reported as warnings)


    @property
    def classes(self) -> list[str]:
        """Class names as the model sees them (a class map: with background first where the format has none)."""
        if not self.target.label_map:
            return list(self.object_classes)
        return list(self.semantic_classes) if self.semantic_classes is not None else \
            [self.background_name, *self.object_classes]

    def set_classes(self, classes: list[str] | None) -> list[str] | None:
        """Read ``data.classes`` (:func:`split_classes`): keeps the background name, returns the object names."""
        objects, background = split_classes(classes, self.target)
        if background is not None:
            self.background_name = background
        return objects

    def check_class_names(self, found: list[str]) -> None:
        """Report a semantic ``data.classes`` whose first name (background) names objects of these files."""
        if self.target.label_map and self.background_name in found:
            self.problems.append(
                f"data.classes starts with {self.background_name!r}, a label of these files: for semantic data "
                f"data.classes lists every label including background, label 0 first; prepend the background name: "
                f"[background, {', '.join([self.background_name, *self.object_classes])}]")

    def source_id(self, label: int) -> int | None:
        """The id the annotation files give a label, where they number classes (shown by the data check)."""
        return None

    @property
    def num_classes(self) -> int:
        """A class map: every label including background; object rows: object classes only."""
        return len(self.classes)

    def __len__(self) -> int:
        raise NotImplementedError

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def image_hw(self, index: int) -> tuple[int, int]:
        """``(height, width)`` of an image without decoding it (from the file's header)."""
        return image_size(self.image_path(index))

    def declared_hw(self, index: int) -> tuple[int, int] | None:
        """``(height, width)`` that the annotation files state for an image (None where they state none).

        It is checked against the image file, never used instead of it."""
        return None

    def object_name(self, obj: Obj, k: int) -> str:
        names = self.object_classes
        label = names[obj.label] if 0 <= obj.label < len(names) else f"label {obj.label}"
        return f"{obj.where or f'object {k + 1}'} ({'crowd region' if obj.crowd else label})"

    def annotation_problems(self, index: int, height: int, width: int) -> tuple[list[Obj], list[tuple[str, str]]]:
        """The image's objects and their problems (:mod:`segzoo.data.validation`), each detail naming the object.

        Nothing is rasterised: the objects' numbers are checked before any mask is made from them."""
        problems = []
        size = validation.size_problem(self.declared_hw(index), height, width)
        if size is not None:
            problems.append(size)
        objs = self.objects(index, height, width)
        for k, o in enumerate(objs):
            problems += [(kind, f"{self.object_name(o, k)}: {detail}")
                         for kind, detail in validation.object_problems(o, height, width)]
        return objs, problems

    def valid_objects(self, index: int, height: int, width: int) -> list[Obj]:
        """:meth:`objects`, refused with a DataError naming the file and object when one has an ``"error"`` problem
        (so ``data.check: false`` never trains on it)."""
        objs, problems = self.annotation_problems(index, height, width)
        self._refuse(index, problems)
        return objs

    def _refuse(self, index: int, problems: list[tuple[str, str]]) -> None:
        for kind, detail in problems:
            severity, title, hint = validation.KINDS[kind]
            if severity == "error":
                raise DataError(f"{self.item_name(index)}: {detail} (one of the {title}); {hint}. "
                                "`segzoo data check CONFIG` lists every such problem")

    def load_image(self, index: int) -> tv_tensors.Image:
        return read_image(self.image_path(index))

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        """The image's objects, crowd regions included."""
        raise NotImplementedError

    def semantic_map(self, index: int, height: int, width: int) -> np.ndarray:
        """The int64 label map: objects painted largest first (label ``k`` -> ``k + 1``), crowd -> ignore."""
        out = np.zeros((height, width), dtype=np.int64)
        objs = self.valid_objects(index, height, width)
        painted = [(o, o.pixels(height, width)) for o in objs if not o.crowd]
        for o, m in sorted(painted, key=lambda om: -int(om[1].sum())):
            out[m] = o.label + 1
        for o in objs:
            if o.crowd:
                out[o.pixels(height, width)] = self.ignore_index
        return out

    def multi_hot_map(self, index: int, height: int, width: int) -> np.ndarray:
        """The uint8 ``C x H x W`` multi-hot target: class ``c`` the union of its objects (overlaps kept), crowd
        regions 255 (unlabelled) in every class."""
        objs = self.valid_objects(index, height, width)
        out = np.zeros((len(self.object_classes), height, width), dtype=np.uint8)
        for o in objs:
            if not o.crowd:
                out[o.label] |= o.pixels(height, width).astype(np.uint8)
        for o in objs:
            if o.crowd:
                out[:, o.pixels(height, width).astype(bool)] = 255
        return out

    def object_target(self, index: int, height: int, width: int) -> dict[str, Any]:
        objs = [o for o in self.valid_objects(index, height, width) if not o.crowd]
        boxes = torch.tensor([o.xyxy(height, width) for o in objs], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([o.label for o in objs], dtype=torch.int64),
            "image_id": index,
        }
        if self.target.masks:
            masks = np.zeros((len(objs), height, width), dtype=np.uint8)
            for k, o in enumerate(objs):
                masks[k] = o.pixels(height, width)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        return target

    def coco_ground_truth(self, index: int) -> dict[str, Any]:
        """The image's objects as COCO ground truth for evaluation, crowd regions included:
        ``{"image": {"id", "height", "width"}, "annotations": [...]}`` (:meth:`Obj.to_coco`; category
        id = label + 1, annotation ids left to the evaluator; a box alone gets its rectangle as
        segmentation where the target has masks, as its target mask)."""
        h, w = self.image_hw(index)
        anns = []
        for o in self.valid_objects(index, h, w):
            ann = o.to_coco(h, w)
            if not ann["segmentation"] and self.target.masks:
                ann["segmentation"] = [box_polygon(*o.xyxy(h, w))]
            anns.append(ann)
        return {"image": {"id": index, "height": h, "width": w}, "annotations": anns}

    def __getitem__(self, index: int):
        image = self.load_image(index)
        h, w = image.shape[-2:]
        size = validation.size_problem(self.declared_hw(index), h, w)
        self._refuse(index, [size] if size else [])
        if self.target.label_map:
            label = self.semantic_map(index, h, w)
            if label.shape != (h, w):
                raise ValueError(f"the label map of {self.image_path(index)} is {label.shape[1]}x{label.shape[0]} "
                                 f"but the image is {w}x{h}; label maps must have the image's size")
            out = tv_tensors.Mask(torch.from_numpy(label))
        elif self.target.multi_hot:  # a multi-label model: one mask per class, overlapping regions kept
            out = tv_tensors.Mask(torch.from_numpy(self.multi_hot_map(index, h, w)))
        else:
            out = self.object_target(index, h, w)
        if self.transforms is not None:
            image, out = self.transforms(image, out)
        return image, out

    # ------------------------------------------------------------------ data check
    def check(self, report, num_classes: int, ignore_index: int = 255, allow_empty: bool = False) -> None:
        """Fill a :class:`~segzoo.data.checks.DataReport` (what ``segzoo data check`` prints)."""
        report.num_items = len(self)
        report.errors.extend(self.problems)
        report.warnings.extend(self.notices)
        n_data = self.num_classes
        kind = "labels" + (" including background" if self.target.label_map else
                           " (object classes; background is implicit)")
        if n_data > num_classes:
            report.errors.append(f"{type(self).__name__} has {n_data} {kind} ({examples(self.classes, 6)}) but "
                                 f"num_classes={num_classes}; set model.num_classes={n_data}")
        elif n_data < num_classes:
            report.warnings.append(f"{type(self).__name__} has {n_data} {kind} but num_classes={num_classes}; "
                                   "the extra classes are never trained")
        if self.classes_inferred:
            report.warnings.append(
                f"class names were taken from the labels found in these files, sorted ({examples(self.classes, 6)}); "
                "set data.classes (the object class names in id order) so that every split uses the same ids")
        found: set[int] = set()
        issues: dict[str, list[str]] = defaultdict(list)
        for i in range(len(self)):
            name = self.item_name(i)
            try:
                h, w = self.image_hw(i)
                from_objects = not self.target.label_map or type(self).semantic_map is AnnotatedImages.semantic_map
                if from_objects:
                    objs, problems = self.annotation_problems(i, h, w)
                else:  # a label-map format: only the stated size is the annotation's
                    size = validation.size_problem(self.declared_hw(i), h, w)
                    objs, problems = [], [size] if size else []
                for kind, detail in problems:
                    issues[kind].append(f"{name}: {detail}")
                if any(validation.severity(kind) == "error" for kind, _ in problems):
                    continue  # its targets are not built from numbers that are known to be wrong
                if self.target.label_map:
                    self._check_map(self.semantic_map(i, h, w), (h, w), name, num_classes, ignore_index,
                                    found, issues)
                else:
                    self._check_objects(objs, (h, w), name, found, issues)
            except validation.BadObject as e:
                issues[e.kind].append(f"{name}: {e.detail}")
            except (OSError, ValueError, KeyError) as e:
                issues["unreadable"].append(f"{name} ({e})")
        report.classes_found = sorted(found)
        report.name_classes(self.classes, self.source_id)
        messages = {
            "unreadable": "files cannot be read",
            "size": "label maps differ in size from their image",
            "no_shape": "objects have no polygon or mask but the instance task needs masks",
            "label": f"objects have a label outside the {len(self.object_classes)} classes",
        }
        for key, text in messages.items():
            if issues[key]:
                report.errors.append(f"{len(issues[key])} {text}: {examples(issues[key])}")
        for kind in validation.KINDS:
            if issues[kind]:
                warn = validation.severity(kind) == "warning"
                (report.warnings if warn else report.errors).append(validation.line(kind, issues[kind]))
        for v, files in sorted(issues.items()):
            if v.startswith("value "):
                value = int(v.split()[1])
                report.errors.append(
                    f"label value {value} is outside [0, {num_classes - 1}] and is not ignore_index={ignore_index} "
                    f"in {len(files)} images ({examples(files)}); set model.num_classes to at least {value + 1}")
        if issues["empty"]:
            msg = f"{len(issues['empty'])} images have no labelled pixel or object: {examples(issues['empty'])}"
            (report.warnings if allow_empty else report.errors).append(
                msg + ("" if allow_empty else "; remove them or set data.allow_empty=true to keep them as negatives"))
        missing = [c for c in range(num_classes) if c not in found]
        if missing and len(self):
            names = self.classes
            named = [f"{c} ({names[c]})" if c < len(names) else str(c) for c in missing]
            report.warnings.append(f"classes {examples(named, 8)} never occur in this data (num_classes={num_classes})")

    def item_name(self, index: int) -> str:
        return self.image_path(index).name

    def _check_map(self, labels, hw, name, num_classes, ignore_index, found, issues) -> None:
        if labels.shape != hw:
            issues["size"].append(f"{name} {labels.shape[1]}x{labels.shape[0]} vs image {hw[1]}x{hw[0]}")
        values = [int(v) for v in np.unique(labels) if v != ignore_index]
        if not values:
            issues["empty"].append(name)
        for v in values:
            if 0 <= v < num_classes:
                found.add(v)
            else:
                issues[f"value {v}"].append(name)

    def _check_objects(self, objs, hw, name, found, issues) -> None:
        real = [o for o in objs if not o.crowd]
        if not objs:  # crowd regions count: an image with only crowd regions is not empty (issue 21.6)
            issues["empty"].append(name)
        for o in real:
            if not 0 <= o.label < len(self.object_classes):
                issues["label"].append(f"{name} (label {o.label})")
                continue
            found.add(o.label)
            if self.target.masks and not o.has_shape:
                issues["no_shape"].append(name)
        # boxes and shapes outside the image or without area: annotation_problems (segzoo.data.validation)
