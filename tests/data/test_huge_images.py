"""Memory is bounded by what the file says: image headers are checked against a pixel limit before decoding."""

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segzoo
from segzoo.data.errors import DataError
from segzoo.data.image import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_PIXELS_ENV,
    ImageTooLargeError,
    image_size,
    max_image_pixels,
    read_image,
    read_mask,
    set_max_image_pixels,
)

REPO = Path(__file__).resolve().parents[2]


def bomb_png(path: Path, w: int, h: int, color_type: int = 2) -> Path:
    """A valid 8-bit PNG of w x h zero pixels: a few hundred KB of zlib for gigabytes of pixels."""
    channels = {0: 1, 2: 3}[color_type]
    comp = zlib.compressobj(9)
    rows = (b"\x00" + b"\x00" * (w * channels)) * 64
    body = b"".join(comp.compress(rows) for _ in range(h // 64)) + comp.compress(
        (b"\x00" + b"\x00" * (w * channels)) * (h % 64)) + comp.flush()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def limit_env(monkeypatch):
    """Each test starts from the default limit and leaves Pillow's own as it found it."""
    monkeypatch.setenv(MAX_PIXELS_ENV, "1")  # recorded, so what the test sets is undone
    monkeypatch.delenv(MAX_PIXELS_ENV)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)


@pytest.fixture(scope="module")
def huge(tmp_path_factory):
    return bomb_png(tmp_path_factory.mktemp("huge") / "huge.png", 11000, 11000)


def test_header_is_checked_before_decoding(huge, limit_env):
    assert huge.stat().st_size < 1_000_000  # the file is small; its pixels would be 363 MB of uint8
    for reader in (read_image, read_mask, image_size):
        with pytest.raises(ImageTooLargeError, match=r"declares 11000 x 11000 = 121,000,000 pixels, above the "
                                                     r"limit of 89,478,485 .*SEGZOO_MAX_IMAGE_PIXELS"):
            reader(huge)
    assert issubclass(ImageTooLargeError, DataError)  # data check and training both treat it as a bad file


def test_the_limit_is_configurable_like_pillows(tmp_path, limit_env, monkeypatch):
    small = tmp_path / "s.png"
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(small)
    assert max_image_pixels() == DEFAULT_MAX_IMAGE_PIXELS == 89_478_485
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ImageTooLargeError, match="40 x 30 = 1,200 pixels, above the limit of 1,000"):
        read_image(small)
    set_max_image_pixels(1200)  # the limit itself is allowed, as in Pillow
    assert read_image(small).shape == (3, 30, 40)
    set_max_image_pixels(0)  # no limit; Pillow's own check is lifted too so it does not refuse instead
    assert max_image_pixels() is None
    with pytest.raises(ValueError, match="number of pixels"):
        set_max_image_pixels("lots")
    # raising segzoo's limit above twice Pillow's must not meet Pillow's DecompressionBombError
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    set_max_image_pixels(5000)
    assert read_image(small).shape == (3, 30, 40)


def test_config_key_sets_the_limit_for_data_check_and_training(tmp_path, limit_env):
    from segzoo.cli import main as cli

    root = tmp_path / "mf"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / f"{i}.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: unet, num_classes: 2}}\ndata:\n  type: mask_folder\n  binary: true\n"
                   f"  max_image_pixels: 1000\n  train: {{images: {root / 'images'}, masks: {root / 'masks'}}}\n"
                   f"  val: {{images: {root / 'images'}, masks: {root / 'masks'}}}\n")
    assert cli(["data", "check", str(cfg)]) == 1  # 1600 pixels > 1000: named as an error, not decoded
    assert cli(["data", "check", str(cfg), "data.max_image_pixels=2000"]) == 0
    assert cli(["data", "check", str(cfg), "--max-image-pixels", "2000"]) == 0  # the flag wins over the config


def test_cli_flag_sets_the_limit_and_refuses_a_bad_value(tmp_path, limit_env, capsys):
    from segzoo.cli import main as cli

    ckpt = tmp_path / "m.safetensors"
    segzoo.save(segzoo.build("unet", num_classes=2, channels=[4, 8, 16, 32, 64]), ckpt)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a.png")
    args = ["infer", str(ckpt), str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert cli([*args, "--max-image-pixels", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the image pixel limit must be a number of pixels") and err.count("\n") == 1
    cli([*args, "--max-image-pixels", "1000"])
    assert "32 x 32 = 1,024 pixels, above the limit of 1,000" in capsys.readouterr().err
    assert cli([*args, "--max-image-pixels", "1024"]) == 0


def _peak_rss_mb(args: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    """Run ``python -m segzoo.cli ARGS`` and return its peak RSS (MB) from getrusage of the child."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'segzoo.cli', "
               f"*{args!r}], capture_output=True, text=True); sys.stderr.write(r.stderr); sys.stdout.write(r.stdout);"
               " print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)
    peak = [line for line in proc.stdout.splitlines() if line.startswith("PEAK")]
    assert peak, proc.stderr
    return int(peak[0].split()[1]) / 1024, proc


@pytest.mark.slow
@pytest.mark.parametrize("tile", [None, 512])
def test_infer_on_an_11000_px_png_stays_under_2_gb(huge, tmp_path, tile):
    ckpt = tmp_path / "m.safetensors"
    segzoo.save(segzoo.build("unet", num_classes=2, channels=[4, 8, 16, 32, 64]), ckpt)
    args = ["infer", str(ckpt), str(huge), "--out", str(tmp_path / "out"), "--device", "cpu"]
    peak, proc = _peak_rss_mb(args + (["--tile", str(tile)] if tile else []), tmp_path)
    assert peak < 2048, f"peak RSS {peak:.0f} MB"
    assert "declares 11000 x 11000 = 121,000,000 pixels, above the limit" in proc.stderr, proc.stderr
    assert not list((tmp_path / "out").glob("*.png"))
    print(f"peak RSS {peak:.0f} MB (tile={tile})")
