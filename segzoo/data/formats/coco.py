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
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segzoo.data.base import ConfigReader
from segzoo.data.errors import DataError
from segzoo.data.formats.coco_json import KINDS, ann_where, annotation_problems, image_where, index_coco
from segzoo.data.formats.multilabel import multi_hot_from_masks
from segzoo.data.image import image_size, read_image
from segzoo.data.records import _mask_api, decode_segmentation
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, MULTI_HOT

PathLike = str | os.PathLike


class CocoInstances(ConfigReader, Dataset):
    """Instance segmentation / detection data from a COCO json file.

    Items are ``(image, target)``: ``image`` a ``3 x H x W`` :class:`tv_tensors.Image`
    and ``target`` a dict with ``boxes`` (:class:`tv_tensors.BoundingBoxes`, xyxy),
    ``labels`` (int64, 0-based), ``masks`` (:class:`tv_tensors.Mask`, ``K x H x W`` uint8) and
    ``image_id``; ``transforms(image, target)`` is applied when given. Crowd annotations
    (``iscrowd=1``) are left out. Images are uint8, or float32 in [0, 1] for 16-bit files
    (:func:`segzoo.data.image.read_image`).

    Args:
        root: folder the ``file_name`` entries are relative to.
        ann_file: the COCO json file.
        transforms: a joint transform called as ``transforms(image, target)``.
        with_masks: decode segmentations (needs pycocotools); boxes only when False.
    """

    targets = (INSTANCE_MASKS, BOXES, MULTI_HOT)
    needs_bbox = True
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

    def __init__(self, root: PathLike, ann_file: PathLike, transforms=None, with_masks: bool = True) -> None:
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
        self.classes = [str(c.get("name", c["id"])) for c in cats]
        self.images = index.images
        self.anns = index.anns
        self.problems = index.problems  # reported by the data checks
        self.transforms = transforms
        self.with_masks = with_masks
        self.target = INSTANCE_MASKS if with_masks else BOXES


    @property
    def num_classes(self) -> int:
        """Object classes (background is implicit)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.root / self.images[index]["file_name"]

    def annotations(self, index: int, with_crowd: bool = False) -> list[dict]:
        """The raw annotations of an image (crowd ones only when asked)."""
        anns = self.anns[int(self.images[index]["id"])]
        return anns if with_crowd else [a for a in anns if not a.get("iscrowd", 0)]

    def refuse_bad_annotations(self, index: int, height: int, width: int) -> None:
        """Raise a DataError when the image's json entry or annotations cannot give a correct target.

        ``height`` and ``width`` are the size of the image as read. The checks are the data check's
        ``"error"`` kinds (:data:`segzoo.data.formats.coco_json.KINDS`), so a run with ``data.check: false``
        still never trains on them.
        """
        info = self.images[index]
        jh, jw = info.get("height"), info.get("width")
        if isinstance(jh, (int, float)) and isinstance(jw, (int, float)) and (jh, jw) != (height, width):
            raise DataError(f"{self.ann_file}: {image_where(info)} has width x height {jw}x{jh} in the json but the "
                            f"file is {width}x{height}; {KINDS['image_size'][2]}")
        for a in self.anns[int(info["id"])]:
            for kind, detail in annotation_problems(a, (height, width), self.needs_bbox, self.with_masks):
                severity, title, hint = KINDS[kind]
                if severity == "error":
                    raise DataError(f"{self.ann_file}: {ann_where(a, info)}: {detail} (one of the {title}); {hint}. "
                                    "`segzoo data check CONFIG` lists every such problem")

    def load_target(self, index: int, height: int, width: int) -> dict[str, Any]:
        self.refuse_bad_annotations(index, height, width)
        anns = self.annotations(index)
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        labels = torch.tensor([self.cat_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": labels,
            "image_id": int(self.images[index]["id"]),
        }
        if self.with_masks:
            masks = np.zeros((len(anns), height, width), dtype=np.uint8)
            for k, a in enumerate(anns):
                masks[k] = decode_segmentation(a["segmentation"], height, width)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        return target

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
        for a in self.anns[int(self.images[index]["id"])]:
            if a.get("iscrowd", 0):
                out |= decode_segmentation(a["segmentation"], height, width).astype(bool)
        return out

    def __getitem__(self, index: int):
        image = read_image(self.image_path(index))
        target = self.load_target(index, *image.shape[-2:])
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


class CocoSemantic(CocoInstances):
    """Semantic label maps painted from a COCO instances file.

    Items are ``(image, mask)`` with ``mask`` an int64 ``H x W`` :class:`tv_tensors.Mask`:
    0 is background, category ``k`` (0-based) is label ``k + 1``, crowd regions are
    ``ignore_index``. Larger objects are painted first, so small ones stay visible where they
    overlap. ``num_classes`` counts background; ``classes[0] == "background"``.
    """

    targets = (CLASS_MAP,)
    needs_bbox = False

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        kw = cls.take(args)
        return cls(kw["images"], kw["annotations"], transforms, ignore_index=cfg.ignore_index)

    def __init__(self, root: PathLike, ann_file: PathLike, transforms=None, ignore_index: int = 255) -> None:
        super().__init__(root, ann_file, transforms=transforms, with_masks=True)
        self.classes = ["background", *self.classes]
        self.ignore_index = ignore_index
        self.target = CLASS_MAP

    @property
    def num_classes(self) -> int:
        """Every label including background."""
        return len(self.classes)

    def load_mask(self, index: int, height: int, width: int) -> tv_tensors.Mask:
        self.refuse_bad_annotations(index, height, width)
        anns = sorted(self.annotations(index), key=lambda a: -float(a.get("area", 0.0)))
        out = np.zeros((height, width), dtype=np.int64)
        for a in anns:
            m = decode_segmentation(a["segmentation"], height, width).astype(bool)
            out[m] = self.cat_to_label[a["category_id"]] + 1
        out[self.crowd_mask(index, height, width)] = self.ignore_index
        return tv_tensors.Mask(torch.from_numpy(out))

    def __getitem__(self, index: int):
        image = read_image(self.image_path(index))
        mask = self.load_mask(index, *image.shape[-2:])
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


class CocoMultiLabel(CocoInstances):
    """Multi-label masks from a COCO instances file (``data.type: coco`` for a multi-label model).

    Items are ``(image, masks)`` with ``masks`` a uint8 ``C x H x W`` :class:`tv_tensors.Mask`, one per
    category (0-based, in id order; no background channel): the union of the category's annotations, so
    where a cat's and a sofa's regions overlap both are 1. Crowd regions are 255 (unlabelled) in every
    channel.
    """

    targets = (MULTI_HOT,)
    needs_bbox = False

    def __init__(self, root: PathLike, ann_file: PathLike, transforms=None) -> None:
        super().__init__(root, ann_file, transforms=transforms, with_masks=True)
        self.target = MULTI_HOT

    def load_masks(self, index: int, height: int, width: int) -> tv_tensors.Mask:
        self.refuse_bad_annotations(index, height, width)
        anns = self.annotations(index)
        masks = np.stack([decode_segmentation(a["segmentation"], height, width) for a in anns]) if anns else \
            np.zeros((0, height, width), dtype=np.uint8)
        labels = np.array([self.cat_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        out = multi_hot_from_masks(masks, labels, self.num_classes, self.crowd_mask(index, height, width))
        return tv_tensors.Mask(torch.from_numpy(out))

    def __getitem__(self, index: int):
        image = read_image(self.image_path(index))
        masks = self.load_masks(index, *image.shape[-2:])
        if self.transforms is not None:
            image, masks = self.transforms(image, masks)
        return image, masks
