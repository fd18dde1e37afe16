"""Real labelled images read straight from published wheels, split into training and held-out tiles.

Two small real datasets ship inside wheels on PyPI, so they need no download beyond the package
registry and nothing of them is copied into segzoo:

* **nuclei** (stardist 0.9.2, BSD-3-Clause): ``stardist/data/images/img2d.tif``, a 512x512
  fluorescence image from the Kaggle Data Science Bowl 2018 (Caicedo et al., Nature Methods 2019),
  with ``mask2d.tif``, its label image of 125 nucleus instances;
* **tree crowns** (deepforest 2.1.0, MIT): ``deepforest/data/{OSBS_029, SOAP_061,
  2019_YELL_2_528000_4978000_image_crop2, 2019_YELL_2_541000_4977000_image_crop}.png`` with their
  Pascal VOC ``.xml`` boxes (951 crowns; SOAP_061's Alive/Dead are merged into one ``tree`` class).

:func:`~segzoo.hub.wheels.fetch_wheel` runs ``pip download --no-deps`` once into a cache folder (``$SEGZOO_WHEELS``,
default ``~/.cache/segzoo/wheels``); the datasets open the wheel as a zip file.

Tiling rule: each image is cut into a grid of ``tile_size`` tiles (a remainder under half a tile
joins the last row or column), without overlap. The tiles in the bottom-right block (grid row
``>= rows // 2`` and column ``>= cols // 2``) are held out (``split="val"``), the others are
``split="train"``, so no tile is in both. A box belongs to the one tile that holds its centre and
is clipped to it. A nucleus cut by a tile edge is kept in each tile as the part inside it; parts
under ``min_pixels`` pixels are crowd (ignored) in instance targets.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from segzoo.data.formats.voc import parse_voc_xml
from segzoo.data.records import AnnotatedImages, Obj
from segzoo.data.targets import BOXES, CLASS_MAP, Target
from segzoo.hub.wheels import DATA_WHEELS, default_cache_dir, fetch_all, fetch_wheel, find_wheel, read_member

PathLike = str | os.PathLike
WHEELS = {w.name: w.version for w in DATA_WHEELS.values()}  # the wheels' table is segzoo.hub.wheels'
NUCLEI_FILES = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
TREE_IMAGES = ("OSBS_029", "SOAP_061", "2019_YELL_2_528000_4978000_image_crop2",
               "2019_YELL_2_541000_4977000_image_crop")


# ---------------------------------------------------------------------------------------------- wheels
def _wheel(name: str, cache_dir: PathLike | None, download: bool) -> Path:
    version = WHEELS[name]
    found = fetch_wheel(name, version, cache_dir) if download else find_wheel(name, version, cache_dir)
    if found is None:
        where = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        raise FileNotFoundError(f"the {name}=={version} wheel is not in {where}; fetch it with `python -m "
                                "segzoo.data.formats.realdata fetch` (pip download --no-deps) or pass download=True")
    return found


def to_uint8_rgb(arr: np.ndarray) -> np.ndarray:
    """A grey or RGB array of any integer depth as ``H x W x 3`` uint8 (scaled by its maximum when above 255)."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    top = float(arr.max()) if arr.size else 0.0
    if arr.dtype != np.uint8:
        arr = (arr.astype(np.float64) * (255.0 / top)).round() if top > 255 else arr
        arr = arr.astype(np.uint8)
    return np.repeat(arr[..., None], 3, axis=-1) if arr.ndim == 2 else arr


# ---------------------------------------------------------------------------------------------- tiles
def cuts(n: int, tile: int) -> list[int]:
    """Tile edges along one axis: every ``tile`` pixels; a remainder under ``tile // 2`` joins the last tile."""
    edges = list(range(0, n, tile)) + [n]
    if len(edges) > 2 and n - edges[-2] < tile // 2:
        edges.pop(-2)
    return edges


def grid_tiles(height: int, width: int, tile: int) -> list[tuple[int, int, int, int, bool]]:
    """``(y0, x0, y1, x1, held_out)`` per tile, row-major; held out: the bottom-right block of the grid."""
    ys, xs = cuts(height, tile), cuts(width, tile)
    rows, cols = len(ys) - 1, len(xs) - 1
    return [(ys[r], xs[c], ys[r + 1], xs[c + 1], r >= rows // 2 and c >= cols // 2)
            for r in range(rows) for c in range(cols)]


def boxes_in_tile(boxes: np.ndarray, labels: np.ndarray, y0: int, x0: int, y1: int, x1: int):
    """The boxes whose centre lies in the tile, clipped to it, in the tile's coordinates."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    keep = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    out = boxes[keep].copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(x0, x1) - x0
    out[:, [1, 3]] = out[:, [1, 3]].clip(y0, y1) - y0
    return out, labels[keep]


class _Tiles(AnnotatedImages):
    """Tiles of in-memory images; subclasses fill ``self.tiles`` with ``(image index, y0, x0, y1, x1)``."""

    def __init__(self, images: list[np.ndarray], names: list[str], split: str, tile_size: int,
                 target: Target, transforms, ignore_index: int) -> None:
        super().__init__(target, transforms, ignore_index)
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val' (held-out tiles), got {split!r}")
        if tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {tile_size}")
        self.split, self.tile_size = split, tile_size
        self.arrays = [to_uint8_rgb(a) for a in images]
        self.names = names
        self.tiles = [(i, y0, x0, y1, x1) for i, a in enumerate(self.arrays)
                      for y0, x0, y1, x1, held in grid_tiles(a.shape[0], a.shape[1], tile_size)
                      if held == (split == "val")]

    def __len__(self) -> int:
        return len(self.tiles)

    def image_path(self, index: int) -> Path:
        i, y0, x0, _, _ = self.tiles[index]
        return Path(f"{self.names[i]}@y{y0}x{x0}")

    def image_hw(self, index: int) -> tuple[int, int]:
        _, y0, x0, y1, x1 = self.tiles[index]
        return y1 - y0, x1 - x0

    def load_image(self, index: int) -> tv_tensors.Image:
        i, y0, x0, y1, x1 = self.tiles[index]
        crop = np.ascontiguousarray(self.arrays[i][y0:y1, x0:x1])
        return tv_tensors.Image(torch.from_numpy(crop).permute(2, 0, 1))  # (3, H, W)

    def item_name(self, index: int) -> str:
        return str(self.image_path(index))


class LabelImageTiles(_Tiles):
    """Tiles of images with instance label images (0 background, ``k > 0`` one object each, one class).

    Semantic maps are 0/1 (background / ``class_name``); instance targets have one mask per label
    value in the tile; parts under ``min_pixels`` are crowd (left out of targets).
    """

    def __init__(self, images: list[np.ndarray], label_images: list[np.ndarray], names: list[str],
                 class_name: str, split: str = "train", target: Target = CLASS_MAP, tile_size: int = 128,
                 min_pixels: int = 16, transforms=None, ignore_index: int = 255) -> None:
        super().__init__(images, names, split, tile_size, target, transforms, ignore_index)
        for a, lab, name in zip(self.arrays, label_images, names):
            if lab.shape != a.shape[:2]:
                raise ValueError(f"{name}: the label image is {lab.shape} but the image is {a.shape[:2]}")
        self.label_images = [np.asarray(lab).astype(np.int64) for lab in label_images]
        self.object_classes = [class_name]
        self.min_pixels = min_pixels

    def _crop(self, index: int) -> np.ndarray:
        i, y0, x0, y1, x1 = self.tiles[index]
        return self.label_images[i][y0:y1, x0:x1]

    def semantic_map(self, index: int, height: int, width: int) -> np.ndarray:
        return (self._crop(index) > 0).astype(np.int64)

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        lab = self._crop(index)
        ids, counts = np.unique(lab[lab > 0], return_counts=True)
        return [Obj(0, mask=lab == k, crowd=bool(n < self.min_pixels)) for k, n in zip(ids.tolist(), counts.tolist())]


class BoxTiles(_Tiles):
    """Tiles of images with boxes (``N x 4`` xyxy pixels, 0-based labels): boxes only."""

    targets = (BOXES,)

    def __init__(self, images: list[np.ndarray], boxes: list[np.ndarray], labels: list[np.ndarray],
                 names: list[str], classes: list[str], split: str = "train", tile_size: int = 256,
                 transforms=None) -> None:
        super().__init__(images, names, split, tile_size, BOXES, transforms, 255)
        self.boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
        self.labels = [np.asarray(lb, dtype=np.int64).reshape(-1) for lb in labels]
        self.object_classes = list(classes)

    def check(self, report, num_classes: int, ignore_index: int = 255, allow_empty: bool = False) -> None:
        """As the base check, with empty tiles as warnings: the boxes are exhaustive, a tile without one
        shows no object (a meadow between the crowns) and is a true negative."""
        super().check(report, num_classes, ignore_index, allow_empty=True)

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        i, y0, x0, y1, x1 = self.tiles[index]
        boxes, labels = boxes_in_tile(self.boxes[i], self.labels[i], y0, x0, y1, x1)
        return [Obj(int(lb), box=tuple(b)) for b, lb in zip(boxes.tolist(), labels.tolist())]


# ---------------------------------------------------------------------------------------------- the two sets
def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).copy()


class NucleiTiles(LabelImageTiles):
    """The stardist nuclei image (512x512, 125 nuclei) as tiles; semantic (background, nucleus) or instance.

    Args:
        cache_dir: the wheel cache (default ``$SEGZOO_WHEELS`` or ``~/.cache/segzoo/wheels``).
        split: ``train`` or ``val`` (the held-out tiles).
        target: ``CLASS_MAP``, ``INSTANCE_MASKS`` or ``BOXES`` (:mod:`segzoo.data.targets`).
        tile_size: tile side in pixels (128: 12 training and 4 held-out tiles).
        min_pixels: nucleus parts smaller than this at a tile edge are ignored in instance targets.
        download: fetch the wheel with pip when it is not cached.
    """

    config_keys = ("cache_dir", "split", "tile_size", "min_pixels", "download", "ignore_index")
    config_required = ()
    config_paths = ("cache_dir",)

    def __init__(self, cache_dir: PathLike | None = None, split: str = "train", target: Target = CLASS_MAP,
                 tile_size: int = 128, min_pixels: int = 16, download: bool = False, transforms=None,
                 ignore_index: int = 255) -> None:
        wheel = _wheel("stardist", cache_dir, download)
        image, labels = (_decode(read_member(wheel, m)) for m in NUCLEI_FILES)
        super().__init__([image], [labels], [Path(NUCLEI_FILES[0]).name], "nucleus", split, target, tile_size,
                         min_pixels, transforms, ignore_index)
        self.wheel = wheel


class TreeCrownTiles(BoxTiles):
    """The deepforest aerial images with their tree-crown boxes as tiles (detection, one class ``tree``).

    Args:
        cache_dir: the wheel cache (default ``$SEGZOO_WHEELS`` or ``~/.cache/segzoo/wheels``).
        split: ``train`` or ``val`` (the held-out tiles).
        tile_size: tile side in pixels.
        download: fetch the wheel with pip when it is not cached.
    """

    config_keys = ("cache_dir", "split", "tile_size", "download")
    config_required = ()
    config_paths = ("cache_dir",)

    def __init__(self, cache_dir: PathLike | None = None, split: str = "train", tile_size: int = 256,
                 download: bool = False, transforms=None) -> None:
        wheel = _wheel("deepforest", cache_dir, download)
        images, boxes, names = [], [], []
        for stem in TREE_IMAGES:
            member = f"deepforest/data/{stem}"
            image = _decode(read_member(wheel, member + ".png"))
            ann = parse_voc_xml(Path(f"{wheel.name}!{member}.xml"), read_member(wheel, member + ".xml"))
            if (ann["height"], ann["width"]) != image.shape[:2]:
                raise ValueError(f"{member}.xml is for a {ann['width']}x{ann['height']} image but the png is "
                                 f"{image.shape[1]}x{image.shape[0]}")
            images.append(image)
            boxes.append(np.asarray([o["box"] for o in ann["objects"]], dtype=np.float64).reshape(-1, 4))
            names.append(f"{stem}.png")
        labels = [np.zeros(len(b), dtype=np.int64) for b in boxes]
        super().__init__(images, boxes, labels, names, ["tree"], split, tile_size, transforms)
        self.wheel = wheel


def main(argv: list[str] | None = None) -> int:
    """``python -m segzoo.data.formats.realdata fetch [CACHE_DIR]``: fetch the two data wheels and the ImageNet weights
    wheels (:func:`segzoo.hub.wheels.fetch_all`), what CI runs before the tests."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "fetch":
        print("usage: python -m segzoo.data.formats.realdata fetch [CACHE_DIR]", file=sys.stderr)
        return 2
    fetch_all(argv[1] if len(argv) > 1 else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
