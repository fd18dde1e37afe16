"""Image + label-map pairs in two folders, matched by file stem.

Files are read with :mod:`segzoo.data.image`: images with EXIF orientation applied, masks as
class values (palette indices, grey or 16-bit values). Masks in a lossy format (JPEG) are
refused, and so are two files with one stem in a folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torchvision import tv_tensors

from segzoo.data.base import OBJECT_TARGETS, check_target
from segzoo.data.errors import DataError
from segzoo.data.image import image_size, read_image, read_mask
from segzoo.data.records import AnnotatedImages, Obj, examples, missing_classes
from segzoo.data.targets import CLASS_MAP, Target

PathLike = str | os.PathLike
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LOSSY_EXTENSIONS = (".jpg", ".jpeg")


read_label_png = read_mask  # the name this module used before segzoo.data.image existed


def _by_stem(folder: Path, what: str) -> dict[str, Path]:
    """The folder's image files by stem; two files with one stem are an error, not a silent choice."""
    files: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            files.setdefault(p.stem, []).append(p)
    clashes = [" and ".join(p.name for p in v) for v in files.values() if len(v) > 1]
    if clashes:
        raise DataError(f"{len(clashes)} {what} in {folder} share a file stem with another ({'; '.join(clashes[:3])}"
                        f"{' and more' if len(clashes) > 3 else ''}): images pair with masks by stem, so only one "
                        "may exist; remove or rename the others")
    return {stem: v[0] for stem, v in files.items()}


def size_mismatch(mask_path: Path, mask_hw: tuple, image_hw: tuple) -> str:
    """The message for a mask whose size is not its image's (a 90-degree turn hints at EXIF orientation)."""
    msg = (f"mask {mask_path} is {mask_hw[1]}x{mask_hw[0]} but its image is {image_hw[1]}x{image_hw[0]} (width x "
           "height); masks must have the image's size")
    if tuple(mask_hw) == tuple(image_hw)[::-1]:
        msg += (". The image is probably a photo with an EXIF orientation tag: segzoo reads it rotated, as viewers "
                "and labelling tools show it; make the mask from the rotated image, or remove the tag from the "
                "image (PIL.ImageOps.exif_transpose, then save)")
    return msg


class MaskFolder(AnnotatedImages):
    """Semantic segmentation data: ``images_dir/NAME.jpg`` paired with ``masks_dir/NAME.png``.

    Items are ``(image, mask)``: a ``3 x H x W`` :class:`tv_tensors.Image` (uint8, or float32 in
    [0, 1] for 16-bit files: :func:`segzoo.data.image.read_image`) and an int64
    ``H x W`` :class:`tv_tensors.Mask`; ``transforms(image, mask)`` is applied when given.
    Pixels equal to ``ignore_index`` are unlabelled. Files without a partner are kept in
    ``missing_masks`` / ``missing_images`` (``segzoo data check`` reports them).

    Args:
        images_dir: folder of images (jpg, png, bmp, tif, webp).
        masks_dir: folder of label maps with the same stems (PNG; also lossless TIFF, BMP, WebP).
        num_classes: number of labels including background; inferred by the data check when
            None.
        classes: optional class names, every label in label order, background (label 0) first
            (``data.classes``; ``len == num_classes``).
        binary: the masks are 0/255 foreground masks: 255 becomes label 1. Without it, masks
            holding only 0 and 255 are refused by the data check (255 is the ignore index).
        mapping: explicit value -> label table applied to the raw mask values (e.g.
            ``{0: 0, 128: 1, 255: 2}``); values not in it are kept.
        ignore_index: label of unlabelled pixels.
        transforms: a joint transform called as ``transforms(image, mask)``.
        target: what the records are read for (``segzoo data convert``): items are label maps; with an
            object target each labelled class region of an image is one record (:meth:`objects`).

    The reader is an :class:`~segzoo.data.records.AnnotatedImages` whose records are its label
    maps (:meth:`semantic_map`); what is its own: pairing by stem, ``binary``/``mapping`` and the
    label-map checks of :meth:`check`.
    """

    targets = (CLASS_MAP,)
    config_keys = ("images", "masks", "num_classes", "classes", "binary", "mapping", "ignore_index")
    config_required = config_paths = ("images", "masks")
    config_renames = MappingProxyType({"images_dir": "images", "masks_dir": "masks"})

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        """``data.<split>.images`` and ``.masks`` (also ``num_classes``, ``classes``, ``binary``, ``mapping``,
        ``ignore_index``, defaulting to the ``data`` fields of those names)."""
        kw = cls.take(args)  # other target kinds are the model's to refuse (the evaluator names the data's)
        args.took_classes = True
        kw.setdefault("binary", bool(cfg.binary))
        kw.setdefault("mapping", cfg.mapping)
        kw.setdefault("classes", list(cfg.classes) if cfg.classes is not None else None)
        kw.setdefault("ignore_index", cfg.ignore_index)
        return cls(kw.pop("images"), kw.pop("masks"), transforms=transforms, **kw)

    def __init__(
        self,
        images_dir: PathLike,
        masks_dir: PathLike,
        num_classes: int | None = None,
        classes: list[str] | None = None,
        binary: bool = False,
        mapping: Mapping[int, int] | None = None,
        ignore_index: int = 255,
        transforms=None,
        target: Target = CLASS_MAP,
    ) -> None:
        super().__init__(CLASS_MAP, transforms, ignore_index)
        self.target = check_target(target, OBJECT_TARGETS, "a mask folder")
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        for what, d in (("images", self.images_dir), ("masks", self.masks_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"{what} folder not found: {d}")
        if binary and mapping is not None:
            raise ValueError("pass either binary=True or mapping, not both")
        if self.images_dir.resolve() == self.masks_dir.resolve():
            raise DataError(f"images and masks are both in {self.images_dir}; images pair with masks by file stem "
                            "(a.jpg with a.png), so they need two folders")
        images = _by_stem(self.images_dir, "images")
        masks = _by_stem(self.masks_dir, "masks")
        stems = sorted(set(images) & set(masks))
        lossy = [str(masks[s].name) for s in stems if masks[s].suffix.lower() in LOSSY_EXTENSIONS]
        if lossy:
            raise DataError(
                f"{len(lossy)} masks in {self.masks_dir} are JPEG files ({', '.join(lossy[:3])}"
                f"{' and more' if len(lossy) > 3 else ''}): JPEG compression changes label values along every "
                "edge; export the masks as PNG from the labelling tool")
        if not stems:
            raise ValueError(
                f"no image/mask pairs: {len(images)} images in {self.images_dir} and {len(masks)} "
                f"masks in {self.masks_dir} share no file stem (image a.jpg pairs with mask a.png)"
            )
        self.samples = [(images[s], masks[s]) for s in stems]
        self.missing_masks = sorted(str(images[s]) for s in set(images) - set(masks))
        self.missing_images = sorted(str(masks[s]) for s in set(masks) - set(images)
                                     if masks[s].suffix.lower() not in LOSSY_EXTENSIONS)  # JPEGs can't be masks
        self.mapping = {255: 1} if binary else (dict(mapping) if mapping is not None else None)
        self.binary = binary
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes is not None and len(classes) != num_classes:
                raise ValueError(f"{len(classes)} class names for num_classes={num_classes}: data.classes lists every "
                                 "label including background, label 0 first")
            num_classes = len(classes)
        if num_classes is None and binary:
            num_classes = 2
        self._num_classes = num_classes
        self.semantic_classes = classes if classes is not None else (
            [str(i) for i in range(num_classes)] if num_classes else None
        )
        if not self.target.label_map:
            self.notices.append("a mask folder has no instances: each class region of an image is one object")

    @property
    def classes(self) -> list[str] | None:
        """Every label's name, background first; None when neither ``classes`` nor ``num_classes`` is given
        (records read for an object target: the object classes, background left out)."""
        return self.semantic_classes if self.target.label_map else self.object_classes

    @property
    def num_classes(self) -> int | None:
        """Every label including background; None when not given (the data check reads the masks)."""
        return self._num_classes if self.target.label_map else len(self.object_classes)

    @property
    def object_classes(self) -> list[str]:
        return list(self.semantic_classes[1:]) if self.semantic_classes else []

    def infer_classes(self) -> None:
        """Name the labels ``0..max`` by their values, from the masks (``segzoo data convert`` without names)."""
        top = max(int(v) for i in range(len(self)) for v in np.unique(self.raw_mask(i)) if v != self.ignore_index)
        self.semantic_classes = [str(v) for v in range(top + 1)]
        self._num_classes = top + 1
        self.classes_inferred = True

    def image_path(self, index: int) -> Path:
        return self.samples[index][0]

    def semantic_map(self, index: int, height: int, width: int) -> np.ndarray:
        return self.raw_mask(index)

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        """Each labelled class region (value ``v > 0``) as one record of label ``v - 1``."""
        labels = self.raw_mask(index)
        return [Obj(v - 1, mask=labels == v) for v in np.unique(labels).tolist() if v not in (0, self.ignore_index)]

    def __len__(self) -> int:
        return len(self.samples)

    def map_labels(self, values: np.ndarray) -> np.ndarray:
        """Raw mask values (:func:`segzoo.data.image.read_mask`) after ``binary``/``mapping``."""
        if not self.mapping:
            return values
        out = values.copy()
        for src, dst in self.mapping.items():
            out[values == int(src)] = int(dst)
        return out

    def raw_mask(self, index: int) -> np.ndarray:
        """The label map of a sample after ``binary``/``mapping``, before transforms."""
        return self.map_labels(read_mask(self.samples[index][1]))

    def __getitem__(self, index: int):
        image = read_image(self.samples[index][0])
        labels = self.raw_mask(index)
        if labels.shape != tuple(image.shape[-2:]):
            raise DataError(size_mismatch(self.samples[index][1], labels.shape, tuple(image.shape[-2:])))
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def check(self, report, num_classes: int, ignore_index: int = 255, allow_empty: bool = False) -> None:
        """Fill a :class:`~segzoo.data.checks.DataReport`: unpaired files, sizes, 0/255 masks, values, class names."""
        ds, ignore = self, ignore_index
        report.num_items = len(ds)
        if ds.num_classes is not None and ds.num_classes > num_classes:
            report.errors.append(
                f"data.classes names {ds.num_classes} labels ({examples(ds.classes, 6)}) but "
                f"num_classes={num_classes}: "
                "for semantic data data.classes lists every label including background, label 0 first; give one name "
                f"per label or set model.num_classes={ds.num_classes}")

        if ds.missing_masks:
            report.errors.append(f"{len(ds.missing_masks)} images have no mask with the same stem in "
                                 f"{ds.masks_dir}: {examples(ds.missing_masks)}; add the masks or remove the images")
        if ds.missing_images:
            report.errors.append(f"{len(ds.missing_images)} masks have no image with the same stem in "
                                 f"{ds.images_dir}: {examples(ds.missing_images)}")
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
            report.errors.append(f"{len(unreadable)} files cannot be read: {examples(unreadable)}")
        if bad_size:
            report.errors.append(f"{len(bad_size)} masks differ in size from their image: {examples(bad_size)}")
        if binary_like:
            report.errors.append(
                f"{len(binary_like)} masks hold only 0 and 255 ({examples(binary_like)}): 255 is the ignore index, "
                "so the foreground would never be learned; these look like binary masks: set data.binary=true "
                "(MaskFolder(binary=True)) to map 255 to label 1. If 255 really marks unlabelled pixels in them, say "
                "so with data.mapping={255: 255}")
        for v, files in sorted(out_of_range.items()):
            if v in (255,) and binary_like:
                continue
            report.errors.append(
                f"mask value {v} is outside [0, {num_classes - 1}] and is not ignore_index={ignore} in "
                f"{len(files)} masks ({examples(files)}); set model.num_classes to at least {v + 1}, map the "
                "values with data.mapping, or set data.ignore_index")
        if empty:
            msg = (f"{len(empty)} masks have no labelled pixel (only ignore_index={ignore}): {examples(empty)}")
            (report.warnings if allow_empty else report.errors).append(
                msg + ("" if allow_empty else "; remove them or set data.allow_empty=true"))
        if ds.num_classes is not None and ds.num_classes < num_classes:
            unnamed = sorted(v for v in found if v >= ds.num_classes)
            if unnamed:  # labels without a name: usually the background left out of data.classes
                report.errors.append(
                    f"data.classes names {ds.num_classes} labels ({examples(ds.classes, 6)}) but the masks hold labels "
                    f"{examples([str(v) for v in unnamed], 6)} too: for semantic data data.classes lists every label "
                    "including background, label 0 first; give one name per label")
            else:  # more outputs than labels: a head made for classes to come, or a num_classes typo
                report.warnings.append(
                    f"the data names {ds.num_classes} labels ({examples(ds.classes, 6)}) and its masks use no "
                    "other, but "
                    f"the model has num_classes={num_classes}; set model.num_classes={ds.num_classes} unless the extra "
                    "outputs are intended")
        missing_classes(report, num_classes, ds.classes)
        report.name_classes(ds.classes, lambda v: ds.mask_values(v))

    def mask_values(self, label: int) -> list[int]:
        """The raw mask values that become ``label`` (``data.mapping``/``binary``)."""
        mapping = {int(k): int(v) for k, v in (self.mapping or {}).items()}
        return sorted({k for k, v in mapping.items() if v == label} | ({label} if label not in mapping else set()))
