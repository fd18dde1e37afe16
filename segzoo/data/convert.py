"""``segzoo data convert SRC DST --to {coco,mask_folder,yolo}``: any layout segzoo reads, written as another.

The source is opened with the format's reader (``--from``, default recognised by
:func:`~segzoo.data.formats.detect.detect_format`), split by split, and written as:

* ``coco``: ``annotations/instances_{split}.json`` + ``{split}/`` images. Polygons stay polygons,
  pixel masks become RLE (lossless), crowd regions stay ``iscrowd=1``. Category ids are
  ``label + 1`` in class order.
* ``mask_folder``: ``images/{split}/`` + ``masks/{split}/NAME.png`` palette PNGs of the semantic
  labels (background 0 where the format has none, crowd regions ``255``) + ``classes.txt``.
* ``yolo``: ``images/{split}/``, ``labels/{split}/NAME.txt`` and ``data.yaml`` (``names`` in class
  order). Objects with a shape become polygons (masks are traced along their pixel edges, so they
  rasterise back to the same pixels); objects with only a box become boxes, or rectangles when the
  split has polygons. YOLO cannot hold crowd regions or holes: those are dropped or filled and the
  report says how many.
* ``labelme``: ``NAME.json`` beside each image and ``labels.txt``; ``cvat``: ``annotations.xml`` (CVAT
  for images 1.1) and ``images/`` (:mod:`segzoo.data.writers`: polygons, masks with holes as the
  formats' masks, crowd regions as ``__ignore__`` / ``is_crowd``).

The destination is written to a temporary folder beside it and renamed at the end, so a failed
conversion leaves nothing half-written; an existing non-empty destination is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from segzoo.data.contours import mask_to_polygons
from segzoo.data.records import AnnotatedImages, Obj, examples, palette_bytes
from segzoo.data.sources import open_splits
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS, Target
from segzoo.data.writers import write_cvat, write_labelme

PathLike = str | os.PathLike
TARGETS = ("coco", "mask_folder", "yolo", "labelme", "cvat")


@dataclasses.dataclass
class ConvertReport:
    """What a conversion wrote, kept and lost."""

    source: str
    target: str
    dst: str
    classes: list[str] = dataclasses.field(default_factory=list)
    splits: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # split -> (images, objects)
    crowd_kept: int = 0
    ignore_images: int = 0
    crowd_dropped: int = 0
    holes_filled: int = 0
    parts_split: int = 0
    boxes_as_rectangles: int = 0
    notes: list[str] = dataclasses.field(default_factory=list)

    def format(self) -> str:
        parts = ", ".join(f"{s}: {n} images, {k} objects" for s, (n, k) in self.splits.items())
        lines = [f"converted {self.source} -> {self.target} in {self.dst} ({parts})",
                 f"classes ({len(self.classes)}, in id order): {examples(self.classes, 12)}"]
        if self.crowd_kept:
            lines.append(f"kept {self.crowd_kept} crowd regions (iscrowd=1)")
        if self.ignore_images:
            lines.append(f"kept the crowd/ignore regions of {self.ignore_images} images (label 255)")
        if self.crowd_dropped:
            lines.append(f"dropped {self.crowd_dropped} crowd regions: YOLO labels cannot mark regions to ignore")
        if self.holes_filled:
            lines.append(f"filled the holes of {self.holes_filled} objects: a YOLO polygon cannot have holes")
        if self.parts_split:
            lines.append(f"{self.parts_split} objects have several separate parts: each part is its own YOLO line")
        if self.boxes_as_rectangles:
            lines.append(f"{self.boxes_as_rectangles} objects have only a box: written as rectangle polygons")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- writers
class _Names:
    """Unique output file names (``a.jpg`` twice becomes ``a.jpg`` and ``1_a.jpg``), unique by stem."""

    def __init__(self) -> None:
        self.stems: set[str] = set()

    def __call__(self, name: str) -> str:
        stem, suffix = Path(name).stem, Path(name).suffix or ".png"
        out, n = stem, 0
        while out.lower() in self.stems:
            n += 1
            out = f"{n}_{stem}"
        self.stems.add(out.lower())
        return out + suffix


def _write_image(ds: AnnotatedImages, index: int, dst: Path) -> None:
    src = ds.image_path(index)
    if src.is_file():
        shutil.copyfile(src, dst)
    else:  # images not on disk (embedded in json, tiles): save the decoded pixels
        Image.fromarray(ds.load_image(index).permute(1, 2, 0).numpy()).save(dst.with_suffix(".png"))


def _image_name(ds: AnnotatedImages, index: int, names: _Names) -> str:
    path = ds.image_path(index)
    return names(path.name if path.is_file() else Path(path.name).stem + ".png")


def _copy_images(ds: AnnotatedImages, folder: Path):
    """Copy each image of ``ds`` into ``folder`` under a unique name; yields ``(index, name)``."""
    names = _Names()
    for i in range(len(ds)):
        name = _image_name(ds, i, names)
        _write_image(ds, i, folder / name)
        yield i, name


def write_coco(parts, dst: Path, report: ConvertReport) -> None:
    (dst / "annotations").mkdir(parents=True)
    for split, ds in parts:
        folder = dst / split
        folder.mkdir()
        images, anns, names = [], [], _Names()
        for i in range(len(ds)):
            h, w = ds.image_hw(i)
            name = _image_name(ds, i, names)
            _write_image(ds, i, folder / name)
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
            for obj in ds.objects(i, h, w):
                anns.append({"id": len(anns) + 1, "image_id": i + 1, **obj.to_coco(h, w)})
                report.crowd_kept += obj.crowd
        cats = [{"id": k + 1, "name": c, "supercategory": ""} for k, c in enumerate(ds.object_classes)]
        doc = {"images": images, "annotations": anns, "categories": cats}
        (dst / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
        report.splits[split] = (len(images), len(anns))


def write_mask_folder(parts, dst: Path, report: ConvertReport) -> None:
    for split, ds in parts:
        if ds.num_classes > 255:
            raise ValueError(f"{ds.num_classes} classes do not fit 8-bit label PNGs")
        (dst / "images" / split).mkdir(parents=True)
        (dst / "masks" / split).mkdir(parents=True)
        names, count = _Names(), 0
        palette = palette_bytes(ds.palette)
        for i in range(len(ds)):
            h, w = ds.image_hw(i)
            name = _image_name(ds, i, names)
            _write_image(ds, i, dst / "images" / split / name)
            labels = ds.semantic_map(i, h, w)
            if labels.min() < 0 or labels.max() > 255:
                raise ValueError(f"{ds.item_name(i)}: label values {labels.min()}..{labels.max()} do not fit a PNG")
            report.ignore_images += bool((labels == 255).any())
            png = Image.fromarray(labels.astype(np.uint8), mode="P")
            png.putpalette(palette)
            png.save(dst / "masks" / split / f"{Path(name).stem}.png")
            count += 1
        report.splits[split] = (count, 0)
    (dst / "classes.txt").write_text("\n".join(parts[0][1].classes) + "\n")


def _norm(pts: np.ndarray, h: int, w: int) -> str:
    xy = np.clip(np.asarray(pts, dtype=np.float64).reshape(-1, 2) / (w, h), 0.0, 1.0)
    return " ".join(f"{v:.6f}" for v in xy.reshape(-1))


def _yolo_lines(obj: Obj, h: int, w: int, polygons: bool, tolerance: float, report: ConvertReport) -> list[str]:
    if obj.crowd:
        report.crowd_dropped += 1
        return []
    x1, y1, x2, y2 = obj.xyxy(h, w)
    if not polygons:
        return [f"{obj.label} {_norm(np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]), h, w)}"]
    if isinstance(obj.segmentation, list):
        polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in obj.segmentation if len(p) >= 6]
    elif obj.has_shape:
        polys, holes = mask_to_polygons(obj.pixels(h, w), tolerance)
        report.holes_filled += bool(holes)
    else:
        report.boxes_as_rectangles += 1
        polys = [np.array([(x1, y1), (x2, y1), (x2, y2), (x1, y2)])]
    report.parts_split += len(polys) > 1
    return [f"{obj.label} {_norm(p, h, w)}" for p in polys]


def write_yolo(parts, dst: Path, report: ConvertReport, tolerance: float = 0.0) -> None:
    spec: dict = {}
    for split, ds in parts:
        (dst / "images" / split).mkdir(parents=True)
        (dst / "labels" / split).mkdir(parents=True)
        # polygons when any object of the split has a shape (stops at the first one)
        polygons = any(o.has_shape for i in range(len(ds)) for o in ds.objects(i, *ds.image_hw(i)))
        names, count = _Names(), 0
        for i in range(len(ds)):
            h, w = ds.image_hw(i)
            name = _image_name(ds, i, names)
            _write_image(ds, i, dst / "images" / split / name)
            lines = [line for o in ds.objects(i, h, w) for line in _yolo_lines(o, h, w, polygons, tolerance, report)]
            (dst / "labels" / split / f"{Path(name).stem}.txt").write_text("".join(f"{x}\n" for x in lines))
            count += len(lines)
        spec[split] = f"images/{split}"
        report.splits[split] = (len(ds), count)
    spec["names"] = dict(enumerate(parts[0][1].object_classes))
    (dst / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


SPLITS = ("train", "val", "test")


def _standard_splits(parts: list, notes: list[str]) -> list:
    """The splits renamed to train / val / test, which every target's reader (and data.type auto) finds:
    ``train2017`` -> train, ``validation`` -> val, a single ``instances.json`` -> train."""
    names: dict[int, str] = {}
    for k, (split, _) in enumerate(parts):
        known = [s for s in SPLITS if s in split.lower()]
        if known and known[0] not in names.values():
            names[k] = known[0]
    for k in range(len(parts)):
        if k not in names:
            free = [s for s in SPLITS if s not in names.values()]
            if not free:
                raise ValueError(f"the source has more splits than {', '.join(SPLITS)}: {[s for s, _ in parts]}; "
                                 "convert some of them with --split")
            names[k] = free[0]
    renamed = [f"{split!r} as {names[k]!r}" for k, (split, _) in enumerate(parts) if names[k] != split]
    if renamed:
        notes.append(f"split {', '.join(renamed)} (the names segzoo's readers look for)")
    return [(names[k], ds) for k, (_, ds) in enumerate(parts)]


def write(parts, dst: Path, report: ConvertReport, to: str, tolerance: float = 0.0) -> None:
    """Write ``[(split, dataset)]`` into the new folder ``dst`` in format ``to`` (one of :data:`TARGETS`)."""
    if to == "coco":
        write_coco(parts, dst, report)
    elif to == "mask_folder":
        write_mask_folder(parts, dst, report)
    elif to == "yolo":
        write_yolo(parts, dst, report, tolerance)
    elif to == "labelme":
        write_labelme(parts, dst, report, _copy_images)
    elif to == "cvat":
        write_cvat(parts, dst, report, _copy_images)
    else:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")


def convert(src: PathLike, dst: PathLike, to: str, source_format: str = "auto", splits: list[str] | None = None,
            read: Target | None = None, tolerance: float = 0.0) -> ConvertReport:
    """Convert the dataset at ``src`` into ``dst`` in format ``to`` (see the module docstring).

    Args:
        src: the source folder (or file, for COCO json / CVAT xml / YOLO yaml).
        dst: the destination folder; must not exist or be empty.
        to: ``"coco"``, ``"mask_folder"``, ``"yolo"``, ``"labelme"`` or ``"cvat"``.
        source_format: one of :data:`~segzoo.data.formats.detect.FORMATS`, or ``"auto"``.
        splits: convert only these splits.
        read: which annotations to read (:mod:`segzoo.data.targets`): ``INSTANCE_MASKS`` (shapes),
            ``BOXES`` (boxes) or None (shapes where the format has them); ``to="mask_folder"``
            reads class maps.
        tolerance: YOLO polygons traced from masks are simplified by this many pixels (0: exact).
    """
    if to not in TARGETS:
        raise ValueError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    dst = Path(dst)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"{dst} exists and is not empty; choose a new destination folder")
    fmt, parts = open_splits(src, source_format, CLASS_MAP if to == "mask_folder" else read, splits)
    classes = [d.object_classes for _, d in parts]
    if any(c != classes[0] for c in classes):
        raise ValueError(f"the splits of {src} have different classes {classes}; give the class names explicitly")
    notes: list[str] = []
    parts = _standard_splits(parts, notes)
    report = ConvertReport(fmt, to, str(dst), classes=parts[0][1].classes, notes=notes)
    for _, d in parts:
        report.notes += [n for n in d.notices + d.problems if n not in report.notes]
    write_folder(parts, dst, report, to, tolerance)
    if to == "yolo" and tolerance:
        report.notes.append(f"polygons traced from masks were simplified by {tolerance} px")
    return report


def write_folder(parts, dst: Path, report: ConvertReport, to: str, tolerance: float = 0.0) -> None:
    """:func:`write` into a sibling ``.NAME.partial`` folder renamed to ``dst`` once complete, so an
    interrupted or failed write leaves no half-written dataset (``dst`` must not exist or be empty)."""
    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # our own leftover from an interrupted write
    tmp.mkdir(parents=True)
    try:
        write(parts, tmp, report, to, tolerance)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if dst.exists():
        dst.rmdir()
    tmp.rename(dst)


# `--task` of `segzoo data convert`: which annotations to read (auto: shapes where the format has them)
READS = {"auto": None, "instance": INSTANCE_MASKS, "detection": BOXES}


def run(args: argparse.Namespace) -> int:
    """Convert from parsed arguments and print the report; user errors print one line and return 2."""
    try:
        report = convert(args.src, args.dst, args.to, args.source_format, args.splits, READS[args.task],
                         args.simplify)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        print("error: " + "; ".join(line.strip() for line in str(e).splitlines() if line.strip()), file=sys.stderr)
        return 2
    print(report.format())
    return 0

