"""Datasets (COCO json, image/mask folders, VOC, YOLO, LabelMe, CVAT, Cityscapes, ADE20K, real-data tiles,
the built-in Shapes), joint transforms, data checks and format conversion."""

from __future__ import annotations

import inspect
import os
from typing import Any

from segzoo.config import ConfigError
from segzoo.data.ade20k import ADE20K
from segzoo.data.checks import DataReport, check_dataset
from segzoo.data.cityscapes import Cityscapes
from segzoo.data.coco import CocoInstances, CocoSemantic
from segzoo.data.coco_panoptic import CocoPanoptic
from segzoo.data.cvat import CVAT
from segzoo.data.errors import DataError, ImageFileError
from segzoo.data.formats import detect_format, resolve_auto
from segzoo.data.image import image_size, read_image, read_mask, read_panoptic, set_max_image_pixels
from segzoo.data.labelme import LabelMe
from segzoo.data.mask_folder import MaskFolder
from segzoo.data.realdata import NucleiTiles, TreeCrownTiles
from segzoo.data.shapes import Shapes
from segzoo.data.shapes_panoptic import ShapesPanoptic
from segzoo.data.transforms import (
    PadToSize,
    build_transforms,
    collate_for,
    collate_instances,
    collate_semantic,
)
from segzoo.data.voc import VOC, VOCSegmentation
from segzoo.data.yolo import YOLO

DATASET_TYPES = {"shapes": Shapes, "coco": CocoInstances, "coco_semantic": CocoSemantic, "mask_folder": MaskFolder}
DATASET_TYPES["voc"] = VOC
DATASET_TYPES["yolo"] = YOLO
DATASET_TYPES["labelme"] = LabelMe
DATASET_TYPES["cvat"] = CVAT
DATASET_TYPES["cityscapes"] = Cityscapes
DATASET_TYPES["ade20k"] = ADE20K
DATASET_TYPES["nuclei"] = NucleiTiles
DATASET_TYPES["tree_crowns"] = TreeCrownTiles
DATASET_TYPES["coco_panoptic"] = CocoPanoptic
DATASET_TYPES["shapes_panoptic"] = ShapesPanoptic
# short config names for dataset arguments
_ALIASES = {"images": {"coco": "root", "coco_semantic": "root", "mask_folder": "images_dir", "coco_panoptic": "root"},
            "masks": {"mask_folder": "masks_dir"},
            "annotations": {"coco": "ann_file", "coco_semantic": "ann_file", "coco_panoptic": "ann_file"},
            "panoptic": {"coco_panoptic": "panoptic_root"}}
# where generated data lives when data.root is left at its default (the two Shapes variants must not share it)
_GENERATED_ROOTS = {"shapes": "data/shapes", "shapes_panoptic": "data/shapes_panoptic"}


def build_dataset(data_cfg: dict[str, Any], split: str, task: str, train: bool | None = None,
                  with_transforms: bool = True):
    """The dataset of one split from a config's ``data`` section.

    ``data.type`` picks the class; ``data.<split>`` holds its arguments: ``shapes``: none
    needed (``num_train``, ``num_val``, ``size``, ``seed``); ``coco`` / ``coco_semantic``:
    ``images`` (folder) and ``annotations`` (json); ``mask_folder``: ``images`` and
    ``masks`` folders. ``task`` is the model's (``model.spec.task``); a detection model gets
    boxes without masks.

    Args:
        data_cfg: the ``data`` section of a resolved config.
        split: ``"train"`` or ``"val"``.
        task: ``"semantic"``, ``"instance"``, ``"detection"`` or ``"panoptic"``.
        train: use the training augmentation (default: ``split == "train"``).
        with_transforms: attach the task's transform preset.
    """
    if data_cfg.get("max_image_pixels") is not None:  # every reader checks file headers against it
        set_max_image_pixels(data_cfg["max_image_pixels"])
    kind = data_cfg.get("type")
    if kind == "auto":  # recognise the layout from data.<split>.root
        if not (data_cfg.get(split) or {}).get("root"):
            raise ValueError(f"data.type auto needs data.{split}.root (the dataset folder or file)")
        rest = {k: v for k, v in data_cfg[split].items() if k != "root"}
        kind, found = resolve_auto(data_cfg[split]["root"], split)
        if data_cfg.get("classes") is not None:  # data.classes wins over a classes.txt found beside the data
            found.pop("classes", None)
        data_cfg = {**data_cfg, "type": kind, split: {**found, **rest}}
    if kind not in DATASET_TYPES:
        raise ValueError(f"unknown data.type {kind!r}; use one of {', '.join(DATASET_TYPES)}")
    cls = DATASET_TYPES[kind]
    args = {_ALIASES.get(k, {}).get(kind, k): v for k, v in (data_cfg.get(split) or {}).items()}
    if kind == "coco" and task == "semantic":
        cls = CocoSemantic
    train = split == "train" if train is None else train
    ignore = data_cfg.get("ignore_index", 255)
    if with_transforms:
        aug = dict(data_cfg.get("augment") or {})
        if task == "semantic":
            aug["ignore_index"] = ignore
        args["transforms"] = build_transforms(task, train, **aug)
    if kind in _GENERATED_ROOTS:
        root = data_cfg.get("root")
        if root is None or (root == _GENERATED_ROOTS["shapes"] and kind != "shapes"):  # the default data.root
            root = _GENERATED_ROOTS[kind]
        args.setdefault("root", root)
        args["split"] = split
        if kind == "shapes":
            args["task"] = task
        elif task not in cls.supported_tasks():
            raise ValueError(f"data.type {kind} gives {'/'.join(cls.supported_tasks())} data but the model's task is "
                             f"{task}; use a model of that task or another dataset")
    elif cls is MaskFolder:
        args.setdefault("binary", bool(data_cfg.get("binary")))
        args.setdefault("mapping", data_cfg.get("mapping"))
        args.setdefault("classes", data_cfg.get("classes"))
        args.setdefault("ignore_index", ignore)
    elif cls is CocoSemantic:
        args.setdefault("ignore_index", ignore)
    elif cls is CocoInstances:
        args.setdefault("with_masks", task == "instance")
    elif hasattr(cls, "supported_tasks"):  # the format readers: plain typed arguments named alike
        if task not in cls.supported_tasks():
            raise ValueError(f"data.type {kind} gives {'/'.join(cls.supported_tasks())} data but the model's task is "
                             f"{task}; use a model of that task or another dataset")
        params = inspect.signature(cls.__init__).parameters
        defaults = {"task": task, "split": split, "ignore_index": ignore, "classes": data_cfg.get("classes")}
        args.update({k: v for k, v in defaults.items() if k in params and k not in args and v is not None})
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = [k for k in args if k not in accepted]
    if unknown:
        raise ValueError(f"data.{split} has unknown arguments {unknown} for {cls.__name__}; accepted: "
                         f"{', '.join(a for a in accepted if a != 'transforms')}")
    params = inspect.signature(cls.__init__).parameters
    config_name = {v.get(kind): k for k, v in _ALIASES.items() if kind in v}  # root -> images, ...
    missing = [config_name.get(n, n) for n, prm in params.items()
               if n != "self" and prm.default is inspect.Parameter.empty and n not in args]
    if missing:
        raise ConfigError(f"data.{split} needs {', '.join(f'data.{split}.{m}' for m in missing)} for "
                          f"data.type={kind} (paths to the dataset's files)")
    try:
        dataset = cls(**args)
    except FileNotFoundError as e:  # a wrong path in the config: name its key, without a traceback
        paths = {k: str(v) for k, v in args.items() if isinstance(v, (str, os.PathLike)) and str(v) in str(e)}
        if not paths:  # not a path of the config (a wheel not fetched, ...): the message says the fix
            raise ConfigError(f"data.{split} (data.type={kind}): {e}") from None
        name = max(paths, key=lambda k: len(paths[k]))  # the longest path in the message
        key = config_name.get(name, name)
        raise ConfigError(f"data.{split}.{key}: {e}; fix the path in the config or override it with "
                          f"data.{split}.{key}=PATH") from None
    given = data_cfg.get("classes")
    if given is not None and "classes" not in accepted and list(map(str, given)) != list(dataset.classes):
        raise ConfigError(f"data.classes={list(given)} but data.type={kind} takes its class names from its files: "
                          f"{list(dataset.classes)}; remove data.classes (or make it equal)")
    return dataset


__all__ = [
    "ADE20K", "CVAT", "DATASET_TYPES", "VOC", "YOLO", "Cityscapes", "CocoInstances", "CocoPanoptic", "CocoSemantic",
    "DataError", "DataReport", "ImageFileError", "LabelMe", "MaskFolder", "NucleiTiles", "PadToSize", "Shapes",
    "ShapesPanoptic", "TreeCrownTiles",
    "VOCSegmentation", "build_dataset", "build_transforms", "check_dataset", "collate_for", "collate_instances",
    "collate_semantic", "detect_format", "image_size", "read_image", "read_mask", "read_panoptic",
    "resolve_auto",
]
