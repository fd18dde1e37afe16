"""Pascal VOC layout: ``SegmentationClass`` / ``SegmentationObject`` PNGs and ``Annotations/*.xml`` boxes.

The official layout (``VOCdevkit/VOC2012``), which labelImg, CVAT ("PASCAL VOC 1.1",
"Segmentation mask 1.1") and Roboflow also write::

    JPEGImages/{id}.jpg
    Annotations/{id}.xml                  boxes: 1-based inclusive pixel indices, difficult/truncated
    SegmentationClass/{id}.png            palette PNG: 0 background, 1..20 classes, 255 border/void
    SegmentationObject/{id}.png           palette PNG: 1..N the objects, 0 background, 255 border/void
    ImageSets/Segmentation/{split}.txt    image ids of the segmentation splits (train, val, trainval)
    ImageSets/Main/{split}.txt            image ids of the detection splits
    SegmentationClassAug/{id}.png         optional: the 10,582-image augmented set (SBD labels as PNGs)
    labelmap.txt                          optional (CVAT/Datumaro): ``name:r,g,b::`` per class

A VOC box ``xmin..xmax`` covers pixels ``xmin - 1 .. xmax - 1``, so it becomes ``(xmin - 1, ymin - 1,
xmax, ymax)`` in continuous pixel coordinates (as detectron2 reads VOC).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from segzoo.data.records import IMAGE_SUFFIXES, AnnotatedImages, Obj, read_mask, voc_colormap
from segzoo.data.targets import CLASS_MAP, Target

PathLike = str | os.PathLike

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_VOID_COLOUR = (224, 224, 192)  # palette entry 255: object borders and difficult regions
AUG_SPLITS = ("train_aug", "trainaug", "aug")


def parse_voc_xml(path: Path, data: bytes | None = None) -> dict:
    """One ``Annotations/*.xml`` file: ``filename``, ``width``, ``height`` and ``objects`` (``name``,
    ``box`` xyxy in continuous pixels, ``difficult``, ``truncated``). ``data``: the file's bytes when
    it is not on disk (``path`` then only names it in messages)."""
    try:
        root = ET.fromstring(data) if data is not None else ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path} is not valid XML: {e}") from None
    if root.tag != "annotation":
        raise ValueError(f"{path} has root <{root.tag}>, not <annotation>: it is not a Pascal VOC annotation")
    size = root.find("size")
    objects = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        name = (obj.findtext("name") or "").strip()
        if bb is None or not name:
            raise ValueError(f"{path}: an <object> has no <name> or <bndbox>")
        try:
            x1, y1, x2, y2 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: object {name!r} has a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
        objects.append({"name": name, "box": (x1 - 1.0, y1 - 1.0, x2, y2),
                        "difficult": (obj.findtext("difficult") or "0").strip() == "1",
                        "truncated": (obj.findtext("truncated") or "0").strip() == "1"})
    return {
        "filename": (root.findtext("filename") or "").strip(),
        "width": int(float(size.findtext("width") or 0)) if size is not None else 0,
        "height": int(float(size.findtext("height") or 0)) if size is not None else 0,
        "objects": objects,
    }


def read_labelmap(path: Path) -> tuple[list[str], list[tuple[int, int, int]]]:
    """A CVAT/Datumaro ``labelmap.txt`` (``name:r,g,b:parts:actions``) as names and colours, file order."""
    names, colours = [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        rgb = rest.split(":")[0]
        try:
            colour = tuple(int(v) for v in rgb.split(",")) if rgb else None
        except ValueError:
            raise ValueError(f"{path}: colour {rgb!r} of {name!r} is not r,g,b") from None
        names.append(name)
        colours.append(colour if colour and len(colour) == 3 else voc_colormap(len(names))[-1])
    return names, colours


def read_list(path: Path) -> list[str]:
    """Image ids of an ``ImageSets`` list (lines ``id``, ``id flag`` or ``/JPEGImages/id.jpg /Seg.../id.png``)."""
    ids = []
    for line in path.read_text().splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if token:
            ids.append(Path(token).stem if "/" in token or "." in token else token)
    return ids


def voc_dirs(root: Path) -> list[Path]:
    """Folders holding ``JPEGImages/``: ``root`` itself, else its children and grandchildren
    (``VOCdevkit/VOC2012`` given the folder above ``VOCdevkit``)."""
    if (root / "JPEGImages").is_dir():
        return [root]
    kids = [p for p in sorted(root.iterdir()) if p.is_dir()]
    found = [p for p in kids if (p / "JPEGImages").is_dir()]
    return found or [q for p in kids for q in sorted(p.iterdir()) if (q / "JPEGImages").is_dir()]


def voc_root(root: PathLike) -> Path:
    """``VOCdevkit/VOC2012`` given itself, ``VOCdevkit`` or the folder above it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Pascal VOC folder not found: {root}")
    found = voc_dirs(root)
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"{root} has no JPEGImages folder" + (f" but several below it: {[str(k) for k in found]}"
                            if found else "") + "; point root at the folder that holds JPEGImages/ "
                            "(e.g. VOCdevkit/VOC2012)")


def read_colour_mask(path: Path, colours: list[tuple[int, int, int]], ignore_index: int) -> np.ndarray:
    """A label PNG as class indices: palette/grey values, or RGB colours looked up in ``colours``."""
    with Image.open(path) as im:
        mode = im.mode
        rgb = np.asarray(im.convert("RGB")) if mode in ("RGB", "RGBA") else None
    if rgb is None:
        return read_mask(path)
    key = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(colours)}
    table.setdefault((VOC_VOID_COLOUR[0] << 16) | (VOC_VOID_COLOUR[1] << 8) | VOC_VOID_COLOUR[2], ignore_index)
    values, inverse = np.unique(key, return_inverse=True)
    unknown = [v for v in values.tolist() if v not in table]
    if unknown:
        shown = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in unknown[:4]]
        raise ValueError(f"{path} is an RGB mask with colours {shown} that are not in the class colour table; "
                         "add them to labelmap.txt (name:r,g,b::) or save the masks as palette PNGs")
    return np.asarray([table[v] for v in values.tolist()], dtype=np.int64)[inverse].reshape(key.shape)


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class map of an SBD ``cls/*.mat`` file (``GTcls.Segmentation``)."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise ImportError(f"reading the SBD label {path} needs scipy (`pip install scipy`); or convert the SBD "
                          "labels to SegmentationClassAug PNGs") from None
    mat = loadmat(path, squeeze_me=True, struct_as_record=False)
    if "GTcls" not in mat:
        raise ValueError(f"{path} has no GTcls struct; SBD class labels are in benchmark_RELEASE/dataset/cls/*.mat")
    return np.asarray(mat["GTcls"].Segmentation).astype(np.int64)


class VOC(AnnotatedImages):
    """A Pascal VOC layout for one target kind (:mod:`segzoo.data.targets`).

    ``CLASS_MAP``: ``SegmentationClass`` maps as they are (0 background, 255 border), ids from
    ``ImageSets/Segmentation/{split}.txt``; ``split="train_aug"`` reads the augmented set (below).
    ``INSTANCE_MASKS``: one mask per ``SegmentationObject`` index, its class the majority
    ``SegmentationClass`` value under it. ``BOXES``: the ``Annotations`` boxes of
    ``ImageSets/Main/{split}.txt``; difficult objects are left out unless ``use_difficult``.

    The augmented set: ids from ``ImageSets/Segmentation/train_aug.txt`` when present, else SBD's
    ``train.txt`` + ``val.txt`` + VOC ``train`` minus VOC ``val`` (the 10,582 images); labels from
    ``SegmentationClassAug/{id}.png``, else ``SegmentationClass/{id}.png``, else
    ``{sbd_root}/cls/{id}.mat`` (needs scipy).

    Args:
        root: ``VOCdevkit/VOC2012`` (or ``VOCdevkit``) or any folder in that layout.
        split: the list name; None takes every ``Annotations/*.xml`` (detection) or
            ``SegmentationClass/*.png`` (class maps, instance masks) when the layout has no ``ImageSets``.
        target: ``CLASS_MAP``, ``INSTANCE_MASKS`` or ``BOXES``.
        classes: class names in label order (``data.classes``): the object classes for instance and
            detection, every label with background first for semantic (:func:`split_classes`);
            default: from ``labelmap.txt``, else the 20 VOC classes (detection: the names found
            when they are not VOC's).
        use_difficult: keep objects marked difficult in detection targets.
        sbd_root: SBD's ``benchmark_RELEASE/dataset`` folder, for the augmented set.
        transforms: a joint transform ``transforms(image, target)``.
        ignore_index: the border/void label.
    """

    config_keys = ("root", "split", "classes", "use_difficult", "sbd_root", "ignore_index")
    config_paths = ("root", "sbd_root")

    def __init__(self, root: PathLike, split: str | None = "train", target: Target = CLASS_MAP,
                 classes: list[str] | None = None, use_difficult: bool = False, sbd_root: PathLike | None = None,
                 transforms=None, ignore_index: int = 255) -> None:
        super().__init__(target, transforms, ignore_index)
        classes = self.set_classes(classes)
        self.root = voc_root(root)
        self.split = split
        self.use_difficult = use_difficult
        self.sbd_root = Path(sbd_root) if sbd_root is not None else None
        need = "SegmentationObject" if target.masks else "Annotations" if target.boxes_only else None
        if need and not (self.root / need).is_dir():
            have = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            hint = ("instance masks come from SegmentationObject PNGs; train a detection model on the Annotations "
                    "boxes instead" if target.masks else "boxes come from Annotations/*.xml")
            raise FileNotFoundError(f"{self.root} has no {need}/ for {target.name} data (it has {have}); {hint}")
        colours = None
        labelmap = self.root / "labelmap.txt"
        if classes is None and labelmap.is_file():
            names, colours = read_labelmap(labelmap)
            if names and names[0].lower() in ("background", "_background_"):
                names = names[1:]
            else:
                colours = [(0, 0, 0), *colours]
            classes = names
        self.ids = self._ids()
        self.annotations: list[dict] = []
        if target.boxes_only:
            self.annotations = [parse_voc_xml(self.root / "Annotations" / f"{i}.xml") for i in self.ids]
            if classes is None:
                found = sorted({o["name"] for a in self.annotations for o in a["objects"]})
                classes = list(VOC_CLASSES) if set(found) <= set(VOC_CLASSES) else found
                self.classes_inferred = not set(found) <= set(VOC_CLASSES)
            known = set(classes)
            for i, a in zip(self.ids, self.annotations):
                bad = sorted({o["name"] for o in a["objects"]} - known)
                if bad:
                    self.problems.append(f"Annotations/{i}.xml has objects named {bad} that are not in the classes "
                                         f"{list(classes)}; add them to data.classes or rename them")
        self.object_classes = [str(c) for c in (classes if classes is not None else VOC_CLASSES)]
        self.semantic_classes = [self.background_name, *self.object_classes]
        self.palette = colours or voc_colormap(len(self.semantic_classes))
        self.images = [self._image_file(i) for i in self.ids]
        missing = [str(p) for p in self.images if not p.is_file()]
        if missing:
            self.problems.append(f"{len(missing)} images listed for split {split!r} are missing: {missing[:3]}")

    def _ids(self) -> list[str]:
        sub = "Main" if self.target.boxes_only else "Segmentation"
        sets = self.root / "ImageSets" / sub
        if self.split is None:
            folder, suffix = ("Annotations", ".xml") if self.target.boxes_only else ("SegmentationClass", ".png")
            ids = sorted(p.stem for p in (self.root / folder).glob(f"*{suffix}"))
            if not ids:
                raise FileNotFoundError(f"no {folder}/*{suffix} files in {self.root}")
            return ids
        if self.split in AUG_SPLITS and not self.target.boxes_only:
            return self._aug_ids(sets)
        path = sets / f"{self.split}.txt"
        if not path.is_file():
            have = sorted(p.stem for p in sets.glob("*.txt")) if sets.is_dir() else []
            raise FileNotFoundError(f"split list not found: {path}; splits here: {have or 'none'} "
                                    "(set split to one of them, or split=None to use every annotated image)")
        return read_list(path)

    def _aug_ids(self, sets: Path) -> list[str]:
        for name in ("train_aug.txt", "trainaug.txt", "aug.txt"):
            if (sets / name).is_file():
                return read_list(sets / name)
        if self.sbd_root is None:
            raise FileNotFoundError(f"split {self.split!r}: no {sets}/train_aug.txt; give sbd_root (SBD's "
                                    "benchmark_RELEASE/dataset) to build the augmented list from SBD train + val")
        sbd = read_list(self.sbd_root / "train.txt") + read_list(self.sbd_root / "val.txt")
        val = set(read_list(sets / "val.txt"))
        voc_train = read_list(sets / "train.txt") if (sets / "train.txt").is_file() else []
        return sorted(set(sbd + voc_train) - val)

    def _image_file(self, image_id: str) -> Path:
        base = self.root / "JPEGImages" / image_id
        for suffix in (".jpg", *IMAGE_SUFFIXES):
            if base.with_name(image_id + suffix).is_file():
                return base.with_name(image_id + suffix)
        return base.with_name(image_id + ".jpg")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def declared_hw(self, index: int) -> tuple[int, int] | None:
        """The ``<size>`` of the image's ``Annotations`` xml (checked against the file)."""
        if self.annotations and self.annotations[index]["height"] > 0:
            return self.annotations[index]["height"], self.annotations[index]["width"]
        return None

    def label_file(self, index: int) -> Path:
        """The class map of an image (``SegmentationClassAug``, ``SegmentationClass`` or SBD ``.mat``)."""
        image_id = self.ids[index]
        candidates = [self.root / "SegmentationClass" / f"{image_id}.png"]
        if self.split in AUG_SPLITS:
            candidates.insert(0, self.root / "SegmentationClassAug" / f"{image_id}.png")
            if self.sbd_root is not None:
                candidates.append(self.sbd_root / "cls" / f"{image_id}.mat")
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"no label for image {image_id}: looked for {', '.join(str(c) for c in candidates)}")

    def _class_map(self, index: int) -> np.ndarray:
        path = self.label_file(index)
        if path.suffix == ".mat":
            return read_sbd_mat(path)
        return read_colour_mask(path, self.palette, self.ignore_index)

    def semantic_map(self, index: int, height: int, width: int) -> np.ndarray:
        return self._class_map(index)

    def source_id(self, label: int) -> int | None:
        """The ``SegmentationClass`` value of a label (box labels come from names)."""
        if self.target.boxes_only:
            return None
        return label if self.target.label_map else label + 1

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        if self.target.boxes_only:
            label = {c: k for k, c in enumerate(self.object_classes)}
            out = []
            for k, o in enumerate(self.annotations[index]["objects"]):
                if o["name"] not in label:
                    raise ValueError(f"Annotations/{self.ids[index]}.xml: object {o['name']!r} is not one of the "
                                     f"classes {self.object_classes}; add it to data.classes")
                out.append(Obj(label[o["name"]], box=o["box"], crowd=o["difficult"] and not self.use_difficult,
                               where=f"Annotations/{self.ids[index]}.xml <object> {k + 1}"))
            return out
        path = self.root / "SegmentationObject" / f"{self.ids[index]}.png"
        inst = read_colour_mask(path, voc_colormap(256), self.ignore_index)
        cls = self._class_map(index)
        if inst.shape != cls.shape:
            raise ValueError(f"{path} and its SegmentationClass PNG differ in size")
        out = []
        for k in np.unique(inst).tolist():
            if k in (0, self.ignore_index):
                continue
            m = inst == k
            values = cls[m]
            values = values[(values > 0) & (values != self.ignore_index)]
            if not len(values):
                raise ValueError(f"{path}: object {k} covers no labelled SegmentationClass pixel, so it has no class")
            out.append(Obj(int(np.bincount(values).argmax()) - 1, mask=m))
        return out

    def item_name(self, index: int) -> str:
        return self.ids[index]


class VOCSegmentation(VOC):
    """Pascal VOC 2012 semantic segmentation (21 labels with background, 255 border), with the SBD
    augmented set as ``split="train_aug"``; see :class:`VOC`."""

    def __init__(self, root: PathLike, split: str = "train", sbd_root: PathLike | None = None,
                 transforms=None, ignore_index: int = 255) -> None:
        super().__init__(root, split, target=CLASS_MAP, sbd_root=sbd_root, transforms=transforms,
                         ignore_index=ignore_index)

    targets = (CLASS_MAP,)
