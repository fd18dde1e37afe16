"""Image + PNG label-map pairs in two folders, matched by file stem."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segzoo.data.coco import read_image

PathLike = str | os.PathLike
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_label_png(path: Path) -> np.ndarray:
    """A label PNG as an ``H x W`` int64 array of class indices.

    Palette (``P``) PNGs give their palette indices (the VOC convention), grey (``L``,
    ``I;16``, ``I``) PNGs their values. RGB masks are refused: their colours would need a
    colour-to-class table.
    """
    with Image.open(path) as im:
        if im.mode in ("P", "L", "I", "I;16", "1"):
            return np.asarray(im).astype(np.int64)
        if im.mode == "LA":
            return np.asarray(im)[..., 0].astype(np.int64)
        raise ValueError(
            f"{path} is a {im.mode} image; label masks must be palette or grey-level PNGs whose "
            "values are class indices (save with Image.fromarray(labels.astype(np.uint8)))"
        )


class MaskFolder(Dataset):
    """Semantic segmentation data: ``images_dir/NAME.jpg`` paired with ``masks_dir/NAME.png``.

    Items are ``(image, mask)``: a uint8 ``3 x H x W`` :class:`tv_tensors.Image` and an int64
    ``H x W`` :class:`tv_tensors.Mask`; ``transforms(image, mask)`` is applied when given.
    Pixels equal to ``ignore_index`` are unlabelled. Files without a partner are kept in
    ``missing_masks`` / ``missing_images`` (``segzoo data check`` reports them).

    Args:
        images_dir: folder of images (jpg, png, bmp, tif, webp).
        masks_dir: folder of PNG label maps with the same stems.
        num_classes: number of labels including background; inferred by the data check when
            None.
        classes: optional class names (``len == num_classes``).
        binary: the masks are 0/255 foreground masks: 255 becomes label 1.
        mapping: explicit value -> label table applied to the raw mask values (e.g.
            ``{0: 0, 128: 1, 255: 2}``); values not in it are kept.
        ignore_index: label of unlabelled pixels.
        transforms: a joint transform called as ``transforms(image, mask)``.
    """

    task = "semantic"

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
        images = {p.stem: p for p in sorted(self.images_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
        masks = {p.stem: p for p in sorted(self.masks_dir.iterdir()) if p.suffix.lower() == ".png"}
        stems = sorted(set(images) & set(masks))
        if not stems:
            raise ValueError(
                f"no image/mask pairs: {len(images)} images in {self.images_dir} and {len(masks)} PNG "
                f"masks in {self.masks_dir} share no file stem (image a.jpg pairs with mask a.png)"
            )
        self.samples = [(images[s], masks[s]) for s in stems]
        self.missing_masks = sorted(str(images[s]) for s in set(images) - set(masks))
        self.missing_images = sorted(str(masks[s]) for s in set(masks) - set(images))
        self.mapping = {255: 1} if binary else (dict(mapping) if mapping is not None else None)
        self.binary = binary
        self.ignore_index = ignore_index
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes is not None and len(classes) != num_classes:
                raise ValueError(f"{len(classes)} class names for num_classes={num_classes}")
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

    def raw_mask(self, index: int) -> np.ndarray:
        """The label map of a sample after ``binary``/``mapping``, before transforms."""
        labels = read_label_png(self.samples[index][1])
        if self.mapping:
            out = labels.copy()
            for src, dst in self.mapping.items():
                out[labels == int(src)] = int(dst)
            labels = out
        return labels

    def __getitem__(self, index: int):
        image = read_image(self.samples[index][0])
        labels = self.raw_mask(index)
        if labels.shape != tuple(image.shape[-2:]):
            raise ValueError(
                f"mask {self.samples[index][1]} is {labels.shape[1]}x{labels.shape[0]} but its image is "
                f"{image.shape[-1]}x{image.shape[-2]}; masks must have the image's size"
            )
        mask = tv_tensors.Mask(torch.from_numpy(labels))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask
