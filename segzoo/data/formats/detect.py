"""Recognise a dataset's layout from its files (``data.type: auto``), and say what was found when it cannot.

:func:`detect_format` looks for each format's own evidence (folder and file names, the root tag of
an xml, the keys of a json or yaml) and returns the one format that fits; when none or several fit,
the error lists, per format, what was and was not found. :func:`resolve_auto` also returns the
arguments of that format's dataset.
"""

from __future__ import annotations

import functools
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from segzoo.data.formats.cvat import CVAT
from segzoo.data.formats.voc import voc_dirs
from segzoo.data.formats.yolo import find_yaml
from segzoo.data.records import IMAGE_SUFFIXES
from segzoo.data.targets import BOXES

PathLike = str | os.PathLike
FORMATS = ("coco", "coco_panoptic", "voc", "yolo", "labelme", "cvat", "cityscapes", "ade20k", "mask_folder")
_PROBE = 20  # json files opened at most per folder


def _json_summary(path: Path) -> tuple[frozenset[str], str | None]:
    """``(top-level keys, COCO kind)`` of a json file, parsed once per file version.

    Recognising a layout asks about the same files several times (COCO instances, COCO-panoptic,
    LabelMe, then the split's arguments); a COCO json can be hundreds of MB, so only this small
    summary is kept, keyed by the file's path, size and modification time.
    """
    try:
        st = path.stat()
    except OSError:
        return frozenset(), None
    return _summarise_json(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _summarise_json(path: str, size: int, mtime_ns: int) -> tuple[frozenset[str], str | None]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return frozenset(), None
    doc = doc if isinstance(doc, dict) else {}
    return frozenset(doc), _coco_kind(doc)


def _coco_kind(doc: dict) -> str | None:
    """``"coco"`` (instances), ``"coco_panoptic"`` or None for a loaded json.

    Both COCO kinds have ``images`` / ``annotations`` / ``categories``; a panoptic file's annotations
    carry ``segments_info`` (one PNG each) and its categories ``isthing``.
    """
    if not {"images", "annotations", "categories"} <= set(doc):
        return None
    anns, cats = doc["annotations"], doc["categories"]
    panoptic = (isinstance(anns, list) and any(isinstance(a, dict) and "segments_info" in a for a in anns[:1])) or \
        (isinstance(cats, list) and any(isinstance(c, dict) and "isthing" in c for c in cats))
    return "coco_panoptic" if panoptic else "coco"


def _xml_root(path: Path) -> str:
    try:
        for _, el in ET.iterparse(path, events=("start",)):
            return el.tag
    except (OSError, ET.ParseError):
        return ""
    return ""


def coco_files(root: Path, kind: str = "coco") -> list[Path]:
    """The json files of ``kind`` (``"coco"`` or ``"coco_panoptic"``) in ``root`` or ``root/annotations``."""
    cands = sorted(root.glob("*.json")) + sorted((root / "annotations").glob("*.json"))
    return [p for p in cands[:_PROBE] if _json_summary(p)[1] == kind]


def _evidence(root: Path) -> dict[str, tuple[bool, str]]:
    """Per format: (fits, what was found)."""
    out: dict[str, tuple[bool, str]] = {}
    if root.is_file():
        suffix = root.suffix.lower()
        keys, kind = _json_summary(root) if suffix == ".json" else (frozenset(), None)
        tag = _xml_root(root) if suffix == ".xml" else ""
        spec = {}
        if suffix in (".yaml", ".yml"):
            try:
                spec = yaml.safe_load(root.read_text()) or {}
            except yaml.YAMLError:
                spec = {}
        out["coco"] = (kind == "coco", f"json keys {sorted(keys)[:6]}")
        out["coco_panoptic"] = (kind == "coco_panoptic", "annotations with segments_info" if kind == "coco_panoptic"
                                else "no panoptic annotations")
        out["labelme"] = ({"shapes", "imagePath"} <= keys, f"json keys {sorted(keys)[:6]}")
        out["cvat"] = (tag == "annotations", f"xml root <{tag}>" if tag else "not an xml file")
        out["yolo"] = (isinstance(spec, dict) and "names" in spec, "yaml with 'names'" if spec else "not a yaml")
        return out
    sub = {p.name for p in root.iterdir() if p.is_dir()}
    vocs = voc_dirs(root)
    voc = vocs[0] if len(vocs) == 1 else None
    voc_parts = sorted(d for d in ("Annotations", "SegmentationClass", "SegmentationObject", "ImageSets")
                       if voc is not None and (voc / d).is_dir())
    out["voc"] = (voc is not None and bool(set(voc_parts) & {"Annotations", "SegmentationClass"}),
                  f"JPEGImages/ in {voc.relative_to(root) if voc != root else '.'} with {voc_parts}" if voc
                  else "no JPEGImages/")
    y = find_yaml(root)
    spec = {}
    if y is not None:
        try:
            spec = yaml.safe_load(y.read_text()) or {}
        except yaml.YAMLError:
            spec = {}
    has_names = isinstance(spec, dict) and ("names" in spec or "nc" in spec)
    txt_labels = (root / "labels").is_dir() and any((root / "labels").rglob("*.txt"))
    out["yolo"] = (has_names or ("images" in sub and txt_labels),
                   f"{y.name} with names" if has_names else ("images/ + labels/*.txt" if txt_labels else
                                                              "no data.yaml with names, no labels/*.txt"))
    xml = root / "annotations.xml"
    tag = _xml_root(xml) if xml.is_file() else ""
    out["cvat"] = (tag == "annotations", f"annotations.xml with root <{tag}>" if tag else "no annotations.xml")
    out["cityscapes"] = ("leftImg8bit" in sub and bool({"gtFine", "gtCoarse"} & sub),
                         f"folders {sorted(sub & {'leftImg8bit', 'gtFine', 'gtCoarse'}) or 'none'} of "
                         "leftImg8bit/gtFine")
    ade = root / "ADEChallengeData2016" if "ADEChallengeData2016" in sub else root
    ade_ok = (ade / "images" / "training").is_dir() or (ade / "images" / "validation").is_dir()
    out["ade20k"] = (ade_ok and (ade / "annotations").is_dir(),
                     "images/{training,validation} + annotations/" if ade_ok else "no images/training or validation")
    cocos = coco_files(root)
    out["coco"] = (bool(cocos), f"COCO json {[p.name for p in cocos]}" if cocos else "no json with images/"
                   "annotations/categories")
    panoptic = coco_files(root, "coco_panoptic")
    out["coco_panoptic"] = (bool(panoptic), f"COCO-panoptic json {[p.name for p in panoptic]}" if panoptic else
                            "no json with segments_info annotations")
    cocos = cocos + panoptic  # neither is LabelMe
    jsons = sorted(root.rglob("*.json"))[:_PROBE]
    lm = [p for p in jsons if {"shapes", "imagePath"} <= _json_summary(p)[0]]
    out["labelme"] = (bool(lm) and not cocos, f"{len(lm)} of {len(jsons)} json files have shapes/imagePath")
    masks = next((root / d for d in ("masks", "annotations", "labels") if (root / d).is_dir()
                  and any((root / d).rglob("*.png"))), None)
    images = root / "images"
    out["mask_folder"] = (images.is_dir() and masks is not None and not out["ade20k"][0] and not txt_labels,
                          f"images/ + {masks.name}/*.png" if images.is_dir() and masks is not None else
                          "no images/ + masks/*.png")
    return out


def detect_format(root: PathLike) -> str:
    """The one format whose layout ``root`` has (one of :data:`FORMATS`).

    Raises:
        FileNotFoundError: ``root`` does not exist.
        ValueError: no format or several fit; the message lists the evidence for each.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset path not found: {root}")
    evidence = _evidence(root)
    fits = [f for f in FORMATS if evidence.get(f, (False, ""))[0]]
    if len(fits) == 1:
        return fits[0]
    lines = "\n".join(f"  {f}: {'FITS' if ok else 'no'} ({why})" for f, (ok, why) in evidence.items())
    what = "several layouts fit" if fits else "no known layout fits"
    raise ValueError(f"data.type auto: {what} {root} ({', '.join(fits) or 'none'}); found:\n{lines}\n"
                     f"set data.type to one of {', '.join(FORMATS)}")


def resolve_auto(root: PathLike, split: str) -> tuple[str, dict]:
    """``(data.type, dataset arguments)`` for the dataset at ``root``, one split of it."""
    root = Path(root)
    kind = detect_format(root)
    if kind in ("coco", "coco_panoptic"):
        return kind, _coco_args(root, split, kind)
    if kind == "mask_folder":
        masks = next(root / d for d in ("masks", "annotations", "labels") if (root / d).is_dir())
        images = root / "images"
        if (images / split).is_dir() and (masks / split).is_dir():
            images, masks = images / split, masks / split
        args: dict = {"images_dir": images, "masks_dir": masks}
        listed = root / "classes.txt"  # what `segzoo data convert --to mask_folder` writes
        if listed.is_file():
            args["classes"] = [n.strip() for n in listed.read_text().splitlines() if n.strip()]
        return "mask_folder", args
    if kind == "labelme":  # what `data convert --to labelme` writes for several splits: <split>/ folders
        return kind, {"root": root / split if (root / split).is_dir() else root}
    if kind == "cvat":  # a project export: the split is a subset (Train, Validation, ...) of one xml
        return kind, {"root": root, **_cvat_subset(root, split)}
    return kind, {"root": root, "split": split}


def _cvat_subset(root: Path, split: str) -> dict:
    """``{"subset": name}`` when the CVAT file's images carry subsets and one of them is ``split``
    (``train``/``Train``, ``val``/``Validation``), so that no split reads another's images; else ``{}``."""
    subsets = {im.get("subset") for im in CVAT(root, BOXES).entries if im.get("subset")}
    found = [s for s in sorted(subsets) if s.lower() == split or s.lower().startswith(split)]
    if subsets and not found:
        raise ValueError(f"data.type auto: {root} has CVAT subsets {sorted(subsets)} and none is {split!r}; "
                         f"set data.type: cvat and data.{split}.subset")
    return {"subset": found[0]} if found else {}


def _coco_args(root: Path, split: str, kind: str = "coco") -> dict:
    if root.is_file():
        folder = root.parent / "images" if (root.parent / "images").is_dir() else root.parent
        return {"root": folder, "ann_file": root}
    files = coco_files(root, kind)
    named = [p for p in files if split in p.stem] or files
    if len(named) != 1:
        raise ValueError(f"data.type auto: {root} holds COCO files {[p.name for p in files]}; none or several match "
                         f"split {split!r}: set data.{split}.annotations and data.{split}.images")
    ann = named[0]
    stem = ann.stem.replace("instances_", "").replace("panoptic_", "")
    pngs = ann.with_suffix("")  # a panoptic json's PNG folder (annotations/panoptic_val2017/) holds no images
    for folder in (root / stem, root / "images" / split, root / split, root / "images", root):
        if folder.is_dir() and folder != pngs and any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir()):
            return {"root": folder, "ann_file": ann}
    raise FileNotFoundError(f"data.type auto: no image folder for {ann} under {root} (tried {stem}/, images/{split}/, "
                            f"{split}/, images/); set data.{split}.images")
