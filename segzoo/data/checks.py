"""Data checks run before training: label conventions and files, with messages that say how to fix them.

``segzoo data check CONFIG`` prints the report; the trainer runs the same checks and refuses
data with errors. Checks read the raw files (before transforms):

* classes found in the data vs the model's ``num_classes``;
* semantic mask values outside ``[0, num_classes)`` that are not ``ignore_index``;
* masks holding only 0 and 255 without ``data.binary`` (255 is the ignore index: such data
  would train on nothing);
* empty images (no labelled pixel, or no annotation at all: an image whose only annotations
  are crowd regions is not empty);
* COCO json: every problem of :mod:`segzoo.data.formats.coco_json` (polygons with fewer than 3
  points, RLE sizes, non-finite numbers, duplicate ids, ...) with its image and annotation
  id, ``width``/``height`` that differ from the image file (read from its header), boxes
  outside the image or with no area;
* missing, unreadable or corrupt files, masks whose size differs from their image.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from segzoo.data.errors import DataError
from segzoo.data.formats import coco_json
from segzoo.data.formats.coco import CocoInstances, CocoSemantic
from segzoo.data.formats.mask_folder import MaskFolder, size_mismatch
from segzoo.data.image import image_size, read_mask

__all__ = ["DataError", "DataReport", "check_dataset"]


@dataclasses.dataclass
class DataReport:
    """What a data check found.

    Attributes:
        name: which dataset was checked (e.g. ``"train"``).
        num_items: images checked.
        classes_found: sorted labels (0-based, as the model sees them) that occur in the data.
        errors: problems that make training refuse the data.
        warnings: suspicious but usable data.
        found_names: how :meth:`format` shows ``classes_found``: ``name (source id N)`` with the id
            the files give the class (a COCO category id, a mask value, a YOLO id), or just the name
            where the files name classes; the label where the class has no name.
    """

    name: str
    num_items: int = 0
    classes_found: list[int] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    found_names: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def name_classes(self, names: list[str] | None, source_id=None) -> None:
        """Fill ``found_names`` from class names (by label) and ``source_id(label)`` (int, list or None)."""
        self.found_names = [class_display(k, names, source_id(k) if source_id else None) for k in self.classes_found]

    def format(self) -> str:
        found = ", ".join(self.found_names) if self.found_names else str(self.classes_found)
        lines = [f"[{self.name}] {self.num_items} images, classes found: {found}"]
        lines += [f"  ERROR: {e}" for e in self.errors]
        lines += [f"  warning: {w}" for w in self.warnings]
        if self.ok:
            lines.append("  OK" + (" (with warnings)" if self.warnings else ""))
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        if self.errors:
            raise DataError(f"the {self.name} data has problems (run `segzoo data check CONFIG`):\n"
                            + "\n".join(f"  - {e}" for e in self.errors))


def class_display(label: int, names: list[str] | None, source=None) -> str:
    """``cat (source id 3)``: a label's name and the id(s) its files give it; the label without a name."""
    name = str(names[label]) if names and 0 <= label < len(names) else None
    sources = [s for s in (source if isinstance(source, (list, tuple)) else [source]) if s is not None]
    ids = f" (source id {', '.join(map(str, sources))})" if sources else ""
    if name is None:
        return str(label) if sources in ([], [label]) else f"{label}{ids}"
    return f"{name}{ids}"


def _examples(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def _unwrap(dataset):
    while hasattr(dataset, "source") or hasattr(dataset, "dataset"):
        dataset = dataset.__dict__.get("source") or dataset.__dict__.get("dataset")
    return dataset


def check_dataset(
    dataset,
    num_classes: int,
    name: str = "data",
    ignore_index: int = 255,
    allow_empty: bool = False,
) -> DataReport:
    """Check a segzoo dataset (MaskFolder, CocoSemantic, CocoInstances, Shapes, or a Subset of them).

    Args:
        dataset: the dataset; its raw files are read, transforms are not applied.
        num_classes: the model's ``num_classes`` (semantic: including background; instance and
            detection: object classes only).
        name: label used in messages.
        ignore_index: the semantic ignore label.
        allow_empty: report images without labels as warnings instead of errors.
    """
    ds = _unwrap(dataset)
    report = DataReport(name)
    if isinstance(ds, MaskFolder):
        _check_mask_folder(ds, num_classes, ignore_index, allow_empty, report)
    elif isinstance(ds, CocoInstances):
        _check_coco(ds, num_classes, allow_empty, report)
    elif hasattr(ds, "check"):  # the format readers check themselves (segzoo.data.records.AnnotatedImages.check)
        ds.check(report, num_classes, ignore_index=ignore_index, allow_empty=allow_empty)
    else:
        report.warnings.append(f"no checks for {type(ds).__name__}; only segzoo datasets are checked")
    return report


def _check_mask_folder(ds: MaskFolder, num_classes: int, ignore: int, allow_empty: bool, report: DataReport) -> None:
    report.num_items = len(ds)
    if ds.num_classes is not None and ds.num_classes > num_classes:
        report.errors.append(
            f"data.classes names {ds.num_classes} labels ({_examples(ds.classes, 6)}) but num_classes={num_classes}: "
            "for semantic data data.classes lists every label including background, label 0 first; give one name "
            f"per label or set model.num_classes={ds.num_classes}")

    if ds.missing_masks:
        report.errors.append(f"{len(ds.missing_masks)} images have no mask with the same stem in "
                             f"{ds.masks_dir}: {_examples(ds.missing_masks)}; add the masks or remove the images")
    if ds.missing_images:
        report.errors.append(f"{len(ds.missing_images)} masks have no image with the same stem in "
                             f"{ds.images_dir}: {_examples(ds.missing_images)}")
    found: set[int] = set()
    out_of_range: dict[int, list[str]] = defaultdict(list)
    binary_like, empty, bad_size, unreadable = [], [], [], []
    explicit_255 = ds.mapping is not None and 255 in {int(k) for k in ds.mapping}  # the user said what 255 means
    for img_path, mask_path in ds.samples:
        try:
            hw = image_size(img_path)
            raw = read_mask(mask_path)
            labels = ds.map_labels(raw)
        except (OSError, ValueError) as e:
            unreadable.append(str(e))
            continue
        if labels.shape != hw:
            bad_size.append(size_mismatch(mask_path, labels.shape, hw))
        values = np.unique(labels)
        if not ds.binary and not explicit_255 and set(np.unique(raw).tolist()) == {0, 255}:
            binary_like.append(mask_path.name)
        valid = [int(v) for v in values if v != ignore]
        if not valid:
            empty.append(mask_path.name)
        for v in valid:
            if v < 0 or v >= num_classes:
                out_of_range[v].append(mask_path.name)
            else:
                found.add(v)
    report.classes_found = sorted(found)
    if unreadable:
        report.errors.append(f"{len(unreadable)} files cannot be read: {_examples(unreadable)}")
    if bad_size:
        report.errors.append(f"{len(bad_size)} masks differ in size from their image: {_examples(bad_size)}")
    if binary_like:
        report.errors.append(
            f"{len(binary_like)} masks hold only 0 and 255 ({_examples(binary_like)}): 255 is the ignore index, "
            "so the foreground would never be learned; these look like binary masks: set data.binary=true "
            "(MaskFolder(binary=True)) to map 255 to label 1. If 255 really marks unlabelled pixels in them, say "
            "so with data.mapping={255: 255}")
    for v, files in sorted(out_of_range.items()):
        if v in (255,) and binary_like:
            continue
        report.errors.append(
            f"mask value {v} is outside [0, {num_classes - 1}] and is not ignore_index={ignore} in "
            f"{len(files)} masks ({_examples(files)}); set model.num_classes to at least {v + 1}, map the "
            "values with data.mapping, or set data.ignore_index")
    if empty:
        msg = (f"{len(empty)} masks have no labelled pixel (only ignore_index={ignore}): {_examples(empty)}")
        (report.warnings if allow_empty else report.errors).append(
            msg + ("" if allow_empty else "; remove them or set data.allow_empty=true"))
    if ds.num_classes is not None and ds.num_classes < num_classes:
        unnamed = sorted(v for v in found if v >= ds.num_classes)
        if unnamed:  # labels without a name: usually the background left out of data.classes
            report.errors.append(
                f"data.classes names {ds.num_classes} labels ({_examples(ds.classes, 6)}) but the masks hold labels "
                f"{_examples([str(v) for v in unnamed], 6)} too: for semantic data data.classes lists every label "
                "including background, label 0 first; give one name per label")
        else:  # more outputs than labels: a head made for classes to come, or a num_classes typo
            report.warnings.append(
                f"the data names {ds.num_classes} labels ({_examples(ds.classes, 6)}) and its masks use no other, but "
                f"the model has num_classes={num_classes}; set model.num_classes={ds.num_classes} unless the extra "
                "outputs are intended")
    _missing_classes(report, num_classes, ds.classes)
    report.name_classes(ds.classes, lambda v: _mask_values(ds, v))


def _mask_values(ds: MaskFolder, label: int) -> list[int]:
    """The raw mask values that become ``label`` (``data.mapping``/``binary``)."""
    mapping = {int(k): int(v) for k, v in (ds.mapping or {}).items()}
    return sorted({k for k, v in mapping.items() if v == label} | ({label} if label not in mapping else set()))


def _missing_classes(report: DataReport, num_classes: int, names: list[str] | None) -> None:
    missing = [c for c in range(num_classes) if c not in report.classes_found]
    if missing and report.num_items:
        named = [f"{c} ({names[c]})" if names and c < len(names) else str(c) for c in missing]
        report.warnings.append(f"classes {_examples(named, 8)} never occur in this data (num_classes={num_classes})")


def _check_coco(ds: CocoInstances, num_classes: int, allow_empty: bool, report: DataReport) -> None:
    semantic = isinstance(ds, CocoSemantic)
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
    for kind_name, items in ds.problems.items():
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
            problems["image_size"].append(f"{coco_json.image_where(info)}: {', '.join(bad)} is not a positive number")
        elif isinstance(jh, (int, float)) and isinstance(jw, (int, float)) and (jh, jw) != (h, w):
            turned = " (turned by 90 degrees: EXIF orientation?)" if (jh, jw) == (w, h) else ""
            problems["image_size"].append(f"{coco_json.image_where(info)}: json {jw}x{jh}, file {w}x{h}{turned}")
        anns = ds.annotations(i, with_crowd=True)
        if not anns:  # crowd regions count: such an image has labels (ignore regions), it is not empty
            empty.append(info["file_name"])
        for a in anns:
            for kind_name, detail in coco_json.annotation_problems(a, (h, w), ds.needs_bbox, ds.with_masks):
                problems[kind_name].append(f"{coco_json.ann_where(a, info)}: {detail}")
            if a.get("iscrowd", 0):
                continue
            found.add(ds.cat_to_label[a["category_id"]] + (1 if semantic else 0))
            bbox = a.get("bbox")
            if ds.needs_bbox and _valid_box(bbox) and bbox[2] > 0 and bbox[3] > 0:
                x, y, bw, bh = bbox
                if x < -1 or y < -1 or x + bw > w + 1 or y + bh > h + 1:
                    outside.append(f"{coco_json.ann_where(a, info)}: bbox xywh {bbox} in a {w}x{h} image")
    if semantic:
        found.add(0)
    report.classes_found = sorted(found)
    if missing:
        report.errors.append(f"{len(missing)} image files listed in {ds.ann_file} are missing: "
                             f"{_examples(missing)}; check the image folder (root)")
    if unreadable:
        report.errors.append(f"{len(unreadable)} image files cannot be read: {_examples(unreadable)}")
    for kind_name, items in problems.items():
        severity = coco_json.KINDS[kind_name][0]
        line = coco_json.group(kind_name, items, prefix=f"{ds.ann_file.name}: ")
        (report.warnings if severity == "warning" else report.errors).append(line)
    if outside:
        report.errors.append(f"{ds.ann_file.name}: {len(outside)} boxes lie outside their image: "
                             f"{_examples(outside)}; COCO bbox is [x, y, width, height] in pixels: fix the export "
                             "(xyxy or normalised boxes?)")
    if empty:
        msg = f"{len(empty)} images have no annotations: {_examples(empty)}"
        (report.warnings if allow_empty else report.errors).append(
            msg + ("" if allow_empty else "; remove them or set data.allow_empty=true to keep them as negatives "
                   "(background only)"))
    _missing_classes(report, num_classes, ds.classes)
    shift = 1 if semantic else 0
    report.name_classes(ds.classes, lambda k: ds.cat_ids[k - shift] if 0 <= k - shift < len(ds.cat_ids) else None)


def _valid_box(bbox) -> bool:
    return (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in bbox))
