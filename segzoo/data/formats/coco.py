"""COCO-format datasets: instances (boxes, labels, masks) and the semantic maps derived from them.

Annotation files follow the COCO ``instances`` layout written by most labelling tools (CVAT,
Label Studio, Roboflow): ``images``, ``annotations`` (``bbox`` as xywh, ``segmentation`` as
polygons or RLE, ``iscrowd``) and ``categories``. Category ids are mapped to contiguous
0-based labels in increasing id order; their names are kept in ``dataset.classes``.

The json is validated when the dataset is made and again, per image, when an image is loaded
(:mod:`segzoo.data.formats.coco_json`): bad ids and references are refused at once, and an image whose
annotations would give a wrong target (an empty mask, an RLE of another size, NaN coordinates,
a json width/height that is not the file's) is refused when it is loaded. Images are read with
:func:`segzoo.data.image.read_image` (EXIF orientation applied; COCO sizes refer to it).
"""

from __future__ import annotations

import copy
import json
import os
from collections import defaultdict
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

import segzoo.data.validation as validation
from segzoo.data.base import OBJECT_TARGETS
from segzoo.data.errors import DataError
from segzoo.data.formats import coco_json
from segzoo.data.formats.coco_json import KINDS, JsonImages, ann_where, annotation_problems, image_where, index_coco
from segzoo.data.image import image_size
from segzoo.data.records import AnnotatedImages, Obj, _mask_api, examples, missing_classes
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, MULTI_HOT, Target

PathLike = str | os.PathLike


class CocoInstances(JsonImages, AnnotatedImages):
    """Instance segmentation / detection data from a COCO json file.

    Items are ``(image, target)``: ``image`` a ``3 x H x W`` :class:`tv_tensors.Image`
    and ``target`` a dict with ``boxes`` (:class:`tv_tensors.BoundingBoxes`, xyxy),
    ``labels`` (int64, 0-based), ``masks`` (:class:`tv_tensors.Mask`, ``K x H x W`` uint8) and
    ``image_id`` (the json's id); ``transforms(image, target)`` is applied when given. Crowd annotations
    (``iscrowd=1``) are left out. Images are uint8, or float32 in [0, 1] for 16-bit files
    (:func:`segzoo.data.image.read_image`).

    The reader is an :class:`~segzoo.data.records.AnnotatedImages`: each annotation is one
    :class:`~segzoo.data.records.Obj` record (:meth:`objects`) and the base turns the records into
    items. What is COCO's own: the json's rules (:data:`segzoo.data.formats.coco_json.KINDS`, checked
    before a record is used), the json's ids, and the ground truth as written (:meth:`coco_ground_truth`).

    Args:
        root: folder the ``file_name`` entries are relative to.
        ann_file: the COCO json file.
        transforms: a joint transform called as ``transforms(image, target)``.
        with_masks: decode segmentations (needs pycocotools); boxes only when False.
        target: what the records are read for (:mod:`segzoo.data.targets`); default from ``with_masks``.
        records_only: read the records for another format (``segzoo data convert``): any object or
            class-map target, checked by the rules every format's records share
            (:mod:`segzoo.data.validation`) instead of the json's, paint order by pixel count.
    """

    targets = (INSTANCE_MASKS, BOXES, MULTI_HOT)
    needs_bbox = True
    kinds = KINDS  # the json's problems (coco_json), checked before a record is used
    config_keys = config_required = config_paths = ("images", "annotations")
    config_renames = MappingProxyType({"root": "images", "ann_file": "annotations"})

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        """``data.<split>.images`` and ``.annotations``; a class-map target reads :class:`CocoSemantic`
        (other kinds are the model's to refuse: the evaluator names what the data holds)."""
        kw = cls.take(args)
        if target.label_map:
            return CocoSemantic(kw["images"], kw["annotations"], transforms, ignore_index=cfg.ignore_index)
        if target.multi_hot:  # a multi-label model: overlapping regions kept, one mask per category
            return CocoMultiLabel(kw["images"], kw["annotations"], transforms)
        return CocoInstances(kw["images"], kw["annotations"], transforms, with_masks=target.masks)

    def __init__(self, root: PathLike, ann_file: PathLike, transforms=None, with_masks: bool = True,
                 target: Target | None = None, ignore_index: int = 255, records_only: bool = False) -> None:
        if target is None:
            target = INSTANCE_MASKS if with_masks else BOXES
        self.json_rules = not records_only
        if records_only:
            self.targets, self.kinds = OBJECT_TARGETS, validation.KINDS
        super().__init__(target, transforms, ignore_index)
        self.root = Path(root)
        self.ann_file = Path(ann_file)
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.ann_file}")
        if not self.root.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.root}")
        try:
            data = json.loads(self.ann_file.read_bytes())  # UTF-8 (with or without BOM), UTF-16 or UTF-32
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.ann_file} is not valid JSON: {e}") from None
        except RecursionError:
            raise DataError(f"{self.ann_file} nests JSON too deeply to be a COCO file") from None
        index = index_coco(data, self.ann_file)
        if with_masks:
            _mask_api()
        cats = index.categories
        if not cats:
            raise DataError(f"{self.ann_file} has no categories")
        self.cat_ids = [c["id"] for c in cats]
        self.cat_to_label = {cid: i for i, cid in enumerate(self.cat_ids)}
        self.object_classes = [str(c.get("name", c["id"])) for c in cats]
        self.images = index.images
        self.anns = index.anns
        self.json_problems = index.problems  # the json's index problems, by kind (reported by the data check)
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.images)

    def annotations(self, index: int, with_crowd: bool = False) -> list[dict]:
        """The raw annotations of an image (crowd ones only when asked)."""
        anns = self.anns[int(self.images[index]["id"])]
        return anns if with_crowd else [a for a in anns if not a.get("iscrowd", 0)]

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        """One record per annotation, crowd regions included: the json's numbers as they are (a bbox
        ``[x, y, w, h]`` becomes ``(x, y, x + w, y + h)``, summed in float32 as the boxes tensor is)."""
        info, out = self.images[index], []
        for a in self.annotations(index, with_crowd=True):
            if a.get("category_id") not in self.cat_to_label:
                raise ValueError(f"{self.ann_file}: annotation {a.get('id')} has category id "
                                 f"{a.get('category_id')} that is not in 'categories'")
            if self.json_rules:  # the json's own rules refuse a bad bbox before it is used
                bbox, area = a.get("bbox"), a.get("area")
                box = tuple(float(v) for v in _xyxy(np.float32(bbox))) if valid_box(bbox) else None
                area = float(area) if isinstance(area, (int, float)) else 0.0
            else:  # records for data convert: the numbers as written, checked by segzoo.data.validation
                box, area = _xyxy([float(v) for v in a.get("bbox", (0, 0, 0, 0))]), None
            out.append(Obj(self.cat_to_label[a["category_id"]], box=box, segmentation=a.get("segmentation") or None,
                           crowd=bool(a.get("iscrowd", 0)), where=ann_where(a, info), area=area))
        return out

    def refuse_where(self, index: int) -> str:
        return str(self.ann_file) if self.json_rules else super().refuse_where(index)

    def annotation_problems(self, index: int, height: int, width: int) -> tuple[list[Obj], list[tuple[str, str]]]:
        """The records and the json's problems for them (:func:`~segzoo.data.formats.coco_json.annotation_problems`,
        the rules :mod:`segzoo.data.validation` reuses), each naming its image and annotation id."""
        if not self.json_rules:
            return super().annotation_problems(index, height, width)
        info, problems = self.images[index], []
        jh, jw = info.get("height"), info.get("width")
        if isinstance(jh, (int, float)) and isinstance(jw, (int, float)) and (jh, jw) != (height, width):
            turned = " (turned by 90 degrees: EXIF orientation?)" if (jh, jw) == (width, height) else ""
            problems.append(("image_size", f"{image_where(info)}: json {jw}x{jh}, file {width}x{height}{turned}"))
        for a in self.anns[int(info["id"])]:
            problems += [(kind, f"{ann_where(a, info)}: {detail}")
                         for kind, detail in annotation_problems(a, (height, width), self.needs_bbox, self.with_masks)]
        return self.objects(index, height, width), problems

    def coco_ground_truth(self, index: int) -> dict[str, Any]:
        """The image's json entries for evaluation: ``{"image": {"id", "height", "width"}, "annotations":
        [...]}`` with every annotation as written (crowd regions, ``area`` and ids included), so that
        segzoo's COCO AP is pycocotools' on this json. ``height``/``width`` are read from the file's
        header when the json has none."""
        info = self.images[index]
        h, w = info.get("height"), info.get("width")
        if not (isinstance(h, int) and isinstance(w, int)):
            h, w = image_size(self.image_path(index))
        anns = [copy.deepcopy(a) for a in self.anns[int(info["id"])]]
        return {"image": {"id": int(info["id"]), "height": h, "width": w}, "annotations": anns}

    def crowd_mask(self, index: int, height: int, width: int) -> np.ndarray:
        """Union of the image's crowd regions as an ``H x W`` bool array."""
        out = np.zeros((height, width), dtype=bool)
        for o in self.objects(index, height, width):
            if o.crowd:
                out |= o.pixels(height, width)
        return out

    def check(self, report, num_classes: int, ignore_index: int = 255, allow_empty: bool = False) -> None:
        """Fill a :class:`~segzoo.data.checks.DataReport`: the json's problems (:mod:`segzoo.data.formats.coco_json`),
        image files and sizes, boxes outside their image, empty images, class counts."""
        if not self.json_rules:  # records read for another format: the base's check of records
            return super().check(report, num_classes, ignore_index, allow_empty)
        ds, semantic = self, self.target.label_map
        report.num_items = len(ds)
        n_data = len(ds.cat_ids) + (1 if semantic else 0)
        kind = "labels including background" if semantic else "object categories (background is implicit)"
        if n_data > num_classes:
            report.errors.append(
                f"{ds.ann_file} has {n_data} {kind} but num_classes={num_classes}; set model.num_classes={n_data}")
        elif n_data < num_classes:
            report.warnings.append(
                f"{ds.ann_file} has {n_data} {kind} but num_classes={num_classes}; the extra classes are never trained")
        problems: dict[str, list[str]] = defaultdict(list)
        for kind_name, items in ds.json_problems.items():
            problems[kind_name] += items
        missing, unreadable, outside, empty = [], [], [], []
        found: set[int] = set()
        for i, info in enumerate(ds.images):
            path = ds.image_path(i)
            if not path.is_file():
                missing.append(str(path))
                continue
            try:
                h, w = image_size(path)
            except (OSError, ValueError) as e:
                unreadable.append(str(e))
                continue
            jh, jw = info.get("height"), info.get("width")
            bad = [f"{k}={v!r}" for k, v in (("width", jw), ("height", jh))
                   if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)]
            if bad:
                problems["image_size"].append(f"{coco_json.image_where(info)}: {', '.join(bad)} "
                                              "is not a positive number")
            # the problems loading an item refuses (annotation_problems), so the check and the items agree
            for kind_name, detail in ds.annotation_problems(i, h, w)[1]:
                if not (bad and kind_name == "image_size"):
                    problems[kind_name].append(detail)
            anns = ds.annotations(i, with_crowd=True)
            if not anns:  # crowd regions count: such an image has labels (ignore regions), it is not empty
                empty.append(info["file_name"])
            for a in anns:
                if a.get("iscrowd", 0):
                    continue
                found.add(ds.cat_to_label[a["category_id"]] + (1 if semantic else 0))
                bbox = a.get("bbox")
                if ds.needs_bbox and valid_box(bbox) and bbox[2] > 0 and bbox[3] > 0:
                    x, y, bw, bh = bbox
                    if x < -1 or y < -1 or x + bw > w + 1 or y + bh > h + 1:
                        outside.append(f"{coco_json.ann_where(a, info)}: bbox xywh {bbox} in a {w}x{h} image")
        if semantic:
            found.add(0)
        report.classes_found = sorted(found)
        if missing:
            report.errors.append(f"{len(missing)} image files listed in {ds.ann_file} are missing: "
                                 f"{examples(missing)}; check the image folder (root)")
        if unreadable:
            report.errors.append(f"{len(unreadable)} image files cannot be read: {examples(unreadable)}")
        for kind_name, items in problems.items():
            severity = coco_json.KINDS[kind_name][0]
            line = coco_json.group(kind_name, items, prefix=f"{ds.ann_file.name}: ")
            (report.warnings if severity == "warning" else report.errors).append(line)
        if outside:
            report.errors.append(f"{ds.ann_file.name}: {len(outside)} boxes lie outside their image: "
                                 f"{examples(outside)}; COCO bbox is [x, y, width, height] in pixels: fix the export "
                                 "(xyxy or normalised boxes?)")
        if empty:
            msg = f"{len(empty)} images have no annotations: {examples(empty)}"
            (report.warnings if allow_empty else report.errors).append(
                msg + ("" if allow_empty else "; remove them or set data.allow_empty=true to keep them as negatives "
                       "(background only)"))
        missing_classes(report, num_classes, ds.classes)
        shift = 1 if semantic else 0
        report.name_classes(ds.classes, lambda k: ds.cat_ids[k - shift] if 0 <= k - shift < len(ds.cat_ids) else None)


class CocoSemantic(CocoInstances):
    """Semantic label maps painted from a COCO instances file.

    Items are ``(image, mask)`` with ``mask`` an int64 ``H x W`` :class:`tv_tensors.Mask`:
    0 is background, category ``k`` (0-based) is label ``k + 1``, crowd regions are
    ``ignore_index``. Larger objects (by the json's ``area``) are painted first, so small ones stay
    visible where they overlap (:meth:`~segzoo.data.records.AnnotatedImages.semantic_map`).
    ``num_classes`` counts background; ``classes[0] == "background"``.
    """

    targets = (CLASS_MAP,)
    needs_bbox = False

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        kw = cls.take(args)
        return cls(kw["images"], kw["annotations"], transforms, ignore_index=cfg.ignore_index)

    def __init__(self, root: PathLike, ann_file: PathLike, transforms=None, ignore_index: int = 255) -> None:
        super().__init__(root, ann_file, transforms=transforms, with_masks=True, target=CLASS_MAP,
                         ignore_index=ignore_index)


def _xyxy(xywh) -> tuple:
    x, y, w, h = xywh
    return (x, y, x + w, y + h)


class CocoMultiLabel(CocoInstances):
    """Multi-label masks from a COCO instances file (``data.type: coco`` for a multi-label model).

    Items are ``(image, masks)`` with ``masks`` a uint8 ``C x H x W`` :class:`tv_tensors.Mask`, one per
    category (0-based, in id order; no background channel): the union of the category's annotations
    (the base's ``multi_hot_map``), so where a cat's and a sofa's regions overlap both are 1. Crowd
    regions are 255 (unlabelled) in every channel.
    """

    targets = (MULTI_HOT,)
    needs_bbox = False

    def __init__(self, root: PathLike, ann_file: PathLike, transforms=None) -> None:
        super().__init__(root, ann_file, transforms=transforms, with_masks=True, target=MULTI_HOT)


def valid_box(bbox) -> bool:
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in bbox))
