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

from segzoo.data.errors import DataError

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
    if callable(getattr(ds, "check", None)):  # every reader checks its own files (the data check of its base)
        ds.check(report, num_classes, ignore_index=ignore_index, allow_empty=allow_empty)
    else:
        report.warnings.append(f"no checks for {type(ds).__name__}; only segzoo datasets are checked")
    return report
