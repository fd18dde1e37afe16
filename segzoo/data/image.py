"""The one reader of image and label-mask files: training, data checks, evaluation and inference use it.

:func:`read_image` gives a ``3 x H x W`` RGB :class:`tv_tensors.Image` (a ``torch.Tensor``):

* 8-bit files give uint8 in [0, 255]. That covers JPEG, PNG, BMP, GIF, WebP and 8-bit TIFF, and
  also colour PNG/TIFF with 16 bits per channel, which Pillow reduces to their top 8 bits (the
  scale stays right and the least significant bits are lost).
* Single-channel 16- and 32-bit integer files (grey PNG and TIFF from medical, microscopy and
  remote-sensing tools) give float32 in [0, 1], divided by the largest value of the stored type
  (65535 for 16 bits). Data that uses fewer bits than its type, such as 12-bit sensor values in
  a 16-bit file, therefore looks dark: stretch it when saving. Negative values are refused.
* 32-bit float files give float32 and must already hold intensities in [0, 1] (rounding slack
  of 1e-3 is clipped). Other ranges and NaN or infinite values are refused, because any
  rescaling rule would be a guess.

Both dtypes end up in [0, 1] after ``v2.ToDtype(torch.float32, scale=True)``, which is how the
transform presets and :func:`segzoo.predict` turn images into model input.

Conversion rules:

* **EXIF orientation** is applied, so the pixels are the picture as viewers show it. Phones store
  portrait photos as landscape pixels with a "rotate 90" tag. Annotation tools (CVAT, LabelMe,
  Label Studio) and detectron2 annotate and read the rotated picture, and COCO ``width`` and
  ``height`` refer to it. :func:`image_size` gives that size from the file header.
* Grey (``L``, ``1``, ``I;16``, ``I``, ``F``): the value is repeated on the three channels.
* Palette (``P``): the palette's colours.
* Alpha (``LA``, ``RGBA``, ``PA``) is dropped, not composited: the colour channels are kept as
  stored, as torchvision's ``ImageReadMode.RGB``, OpenCV and detectron2 do.
* CMYK, YCbCr and LAB: Pillow's conversion to RGB, without colour management (embedded ICC
  profiles are ignored).
* Files with several frames (GIF, multi-page TIFF): the first frame.

:func:`read_mask` gives a label map as an ``H x W`` int64 numpy array of class values:

* Palette PNGs give their palette indices (the VOC convention), not their colours. Grey and
  16-bit PNG/TIFF give their values unchanged, and a 1-bit file gives 0/1.
* The alpha channel of ``LA``/``PA`` files is ignored.
* RGB files are refused: colours need a colour-to-class table (the message says when the three
  channels are equal, i.e. a grey map saved as RGB). The exception is lossless WebP, which has
  no grey mode: its maps with R = G = B everywhere are read as grey.
* Masks follow the same EXIF rule as images. Masks written by annotation tools carry no
  orientation tag, and a mask that carries its photo's tag was made from the photo's stored
  pixels, so applying the tag to both keeps the two aligned.
* Lossy formats (JPEG, lossy WebP) are refused, because compression noise changes label values
  along every edge.

:func:`read_panoptic` gives a COCO-panoptic PNG as an ``H x W`` int64 array of segment ids
``R + 256 G + 256^2 B`` (0 is void). Only 8-bit RGB(A) files in a lossless format are accepted
(alpha ignored, EXIF as for masks): a grey or palette file would decode to wrong ids, and a
16-bit colour PNG would lose its low bits.

A missing file raises FileNotFoundError. A corrupt, truncated or unsupported file raises
:class:`ImageFileError`, which names the file.

**Pixel limit.** Every reader checks the width and height that the file's header declares before
decoding a pixel: a file declaring more than :func:`max_image_pixels` pixels (width x height, as
Pillow's ``MAX_IMAGE_PIXELS``; default Pillow's 89,478,485, about 9459 x 9459) raises
:class:`ImageTooLargeError`, so a few-KB PNG that declares 11000 x 11000 costs nothing. Raise the
limit with the environment variable ``SEGZOO_MAX_IMAGE_PIXELS``, the config key
``data.max_image_pixels``, ``--max-image-pixels`` of ``segzoo infer``/``eval``/``data check`` or
:func:`set_max_image_pixels` (0 or ``none``: no limit). A raised limit is applied to Pillow's own
check too.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import tv_tensors

from segzoo.data.errors import DataError, ImageFileError

PathLike = str | os.PathLike
ORIENTATION = 0x0112  # the EXIF orientation tag
_SWAPS_AXES = (5, 6, 7, 8)  # orientations that rotate by 90 degrees (width and height swap)
_HIGH_BIT_MODES = ("I", "F")  # plus every "I;16*" mode
_LOSSY_FORMATS = ("JPEG", "MPO")
FLOAT_SLACK = 1e-3  # float images may exceed [0, 1] by this much (rounding); it is clipped

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's default MAX_IMAGE_PIXELS (1 GiB of 24-bit pixels / 4)
MAX_PIXELS_ENV = "SEGZOO_MAX_IMAGE_PIXELS"

__all__ = ["DEFAULT_MAX_IMAGE_PIXELS", "ImageFileError", "ImageTooLargeError", "image_from_pil", "image_size",
           "max_image_pixels", "read_image", "read_mask", "read_panoptic", "set_max_image_pixels"]


class ImageTooLargeError(ImageFileError):
    """A file whose header declares more pixels than :func:`max_image_pixels`; nothing was decoded."""


def _parse_limit(value: Any, source: str) -> int | None:
    """A pixel limit from an int or a string: a positive count, or 0 / "none" for no limit (None)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "0", "")):
        return None
    try:
        n = int(str(value).replace("_", "").replace(",", "")) if isinstance(value, str) else value
    except ValueError:
        n = -1
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{source} must be a number of pixels (width x height), or 0 / none for no limit; "
                         f"got {value!r}")
    return n or None


def max_image_pixels() -> int | None:
    """The pixel limit now in force: ``SEGZOO_MAX_IMAGE_PIXELS`` (set by :func:`set_max_image_pixels`
    too), else :data:`DEFAULT_MAX_IMAGE_PIXELS`; None means no limit."""
    raw = os.environ.get(MAX_PIXELS_ENV)
    return DEFAULT_MAX_IMAGE_PIXELS if raw is None else _parse_limit(raw, MAX_PIXELS_ENV)


def set_max_image_pixels(limit: int | str | None) -> None:
    """Set the pixel limit of every reader (0 or None: no limit) for this process and the processes it starts.

    It is kept in ``SEGZOO_MAX_IMAGE_PIXELS`` so data-loading workers inherit it.
    """
    n = _parse_limit(limit, "the image pixel limit")
    os.environ[MAX_PIXELS_ENV] = "none" if n is None else str(n)


def _check_pixels(im: Image.Image, path: Path | str, what: str) -> None:
    """Refuse a file whose header declares more pixels than the limit, before anything is decoded."""
    limit = max_image_pixels()
    w, h = im.size
    if limit is not None and w * h > limit:
        raise ImageTooLargeError(
            f"{what} {path} declares {w} x {h} = {w * h:,} pixels, above the limit of {limit:,} pixels; it was not "
            f"decoded. If you trust the file, raise the limit ({MAX_PIXELS_ENV}=N, data.max_image_pixels=N or "
            "--max-image-pixels N; 0: no limit), or cut it into tiles")


def _allow_in_pillow() -> None:
    """Pillow's own bomb check (in open, GIF frames, crop) must not refuse what segzoo's limit allows."""
    limit, pil = max_image_pixels(), Image.MAX_IMAGE_PIXELS
    if pil is not None and (limit is None or limit > pil):
        Image.MAX_IMAGE_PIXELS = limit


def _checked_path(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} file not found: {path}")
    if path.is_dir():
        raise ImageFileError(f"{path} is a folder, not an {what} file")
    return path


def _reason(error: Exception, path: Path) -> str:
    if isinstance(error, UnidentifiedImageError):
        hint = ""
        if path.suffix.lower() in (".heic", ".heif", ".avif"):
            hint = " (convert it to JPEG/PNG, or install pillow-heif and register its opener)"
        return f"not an image format Pillow can read, or not an image at all{hint}"
    if isinstance(error, Image.DecompressionBombError):
        return (f"{error} (if you trust the file, raise the limit: {MAX_PIXELS_ENV}=N, data.max_image_pixels=N or "
                "--max-image-pixels N)")
    if isinstance(error, OSError) and error.errno is not None:  # permissions, I/O errors: not the file's content
        return f"it cannot be opened ({error.strerror or error})"
    text = str(error) or type(error).__name__
    if "truncated" in text.lower():
        return f"the file is truncated ({text})"
    return f"the file is corrupt ({type(error).__name__}: {text})"


def _read(path: PathLike, what: str, fn: Callable[[Image.Image, Path], Any]) -> Any:
    """Open ``path`` with Pillow and return ``fn(image, path)``. Decoding errors become an ImageFileError."""
    path = _checked_path(path, what)
    _allow_in_pillow()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # segzoo's limit decides, below
            im = Image.open(path)
        with im:
            _check_pixels(im, path, what)
            return fn(im, path)
    except (DataError, MemoryError):
        raise
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, EOFError, zlib.error, ...
        raise ImageFileError(f"cannot read {what} {path}: {_reason(e, path)}; re-export the file or remove it "
                             "from the data") from e


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation (1-8) of an image that was already loaded; 1 when absent or invalid."""
    value = im.getexif().get(ORIENTATION, 1)
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _oriented(im: Image.Image) -> Image.Image:
    """The loaded image as it is displayed (EXIF orientation applied)."""
    im.load()
    if _orientation(im) == 1:
        return im
    return ImageOps.exif_transpose(im)


def _unit_range(arr: np.ndarray, depth: tuple[int, bool], name: str) -> np.ndarray:
    """A single-channel 16/32-bit integer or float array as float32 in [0, 1] (see the module docstring)."""
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageFileError(f"image {name} holds NaN or infinite values; save finite intensities in [0, 1]")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo < -FLOAT_SLACK or hi > 1 + FLOAT_SLACK:
            raise ImageFileError(
                f"image {name} is a float image with values in [{lo:g}, {hi:g}]; float images are read as "
                "intensities in [0, 1]: divide by the right maximum (255, 65535, ...) before saving, or save "
                "it as an 8- or 16-bit integer image")
        return np.clip(arr, 0, 1).astype(np.float32)  # a writable copy; rounding slack clipped
    bits, signed = depth
    top = float(2 ** (bits - 1) - 1 if signed else 2**bits - 1)
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0:
        raise ImageFileError(f"image {name} has negative pixel values (down to {lo}); images are read as "
                             "intensities from 0 to the largest value of their type")
    if hi > top:
        raise ImageFileError(f"image {name} has values up to {hi} but its header says {bits}-bit samples")
    return arr.astype(np.float32) / np.float32(top)


def _bit_depth(im: Image.Image) -> tuple[int, bool]:
    """``(bits, signed)`` of a single-channel integer image's stored samples."""
    mode = im.mode
    if mode.startswith("I;16"):
        return 16, mode.endswith("S")
    if im.format in ("PNG", "PPM"):  # 16-bit grey PNG (older Pillow) and PGM files open as "I"
        return 16, False
    tags = getattr(im, "tag_v2", None)
    if tags is not None:  # TIFF: BitsPerSample and SampleFormat (1 unsigned, 2 signed)
        bits, fmt = tags.get(258, (32,)), tags.get(339, (1,))
        bits = bits[0] if isinstance(bits, tuple) else bits
        fmt = fmt[0] if isinstance(fmt, tuple) else fmt
        return int(bits), fmt == 2
    return 32, True  # Pillow's "I" mode is int32


def image_from_pil(im: Image.Image, name: str | None = None) -> tv_tensors.Image:
    """A Pillow image as :func:`read_image` would give it, EXIF orientation included.

    Args:
        im: the image. Files opened with ``Image.open`` are decoded here.
        name: what to call the image in error messages (default: its file name).
    """
    name = name or getattr(im, "filename", None) or "image"
    _check_pixels(im, name, "image")  # images opened elsewhere (LabelMe imageData) too, before decoding
    im.load()
    mode = im.mode
    depth = _bit_depth(im) if mode == "I" or mode.startswith("I;16") else (32, False)  # before the tags are lost
    im = _oriented(im)
    if mode in _HIGH_BIT_MODES or mode.startswith("I;16"):
        arr = _unit_range(np.asarray(im), depth, name)  # (H, W) float32 in [0, 1]
        return tv_tensors.Image(torch.from_numpy(arr)[None].repeat(3, 1, 1))  # (3, H, W)
    if mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError:  # modes without a direct conversion (e.g. "La")
            im = im.convert("RGBA").convert("RGB")
    arr = np.array(im)  # (H, W, 3) uint8, a writable copy
    return tv_tensors.Image(torch.from_numpy(arr).permute(2, 0, 1))  # (3, H, W)


def read_image(image: PathLike | Image.Image | np.ndarray | torch.Tensor) -> tv_tensors.Image:
    """An image as a ``3 x H x W`` RGB tensor: uint8 from 8-bit files, float32 in [0, 1] from others.

    The one image reader of segzoo: datasets, data checks, evaluation, pictures and
    :func:`segzoo.predict` all read through it.

    * A path: the file, read by the rules of the module docstring (the pixel limit and every file
      check). Raises FileNotFoundError for a missing file and :class:`ImageFileError`, which names
      the file, for one that cannot be decoded.
    * A PIL image: :func:`image_from_pil` (the same rules, the pixel limit included).
    * An ``H x W x C`` (or ``H x W``) numpy array: ``C x H x W``, dtype kept.
    * A tensor: as it is (dtype and device kept, detached); a batch of one loses its batch dimension.

    Shape checks of arrays and tensors are the caller's (drawing and prediction differ).
    """
    if isinstance(image, (str, os.PathLike)):
        return _read(image, "image", lambda im, p: image_from_pil(im, str(p)))
    if isinstance(image, Image.Image):
        return image_from_pil(image)
    if isinstance(image, np.ndarray):
        arr = image[..., None] if image.ndim == 2 else image
        if arr.ndim != 3:
            raise ValueError(f"numpy images must be H x W x 3, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"cannot read an image from {type(image).__name__}; pass a path, PIL image, numpy "
                        "array or tensor")
    image = image.detach()
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    return image.as_subclass(tv_tensors.Image)  # no copy; dimensions as given


def image_size(path: PathLike) -> tuple[int, int]:
    """``(height, width)`` of the image :func:`read_image` gives, read from the file header only.

    EXIF orientation is taken into account. An EXIF block that a PNG stores after its pixel data is
    not seen here, although :func:`read_image` applies it.
    """

    def size(im: Image.Image, p: Path) -> tuple[int, int]:
        w, h = im.size
        tags = getattr(im, "tag_v2", None)
        if tags is not None and 256 in tags and 257 in tags:  # TIFF: Pillow may already report the rotated size
            w, h = int(tags[256]), int(tags[257])
            orientation = tags.get(ORIENTATION, 1)
        elif im.format == "PNG":  # its getexif() would decode the whole image
            raw = im.info.get("exif")
            exif = Image.Exif()
            if raw:
                exif.load(raw)
            orientation = exif.get(ORIENTATION, 1)
        else:
            orientation = im.getexif().get(ORIENTATION, 1)
        return (w, h) if orientation in _SWAPS_AXES else (h, w)

    return _read(path, "image", size)


def _webp_is_lossy(path: Path) -> bool:
    """True when a WebP file holds a lossy ("VP8 ") bitstream; lossless files hold "VP8L"."""
    with open(path, "rb") as f:
        f.seek(12)
        while True:
            head = f.read(8)
            if len(head) < 8:
                return False
            fourcc, size = head[:4], struct.unpack("<I", head[4:])[0]
            if fourcc in (b"VP8 ", b"VP8L"):
                return fourcc == b"VP8 "
            f.seek(size + (size & 1), os.SEEK_CUR)


def _mask_array(im: Image.Image, path: Path) -> np.ndarray:
    lossy = im.format in _LOSSY_FORMATS or (im.format == "WEBP" and _webp_is_lossy(path))
    if lossy:
        raise ImageFileError(
            f"mask {path} is a lossy {im.format} file: compression noise changes label values along every edge "
            "(a 2 becomes 1 or 3); export the masks as PNG from the labelling tool")
    fmt = im.format
    im = _oriented(im)
    mode = im.mode
    if mode in ("P", "L", "1", "I") or mode.startswith("I;16"):
        arr = np.asarray(im)
    elif mode in ("LA", "PA", "La"):
        arr = np.asarray(im.getchannel(0))
    elif mode in ("RGB", "RGBA", "RGBX", "RGBa"):
        rgb = np.asarray(im)[..., :3]
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        if grey and fmt == "WEBP":  # WebP has no grey mode: Pillow stores grey maps as R = G = B
            return rgb[..., 0].astype(np.int64)
        fix = ("its three channels are equal: save one of them as a grey image (Image.fromarray(arr[..., 0]))"
               if grey else "convert the colours to class indices and save them as a grey or palette PNG")
        raise ImageFileError(f"mask {path} is a colour ({mode}) image; label masks must be palette or grey-level "
                             f"images whose values are class indices: {fix}")
    elif mode == "F":
        arr = np.asarray(im)
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ImageFileError(f"mask {path} is a float image with non-integer values; label masks hold class "
                                 "indices: save them as an integer (8- or 16-bit) image")
    else:
        raise ImageFileError(f"mask {path} is a {mode} image; label masks must be palette or grey-level images "
                             "whose values are class indices")
    return arr.astype(np.int64)


def read_mask(path: PathLike) -> np.ndarray:
    """A label-mask file as an ``H x W`` int64 array of class values (rules in the module docstring)."""
    return _read(path, "mask", _mask_array)


def _panoptic_array(im: Image.Image, path: Path) -> np.ndarray:
    lossy = im.format in _LOSSY_FORMATS or (im.format == "WEBP" and _webp_is_lossy(path))
    if lossy:
        raise ImageFileError(f"panoptic PNG {path} is a lossy {im.format} file: compression noise changes the "
                             "RGB-encoded segment ids; write the panoptic maps as PNG")
    rawmode = getattr(im.tile[0], "args", None) if im.tile else None
    if im.mode not in ("RGB", "RGBA", "RGBX") or (isinstance(rawmode, str) and "16" in rawmode):
        raise ImageFileError(
            f"panoptic PNG {path} is a {im.mode} image{' with 16-bit channels' if im.mode.startswith('RGB') else ''}; "
            "COCO-panoptic maps are 8-bit RGB images whose colour encodes the segment id as R + 256 G + 256^2 B "
            "(panopticapi's id2rgb)")
    rgb = np.asarray(_oriented(im).convert("RGB")).astype(np.int64)  # (H, W, 3)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def read_panoptic(path: PathLike) -> np.ndarray:
    """A COCO-panoptic PNG as an ``H x W`` int64 array of segment ids (rules in the module docstring)."""
    return _read(path, "panoptic PNG", _panoptic_array)
