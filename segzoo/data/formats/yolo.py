"""YOLO (Ultralytics) detection and segmentation layout: ``data.yaml``, ``images/<split>``, ``labels/<split>``.

What Ultralytics, Roboflow ("YOLOv8") and CVAT ("Ultralytics YOLO") write::

    data.yaml          path: (optional dataset root), train: images/train, val: images/val,
                       names: [a, b] or {0: a, 1: b} (or nc: N)
    images/train/x.jpg
    labels/train/x.txt one object per line, coordinates normalised to [0, 1] by the image size:
                       detection    ``cls x_centre y_centre width height``
                       segmentation ``cls x1 y1 x2 y2 ...`` (a polygon, at least 3 points)

An image's label file is its path with the last ``/images/`` replaced by ``/labels/`` and the suffix
by ``.txt``; an image without one has no objects. ``train``/``val`` may also be a list of folders
or a ``.txt`` file of image paths.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from segzoo.data.records import IMAGE_SUFFIXES, AnnotatedImages, Obj
from segzoo.data.targets import BOXES, Target

PathLike = str | os.PathLike
YAML_NAMES = ("data.yaml", "dataset.yaml", "data.yml")


def find_yaml(root: Path) -> Path | None:
    """``root`` itself when it is a yaml file, else ``data.yaml`` (or the one yaml) in it."""
    if root.is_file():
        return root
    for name in YAML_NAMES:
        if (root / name).is_file():
            return root / name
    found = [p for p in root.glob("*.y*ml") if p.suffix in (".yaml", ".yml")]
    return found[0] if len(found) == 1 else None


def read_names(spec: dict, path: Path) -> list[str]:
    """``names`` (list or ``{id: name}``) or ``nc`` of a data.yaml as a list in id order."""
    names = spec.get("names")
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: names keys must be class ids, got {list(names)[:5]}") from None
        if ids != list(range(len(ids))):
            raise ValueError(f"{path}: names ids must be 0..{len(ids) - 1} without gaps, got {ids}")
        return [str(names[k] if k in names else names[str(k)]) for k in ids]
    if isinstance(names, (list, tuple)):
        return [str(n) for n in names]
    if isinstance(spec.get("nc"), int):
        return [str(i) for i in range(spec["nc"])]
    raise ValueError(f"{path} has no 'names' list (or dict) of class names; add names: [cat, dog, ...]")


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` becomes ``/labels/`` and the suffix ``.txt``."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = str(image)
    if sa in s:
        head, tail = s.rsplit(sa, 1)
        s = head + sb + tail
    return Path(s).with_suffix(".txt")


def _images_in(entry: str | list, base: Path, yaml_dir: Path) -> list[Path]:
    entries = entry if isinstance(entry, (list, tuple)) else [entry]
    out: list[Path] = []
    for e in entries:
        e = str(e)
        tries = [Path(e)] if Path(e).is_absolute() else [base / e, yaml_dir / e, yaml_dir / e.lstrip("./")]
        if e.startswith("../"):  # Roboflow writes ../train/images beside the yaml
            tries.append(yaml_dir / e[3:])
        p = next((t for t in tries if t.exists()), None)
        if p is None:
            raise FileNotFoundError(f"split path {e!r} not found (tried {', '.join(str(t) for t in tries)})")
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        else:  # a .txt list of image paths; './x' is relative to the list's folder
            for line in p.read_text().splitlines():
                line = line.strip()
                if line:
                    q = Path(line)
                    out.append(q if q.is_absolute() else (p.parent / line if line.startswith("./") else base / q))
    return out


class YOLO(AnnotatedImages):
    """A YOLO (Ultralytics) dataset split: boxes, or polygons (instance masks, class maps).

    Args:
        root: the ``data.yaml`` file or its folder; a folder without a yaml needs ``classes`` and
            holds ``images/<split>`` + ``labels/<split>``.
        split: the yaml key (``train``, ``val``, ``test``).
        target: ``BOXES``, ``INSTANCE_MASKS`` (polygon masks) or ``CLASS_MAP`` (polygons painted,
            label ``k`` -> ``k + 1``) (:mod:`segzoo.data.targets`).
        classes: class names (``data.classes``): the object classes in YOLO id order for instance and
            detection, every label with background first for semantic (:func:`split_classes`);
            default: the yaml's ``names``.
        transforms: a joint transform ``transforms(image, target)``.
        ignore_index: semantic ignore label.
    """

    config_keys = ("root", "split", "classes", "ignore_index")

    def __init__(self, root: PathLike, split: str = "train", target: Target = BOXES,
                 classes: list[str] | None = None, transforms=None, ignore_index: int = 255) -> None:
        super().__init__(target, transforms, ignore_index)
        classes = self.set_classes(classes)
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"YOLO dataset not found: {root}")
        self.split = split
        yaml_path = find_yaml(root)
        if yaml_path is None:
            if classes is None:
                raise ValueError(f"{root} has no data.yaml: give the class names (data.classes) or add a data.yaml "
                                 "with names: [...]")
            base = root
            self.images = _images_in(f"images/{split}", base, base)
        else:
            try:
                spec = yaml.safe_load(yaml_path.read_text()) or {}
            except (yaml.YAMLError, UnicodeDecodeError) as e:
                raise ValueError(f"{yaml_path} is not valid YAML: {e}") from None
            if not isinstance(spec, dict):
                raise ValueError(f"{yaml_path} is not a YOLO dataset yaml: it holds a {type(spec).__name__}, not a "
                                 "mapping with path, train, val and names")
            if "kpt_shape" in spec:
                raise ValueError(f"{yaml_path} describes a pose (keypoint) dataset (kpt_shape); segzoo reads YOLO "
                                 "detection and segmentation labels")
            names = read_names(spec, yaml_path)
            if classes is not None and len(classes) != len(names):
                raise ValueError(f"data.classes names {len(classes)} object classes {classes} but {yaml_path} has "
                                 f"{len(names)} ({names}); YOLO ids index these names")
            classes = classes if classes is not None else names
            base = Path(spec["path"]) if spec.get("path") else yaml_path.parent
            if not base.is_absolute():
                base = next((b for b in (yaml_path.parent / base, base) if b.is_dir()), yaml_path.parent)
            if not spec.get(split):
                keys = [k for k in ("train", "val", "test") if spec.get(k)]
                raise ValueError(f"{yaml_path} has no {split!r} split; it has {keys}")
            self.images = _images_in(spec[split], base, yaml_path.parent)
        self.yaml_path = yaml_path
        self.object_classes = [str(c) for c in classes]
        if not self.images:
            raise ValueError(f"split {split!r} of {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
        self.labels = [label_path(p) for p in self.images]
        if not any(p.is_file() for p in self.labels):
            self.problems.append(f"none of the {len(self.images)} images of split {split!r} has a label file (looked "
                                 f"for {self.labels[0]}): labels go in labels/<split>/NAME.txt beside images/<split>/")

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def source_id(self, label: int) -> int | None:
        """The YOLO class id of a label (semantic label 0, background, has none)."""
        k = label - 1 if self.target.label_map else label
        return k if k >= 0 else None

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        path = self.labels[index]
        if not path.is_file():
            return []
        out = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts]
            except ValueError:
                raise ValueError(f"{path}:{n}: {line.strip()!r} is not numbers") from None
            cls, coords = values[0], values[1:]
            if not math.isfinite(cls) or cls != int(cls) or not 0 <= cls < len(self.object_classes):
                raise ValueError(f"{path}:{n}: class {parts[0]} is not an id in 0..{len(self.object_classes) - 1} "
                                 f"(names: {self.object_classes[:5]}{'...' if len(self.object_classes) > 5 else ''})")
            finite = [c for c in coords if math.isfinite(c)]  # NaN and inf: the shared check names them
            if min(finite, default=0) < -0.01 or max(finite, default=0) > 1.01:
                raise ValueError(f"{path}:{n}: coordinates {[round(c, 3) for c in coords[:4]]} are not normalised to "
                                 "[0, 1]; YOLO labels divide x by the image width and y by its height")
            if len(coords) == 4:
                xc, yc, bw, bh = coords[0] * width, coords[1] * height, coords[2] * width, coords[3] * height
                box = (xc - bw / 2, yc - bh / 2, xc + bw / 2, yc + bh / 2)
                out.append(Obj(int(cls), box=box, where=f"line {n}"))
            elif len(coords) >= 6 and len(coords) % 2 == 0:
                poly = [c * (width if k % 2 == 0 else height) for k, c in enumerate(coords)]
                out.append(Obj(int(cls), segmentation=[poly], where=f"line {n}"))
            else:
                raise ValueError(f"{path}:{n}: {len(coords)} coordinates; a YOLO line holds 4 (box: x_centre y_centre "
                                 "width height) or an even number >= 6 (polygon x1 y1 x2 y2 ...)")
        return out

    def item_name(self, index: int) -> str:
        return self.images[index].name

