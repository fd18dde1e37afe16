"""Datasets, their targets, transforms, checks and conversion.

* :mod:`.formats`: one reader per annotation format (COCO json, COCO-panoptic, VOC, YOLO, LabelMe, CVAT,
  Cityscapes, ADE20K, mask folders, real-data tiles) on the shared base (:mod:`.records`, :mod:`.base`);
* :mod:`.synthetic`: the built-in Shapes and panoptic Shapes;
* :mod:`.transforms`: augmentation steps, the presets and the collate functions;
* :mod:`.targets`: what an item's target holds (``CLASS_MAP``, ``BOXES``, ``INSTANCE_MASKS``, ``SEGMENTS``);
* :mod:`.build`: ``build_dataset(cfg.data, split, target)`` and the one table of readers;
* :mod:`.samplers`, :mod:`.checks`, :mod:`.convert`, :mod:`.prelabel`, and :mod:`.image`, the one image reader.
"""

from __future__ import annotations

from segzoo.data.build import DATASET_TYPES, build_dataset
from segzoo.data.checks import DataReport, check_dataset
from segzoo.data.errors import DataError, ImageFileError
from segzoo.data.formats.ade20k import ADE20K
from segzoo.data.formats.cityscapes import Cityscapes
from segzoo.data.formats.coco import CocoInstances, CocoSemantic
from segzoo.data.formats.coco_panoptic import CocoPanoptic
from segzoo.data.formats.cvat import CVAT
from segzoo.data.formats.detect import detect_format, resolve_auto
from segzoo.data.formats.labelme import LabelMe
from segzoo.data.formats.mask_folder import MaskFolder
from segzoo.data.formats.realdata import NucleiTiles, TreeCrownTiles
from segzoo.data.formats.voc import VOC, VOCSegmentation
from segzoo.data.formats.yolo import YOLO
from segzoo.data.image import image_size, read_image, read_mask, read_panoptic, set_max_image_pixels
from segzoo.data.synthetic.shapes import Shapes
from segzoo.data.synthetic.shapes_panoptic import ShapesPanoptic
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, SEGMENTS, Target
from segzoo.data.transforms import PadToSize, build_transforms, collate_instances, collate_semantic

__all__ = [
    "BOXES", "CLASS_MAP", "INSTANCE_MASKS", "SEGMENTS", "Target", "set_max_image_pixels",
    "ADE20K", "CVAT", "DATASET_TYPES", "VOC", "YOLO", "Cityscapes", "CocoInstances", "CocoPanoptic", "CocoSemantic",
    "DataError", "DataReport", "ImageFileError", "LabelMe", "MaskFolder", "NucleiTiles", "PadToSize", "Shapes",
    "ShapesPanoptic", "TreeCrownTiles",
    "VOCSegmentation", "build_dataset", "build_transforms", "check_dataset", "collate_instances",
    "collate_semantic", "detect_format", "image_size", "read_image", "read_mask", "read_panoptic",
    "resolve_auto",
]
