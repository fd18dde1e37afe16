"""Real-world image and mask files: one reader, documented rules, and errors that name the file.

Each test covers one class of failure (issue 15.1): EXIF orientation, 16/32-bit and float files,
colour modes, corrupt files, label masks, and the readers of datasets and inference agreeing.
"""

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.data import CocoInstances, MaskFolder, check_dataset
from segzoo.data.errors import ImageFileError
from segzoo.data.image import image_size, read_image, read_mask
from segzoo.inference import load_image

# what a viewer shows for each EXIF orientation, from the stored pixels (EXIF 2.32, tag 0x0112)
DISPLAYED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),  # "rotate 90 CW": the phone was held upright
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # transverse: mirror across the anti-diagonal
    8: lambda a: np.rot90(a, 1),
}


def pixels(h=6, w=10, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8)


def save_with_orientation(arr, path, orientation, **kw):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(path, exif=exif, **kw)
    return path


# ------------------------------------------------------------------ EXIF orientation


@pytest.mark.parametrize("fmt", ["png", "tif", "webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_a_viewer(tmp_path, orientation, fmt):
    arr = pixels()
    kw = {"lossless": True} if fmt == "webp" else {}
    path = save_with_orientation(arr, tmp_path / f"o.{fmt}", orientation, **kw)
    expected = DISPLAYED[orientation](arr)
    got = read_image(path).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)
    assert image_size(path) == expected.shape[:2]  # the header-only size agrees (TIFF: Pillow may rotate itself)


def test_phone_photo_lines_up_with_its_annotations(tmp_path):
    """A JPEG stored landscape with "rotate 90" is annotated (CVAT, LabelMe) as the portrait picture."""
    stored = np.zeros((40, 60, 3), np.uint8)
    stored[:10, :20] = 255  # a white block at the stored top-left -> displayed top-right
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    save_with_orientation(stored, tmp_path / "im" / "p.jpg", 6, quality=100)
    label = np.zeros((60, 40), np.uint8)  # the mask a labelling tool writes: portrait, no tag
    label[:20, 30:] = 1
    Image.fromarray(label).save(tmp_path / "gt" / "p.png")
    ds = MaskFolder(tmp_path / "im", tmp_path / "gt", num_classes=2)
    image, mask = ds[0]
    assert image.shape == (3, 60, 40) and mask.shape == (60, 40)
    bright = image.float().mean(0) > 128
    assert (bright == (mask == 1)).float().mean() > 0.99
    assert check_dataset(ds, num_classes=2).ok
    # the same photo in COCO: width/height are the displayed size
    segm = [[30, 0, 40, 0, 40, 20, 30, 20]]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [30, 0, 10, 20], "segmentation": segm, "area": 200}
    coco = {"images": [{"id": 1, "file_name": "p.jpg", "width": 40, "height": 60}], "annotations": [ann],
            "categories": [{"id": 1, "name": "block"}]}
    (tmp_path / "a.json").write_text(__import__("json").dumps(coco))
    inst = CocoInstances(tmp_path / "im", tmp_path / "a.json")
    image, target = inst[0]
    assert image.shape == (3, 60, 40) and target["masks"][0, :20, 30:].all()
    assert check_dataset(inst, num_classes=1).ok


def test_mask_made_from_unrotated_pixels_is_named_with_the_exif_hint(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    save_with_orientation(pixels(40, 60), tmp_path / "im" / "p.jpg", 6)
    Image.fromarray(np.zeros((40, 60), np.uint8)).save(tmp_path / "gt" / "p.png")  # stored orientation
    ds = MaskFolder(tmp_path / "im", tmp_path / "gt", num_classes=2)
    with pytest.raises(ValueError, match="p.png is 60x40 but its image is 40x60.*EXIF orientation"):
        ds[0]
    assert "EXIF orientation" in " ".join(check_dataset(ds, num_classes=2).errors)


# ------------------------------------------------------------------ bit depth


def write_png16(arr, path, color_type):
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour PNGs)."""
    h, w = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16bit_grey_is_scaled_by_its_range_not_clipped_white(tmp_path, fmt):
    arr = np.linspace(0, 65535, 48).astype(np.uint16).reshape(6, 8)
    path = tmp_path / f"g16.{fmt}"
    Image.fromarray(arr).save(path)
    image = read_image(path)
    assert image.dtype == torch.float32 and image.shape == (3, 6, 8)
    torch.testing.assert_close(image[1], torch.from_numpy(arr / 65535.0).float())
    # every reader agrees: inference, pictures, and the dataset (through the transform's scale=True)
    torch.testing.assert_close(load_image(path), image.as_subclass(torch.Tensor))
    torch.testing.assert_close(read_image(Image.open(path)), image)  # PIL images: the same rules


def test_32bit_integer_and_float_tiff(tmp_path):
    ints = (np.arange(12).reshape(3, 4) * 100_000_000).astype(np.int32)
    Image.fromarray(ints).save(tmp_path / "i32.tif")
    torch.testing.assert_close(read_image(tmp_path / "i32.tif")[0], torch.from_numpy(ints / (2**31 - 1)).float())
    floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(floats).save(tmp_path / "f.tif")
    torch.testing.assert_close(read_image(tmp_path / "f.tif")[2], torch.from_numpy(floats))
    Image.fromarray(floats * 1.0001).save(tmp_path / "slack.tif")  # rounding slack: clipped, not refused
    assert read_image(tmp_path / "slack.tif").max() == 1
    Image.fromarray(floats * 255).save(tmp_path / "f255.tif")
    with pytest.raises(ImageFileError, match=r"f255.tif is a float image with values in \[0, 255\]"):
        read_image(tmp_path / "f255.tif")
    Image.fromarray(np.full((3, 4), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(ImageFileError, match="nan.tif holds NaN"):
        read_image(tmp_path / "nan.tif")


def test_16bit_colour_png_keeps_its_scale(tmp_path):
    arr = np.zeros((4, 5, 3), np.uint16)
    arr[..., 0], arr[..., 1], arr[..., 2] = 65535, 32768, 300
    image = read_image(write_png16(arr, tmp_path / "rgb16.png", color_type=2))
    assert image.dtype == torch.uint8 and image[:, 0, 0].tolist() == [255, 128, 1]


# ------------------------------------------------------------------ colour modes


def test_colour_modes_follow_the_documented_rules(tmp_path):
    rgb = pixels(4, 6)
    rgba = np.dstack([rgb, np.full((4, 6), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png").permute(1, 2, 0).numpy(), rgb)  # alpha dropped
    grey = rgb[..., 0]
    Image.fromarray(np.dstack([grey, grey]), "LA").save(tmp_path / "la.png")
    assert torch.equal(read_image(tmp_path / "la.png"), torch.from_numpy(grey)[None].repeat(3, 1, 1))
    pal = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    pal.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90])
    pal.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png")[:, 1, 0].tolist() == [70, 80, 90]  # palette colours
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = read_image(tmp_path / "cmyk.jpg")
    assert cmyk.dtype == torch.uint8 and cmyk.shape == (3, 4, 6)
    Image.fromarray(grey > 100).save(tmp_path / "bits.png")  # 1-bit
    assert set(read_image(tmp_path / "bits.png").unique().tolist()) <= {0, 255}


# ------------------------------------------------------------------ corrupt files


def corrupt_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(pixels(64, 64)).save(good)
    data = good.read_bytes()
    Image.fromarray(pixels(64, 64)).save(tmp_path / "good.jpg")
    jpg = (tmp_path / "good.jpg").read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    return {
        "truncated.png": data[: len(data) // 2],
        "truncated.jpg": jpg[: len(jpg) // 2],
        "random.png": os.urandom(300),
        "empty.png": b"",
        "flipped.png": bytes(flipped),
    }


@pytest.mark.parametrize("name", ["truncated.png", "truncated.jpg", "random.png", "empty.png", "flipped.png"])
def test_corrupt_file_error_names_the_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(corrupt_files(tmp_path)[name])
    for reader in (read_image, load_image):
        with pytest.raises(ImageFileError, match=f"cannot read image .*{name}"):
            reader(path)
    with pytest.raises(ImageFileError, match=f"mask .*{name}"):
        read_mask(path)


def test_corrupt_image_in_a_dataset_is_named(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    (tmp_path / "im" / "a.png").write_bytes(corrupt_files(tmp_path)["truncated.png"])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "gt" / "a.png")
    ds = MaskFolder(tmp_path / "im", tmp_path / "gt", num_classes=2)
    with pytest.raises(ValueError, match="cannot read image .*a.png: the file is truncated"):
        ds[0]


# ------------------------------------------------------------------ label masks


def test_label_masks_keep_their_values(tmp_path):
    labels = np.array([[0, 1, 300], [1000, 7, 0]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "m16.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m16.png"), labels.astype(np.int64))  # 16-bit ids kept
    pal = Image.fromarray(np.array([[0, 3], [21, 255]], np.uint8), "P")
    pal.putpalette(list(range(256)) * 3)
    pal.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").tolist() == [[0, 3], [21, 255]]  # indices, not colours
    Image.fromarray(np.zeros((2, 3, 3), np.uint8) + np.uint8([0, 128, 0])).save(tmp_path / "rgb.png")
    with pytest.raises(ImageFileError, match="rgb.png is a colour"):
        read_mask(tmp_path / "rgb.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "m.jpg")
    with pytest.raises(ImageFileError, match="m.jpg is a lossy JPEG"):
        read_mask(tmp_path / "m.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "lossy.webp", quality=80)
    with pytest.raises(ImageFileError, match="lossy.webp is a lossy WEBP"):
        read_mask(tmp_path / "lossy.webp")
    Image.fromarray(np.full((8, 8), 3, np.uint8)).save(tmp_path / "ok.webp", lossless=True)
    assert (read_mask(tmp_path / "ok.webp") == 3).all()
