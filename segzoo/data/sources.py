"""Every layout segzoo reads as :class:`~segzoo.data.records.AnnotatedImages`, split by split (what
``segzoo data convert`` reads): every format reader gives its records itself, so this module only
finds the splits of a source."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from segzoo.data.formats.ade20k import ADE20K
from segzoo.data.formats.cityscapes import Cityscapes
from segzoo.data.formats.coco import CocoInstances
from segzoo.data.formats.cvat import CVAT
from segzoo.data.formats.detect import FORMATS, coco_files, detect_format, resolve_auto
from segzoo.data.formats.labelme import LabelMe
from segzoo.data.formats.mask_folder import MaskFolder
from segzoo.data.formats.voc import VOC, voc_root
from segzoo.data.formats.yolo import YOLO, find_yaml
from segzoo.data.records import AnnotatedImages
from segzoo.data.targets import BOXES, INSTANCE_MASKS, Target

PathLike = str | os.PathLike


def _coco(root: PathLike, ann_file: PathLike, target: Target) -> CocoInstances:
    """A COCO json's records for ``target`` (polygons / RLE as they are, crowd included)."""
    return CocoInstances(root, ann_file, with_masks=False, target=target, records_only=True)


def _mask_folder(images_dir: PathLike, masks_dir: PathLike, target: Target) -> MaskFolder:
    """A mask folder's records, its class names from a ``classes.txt`` beside the masks (or one folder up),
    else named by the values its masks hold."""
    listed = Path(masks_dir).parent / "classes.txt"
    if not listed.is_file():
        listed = Path(masks_dir).parent.parent / "classes.txt"
    classes = [n.strip() for n in listed.read_text().splitlines() if n.strip()] if listed.is_file() else None
    folder = MaskFolder(images_dir, masks_dir, classes=classes, target=target)
    if classes is None:
        folder.infer_classes()
    return folder


def open_splits(src: PathLike, fmt: str, target: Target | None, splits: list[str] | None = None):
    """``(format, [(split name, dataset)])`` of a source, every split read for ``target``
    (:mod:`segzoo.data.targets`); None reads instance masks where the format has them (VOC without
    ``SegmentationObject``: boxes)."""
    src = Path(src)
    if fmt == "auto":
        fmt = detect_format(src)
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; use one of {', '.join(FORMATS)} or auto")
    if fmt == "coco_panoptic":
        raise ValueError(f"{src} is COCO-panoptic: segzoo reads it for training (data.type: coco_panoptic) but does "
                         "not convert it; its instances json (instances_*.json) converts as --from coco")
    if target is None:
        target = BOXES if fmt == "voc" and not (voc_root(src) / "SegmentationObject").is_dir() else INSTANCE_MASKS
    out: list[tuple[str, AnnotatedImages]] = []
    if fmt == "yolo":
        spec = yaml.safe_load(find_yaml(src).read_text()) or {}
        if not isinstance(spec, dict):
            YOLO(src, "train", target)  # raises, naming the file
        out = [(s, YOLO(src, s, target)) for s in ("train", "val", "test") if spec.get(s)]
    elif fmt == "voc":
        sets = voc_root(src) / "ImageSets" / ("Main" if target.boxes_only else "Segmentation")
        names = [s for s in ("train", "val") if (sets / f"{s}.txt").is_file()]
        out = [(s, VOC(src, s, target)) for s in names] or [("train", VOC(src, None, target))]
    elif fmt == "cityscapes":
        out = [(s, Cityscapes(src, s, target)) for s in ("train", "val") if (src / "leftImg8bit" / s).is_dir()]
    elif fmt == "ade20k":
        if not target.label_map:
            raise ValueError("ADE20K (SceneParsing) has no instances; convert it to mask_folder")
        out = [(s, ADE20K(src, s)) for s in ("train", "val")]
    elif fmt == "coco":
        files = [src] if src.is_file() else coco_files(src)
        for f in files:
            name = f.stem.replace("instances_", "")
            args = resolve_auto(src, name)[1] if src.is_dir() else resolve_auto(f, name)[1]
            out.append((name, _coco(args["root"], args["ann_file"], target)))
    elif fmt == "mask_folder":
        args = resolve_auto(src, "train")[1]
        subs = [p.name for p in sorted(Path(args["images_dir"]).iterdir()) if p.is_dir()]
        named = [s for s in subs if (Path(args["masks_dir"]) / s).is_dir()]
        images, masks = Path(args["images_dir"]), Path(args["masks_dir"])
        out = [(s, _mask_folder(images / s, masks / s, target)) for s in named] \
            or [("train", _mask_folder(args["images_dir"], args["masks_dir"], target))]
    elif fmt == "labelme":
        subs = [s for s in ("train", "val", "test") if (src / s).is_dir() and any((src / s).rglob("*.json"))]
        if subs:
            first = LabelMe(src / subs[0], target)
            out = [(s, LabelMe(src / s, target, classes=first.object_classes)) for s in subs]
        else:
            out = [("train", LabelMe(src, target))]
    elif fmt == "cvat":
        probe = CVAT(src, target)
        subsets = sorted({im.get("subset") for im in probe.entries if im.get("subset")})
        out = [(s.lower(), CVAT(src, target, subset=s)) for s in subsets] or [("train", probe)]
    if splits:
        missing = sorted(set(splits) - {s for s, _ in out})
        if missing:
            raise ValueError(f"{src} has no split {missing}; it has {[s for s, _ in out]}")
        out = [(s, d) for s, d in out if s in splits]
    if not out:
        raise ValueError(f"{src}: no split with data found")
    return fmt, out
