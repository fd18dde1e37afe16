"""Multi-label masks: one 0/1 mask per class, so that a pixel may carry several classes (or none).

Two layouts, one reader (:class:`MultiLabelMasks`, ``data.type: mask_folders``), recognised from the
``masks`` folder:

* one folder per class: ``masks/<class>/<stem>.png`` (grey or palette PNG, also lossless TIFF, BMP,
  WebP), paired by stem with ``images/<stem>.jpg``. The class order is ``classes`` when given, else
  the subfolders' names sorted. A class without a file for an image is absent from it (tools export
  non-empty masks only); an image with no file in any class folder is unlabelled, not empty: it is left
  out of the items and the data check reports it as an error.
* one multi-page TIFF per image: ``masks/<stem>.tif`` (or ``.tiff``), page ``k`` the mask of class
  ``k``; ``classes`` names the pages (else ``"0"``, ``"1"``, ...), and every file must have one page
  per class.

Mask values: 0 absent, 1 or 255 present (0/255 exports and 0/1 arrays alike); ``ignore_value`` (when
set, e.g. 128) marks a pixel unlabelled for that class (255 in the target, left out of losses and
metrics). Any other value is refused. Items are ``(image, masks)``, ``masks`` a uint8 ``C x H x W``
:class:`tv_tensors.Mask` (:data:`~segzoo.data.targets.MULTI_HOT`); asked for a class map
(:data:`~segzoo.data.targets.CLASS_MAP`, binary models) the reader gives the union of the classes as
label 1 on background 0.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from PIL import ImageSequence
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segzoo.data.base import ConfigReader, check_target
from segzoo.data.errors import DataError
from segzoo.data.formats.mask_folder import IMAGE_EXTENSIONS, LOSSY_EXTENSIONS, _by_stem, size_mismatch
from segzoo.data.image import _mask_array, _read, read_image
from segzoo.data.targets import CLASS_MAP, MULTI_HOT

PathLike = str | os.PathLike
TIFF_EXTENSIONS = (".tif", ".tiff")
IGNORE = 255  # target value of an unlabelled (pixel, class)


def binary_values(arr: np.ndarray, where: str, ignore_value: int | None = None) -> np.ndarray:
    """A mask file's values as 0/1 (255 where ``ignore_value``): 0 absent, 1 or 255 present; others refused."""
    keep = (arr == 0) | (arr == 1) | (arr == 255)
    if ignore_value is not None:
        keep |= arr == ignore_value
    if not keep.all():
        bad = sorted(set(np.unique(arr[~keep]).tolist()))[:5]
        raise DataError(f"{where} has values {bad}: a per-class mask holds 0 (absent) and 1 or 255 (present)"
                        f"{'' if ignore_value is None else f' or {ignore_value} (unlabelled)'}; threshold or "
                        "re-export it (a JPEG-compressed or anti-aliased mask has edge values)")
    out = (arr != 0).astype(np.uint8)
    if ignore_value is not None and ignore_value not in (0, 1, 255):
        out[arr == ignore_value] = IGNORE
    return out


def read_pages(path: PathLike) -> list[np.ndarray]:
    """Every page of a (multi-page) mask file, each an ``H x W`` int64 array (the mask rules of
    :func:`segzoo.data.image.read_mask` per page)."""
    return _read(path, "multi-page mask", lambda im, p: [_mask_array(page, p) for page in ImageSequence.Iterator(im)])


def multi_hot_from_masks(masks: np.ndarray, labels: np.ndarray, num_classes: int,
                         crowd: np.ndarray | None = None) -> np.ndarray:
    """The ``C x H x W`` uint8 multi-hot target of object masks ``K x H x W`` with 0-based ``labels``: class
    ``c`` is the union of its objects' masks (overlaps kept); ``crowd`` pixels are unlabelled (255) in every class."""
    h, w = masks.shape[-2:]
    out = np.zeros((num_classes, h, w), dtype=np.uint8)
    for m, k in zip(masks, labels):
        out[int(k)] |= m.astype(bool)
    if crowd is not None:
        out[:, crowd.astype(bool)] = IGNORE
    return out


def union_map(multi: np.ndarray) -> np.ndarray:
    """A multi-hot stack as the 0/1 label map of a binary model: 1 where any class is present, 255 where a
    pixel is unlabelled and present in no class."""
    present = (multi == 1).any(0)
    out = present.astype(np.int64)
    out[~present & (multi == IGNORE).any(0)] = IGNORE
    return out


class MultiLabelMasks(ConfigReader, Dataset):
    """Multi-label data: images paired with one 0/1 mask per class (layouts in the module docstring).

    Args:
        images_dir: folder of images.
        masks_dir: folder of one subfolder per class, or of one multi-page TIFF per image.
        classes: the class names (no background), in channel order; default: the subfolder names
            sorted (a TIFF folder: ``"0"``, ``"1"``, ...).
        ignore_value: a mask value meaning "unlabelled" (besides 0 and 1/255), or None.
        target: ``MULTI_HOT`` (default) or ``CLASS_MAP`` (the union as label 1, for binary models).
        transforms: a joint transform called as ``transforms(image, masks)``.
    """

    targets = (MULTI_HOT, CLASS_MAP)
    config_keys = ("images", "masks", "classes", "ignore_value")
    config_required = config_paths = ("images", "masks")
    config_renames = MappingProxyType({"images_dir": "images", "masks_dir": "masks"})

    @classmethod
    def from_config(cls, cfg, args, target, transforms):
        """``data.<split>.images`` and ``.masks`` (also ``classes``, default ``data.classes``, and ``ignore_value``)."""
        kw = cls.take(args)
        args.took_classes = True
        kw.setdefault("classes", list(cfg.classes) if cfg.classes is not None else None)
        return cls(kw.pop("images"), kw.pop("masks"), target=target, transforms=transforms, **kw)

    def __init__(self, images_dir: PathLike, masks_dir: PathLike, classes: list[str] | None = None,
                 ignore_value: int | None = None, target=MULTI_HOT, transforms=None) -> None:
        self.target = check_target(target, self.targets, "a multi-label mask folder")
        self.images_dir, self.masks_dir = Path(images_dir), Path(masks_dir)
        for what, d in (("images", self.images_dir), ("masks", self.masks_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"{what} folder not found: {d}")
        if ignore_value is not None and not (isinstance(ignore_value, int) and 1 < ignore_value < 255):
            raise ValueError(f"ignore_value must be an int in 2..254 (0, 1 and 255 are mask values), got "
                             f"{ignore_value!r}")
        self.ignore_value = ignore_value
        images = _by_stem(self.images_dir, "images")
        subdirs = sorted(p.name for p in self.masks_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        self.layout = "folders" if subdirs else "tiff"
        if self.layout == "folders":
            names = [str(c) for c in classes] if classes is not None else subdirs
            missing = [c for c in names if c not in subdirs]
            if missing:
                raise DataError(f"{self.masks_dir} has no folder for classes {missing} (it has {subdirs}); one folder "
                                "per class: masks/<class>/<stem>.png")
            self.class_files = {c: _by_stem(self.masks_dir / c, f"{c} masks") for c in names}
            for c, files in self.class_files.items():
                lossy = [p.name for p in files.values() if p.suffix.lower() in LOSSY_EXTENSIONS]
                if lossy:
                    raise DataError(f"{len(lossy)} masks in {self.masks_dir / c} are JPEG files "
                                    f"({', '.join(lossy[:3])}): JPEG compression changes mask values along every "
                                    "edge; export them as PNG")
            labelled = set().union(*(set(f) for f in self.class_files.values())) if names else set()
        else:
            tiffs = {s: p for s, p in _by_stem(self.masks_dir, "masks").items() if p.suffix.lower() in TIFF_EXTENSIONS}
            if not tiffs:
                raise DataError(f"{self.masks_dir} holds neither one folder per class (masks/<class>/<stem>.png) nor "
                                "multi-page TIFF files (masks/<stem>.tif, one page per class)")
            self.tiffs = tiffs
            labelled = set(tiffs)
            names = [str(c) for c in classes] if classes is not None else None
        self.samples = [(s, images[s]) for s in sorted(set(images) & labelled)]
        if not self.samples:
            raise ValueError(f"no image/mask pairs: {len(images)} images in {self.images_dir} share no file stem with "
                             f"the masks in {self.masks_dir}")
        self.missing_masks = sorted(str(images[s]) for s in set(images) - labelled)
        self._names = names
        self.transforms = transforms

    @property
    def object_classes(self) -> list[str]:
        """The class names of the channels (no background)."""
        if self._names is None:  # a TIFF folder without names: the first file's page count
            self._names = [str(k) for k in range(len(read_pages(self.tiffs[self.samples[0][0]])))]
        return list(self._names)

    @property
    def classes(self) -> list[str]:
        """Channel names (``MULTI_HOT``), or ``[background, <union>]`` for a binary class map."""
        names = self.object_classes
        if self.target.multi_hot:
            return names
        return ["background", names[0] if len(names) == 1 else "foreground"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def multi_hot(self, index: int, hw: tuple[int, int]) -> np.ndarray:
        """The ``C x H x W`` uint8 masks of a sample before transforms (``hw`` the image size, for checks)."""
        stem = self.samples[index][0]
        names = self.object_classes
        out = np.zeros((len(names), *hw), dtype=np.uint8)
        if self.layout == "folders":
            for k, c in enumerate(names):
                path = self.class_files[c].get(stem)
                if path is None:
                    continue
                arr = _mask_array_of(path)
                if arr.shape != hw:
                    raise DataError(size_mismatch(path, arr.shape, hw))
                out[k] = binary_values(arr, str(path), self.ignore_value)
            return out
        path = self.tiffs[stem]
        pages = read_pages(path)
        if len(pages) != len(names):
            raise DataError(f"{path} has {len(pages)} pages but there are {len(names)} classes ({', '.join(names)}): "
                            "a multi-label TIFF holds one page per class, in class order")
        for k, page in enumerate(pages):
            if page.shape != hw:
                raise DataError(size_mismatch(path, page.shape, hw))
            out[k] = binary_values(page, f"{path} page {k + 1}", self.ignore_value)
        return out

    def __getitem__(self, index: int):
        image = read_image(self.samples[index][1])
        multi = self.multi_hot(index, tuple(image.shape[-2:]))
        target = multi if self.target.multi_hot else union_map(multi)
        mask = tv_tensors.Mask(torch.from_numpy(target))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


    def check(self, report, num_classes: int, ignore_index: int = 255, allow_empty: bool = False) -> None:
        """Fill a :class:`~segzoo.data.checks.DataReport`: every mask file read and checked (values, size, page
        count), the class count against the model's, images without masks, images where no class is present."""
        report.num_items = len(self)
        n = self.num_classes
        if n != num_classes:
            what = ("a binary model (num_classes=1) scores background and foreground" if not self.target.multi_hot
                    else f"the masks name {n} classes ({', '.join(self.classes[:6])})")
            report.errors.append(f"{what} but the model has num_classes={num_classes}: set model.num_classes="
                                 f"{n if self.target.multi_hot else 1}")
        if self.missing_masks:
            report.errors.append(f"{len(self.missing_masks)} images have no mask in any class of {self.masks_dir}: "
                                 f"{', '.join(self.missing_masks[:3])}; add their masks or remove the images")
        found, empty = set(), []
        for i in range(len(self)):
            try:
                hw = tuple(read_image(self.samples[i][1]).shape[-2:])
                multi = self.multi_hot(i, hw)
            except DataError as e:
                report.errors.append(str(e))
                continue
            present = [k for k in range(len(multi)) if (multi[k] == 1).any()]
            found.update(present)
            if not present:
                empty.append(str(self.samples[i][1]))
        if empty and not allow_empty:  # negatives (a defect-free part) are data too: a warning, not an error
            report.warnings.append(f"{len(empty)} images have no class present (they train as negatives): "
                                   f"{', '.join(empty[:3])}")
        names = self.object_classes
        report.classes_found = sorted(found) if self.target.multi_hot else ([1] if found else [])
        report.name_classes(names if self.target.multi_hot else self.classes)


def _mask_array_of(path: Path) -> np.ndarray:
    return _read(path, "mask", _mask_array)


__all__ = ["IMAGE_EXTENSIONS", "MultiLabelMasks", "binary_values", "multi_hot_from_masks", "read_pages", "union_map"]
