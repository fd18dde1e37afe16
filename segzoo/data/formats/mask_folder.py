"""Image + label-map pairs in two folders, matched by file stem.

Files are read with :mod:`segzoo.data.image`: images with EXIF orientation applied, masks as
class values (palette indices, grey or 16-bit values). Masks in a lossy format (JPEG) are
refused, and so are two files with one stem in a folder.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segzoo.data.base import ConfigReader
from segzoo.data.errors import DataError
from segzoo.data.image import read_image, read_mask
from segzoo.data.targets import CLASS_MAP

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


class MaskFolder(ConfigReader, Dataset):
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
    """

    target = CLASS_MAP
    targets = (CLASS_MAP,)
    task = CLASS_MAP.name
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
    ) -> None:
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
        self.ignore_index = ignore_index
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes is not None and len(classes) != num_classes:
                raise ValueError(f"{len(classes)} class names for num_classes={num_classes}: data.classes lists every "
                                 "label including background, label 0 first")
            num_classes = len(classes)
        if num_classes is None and binary:
            num_classes = 2
        self.num_classes = num_classes
        self.classes = classes if classes is not None else (
            [str(i) for i in range(num_classes)] if num_classes else None
        )
        self.transforms = transforms

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
