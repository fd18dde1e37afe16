"""Real labelled data from published wheels: the tiling rule on synthetic arrays, and the two wheels when cached.

The wheel tests never download: they use ``$SEGZOO_WHEELS`` (default ``~/.cache/segzoo/wheels``) and
skip when the wheel is not there (``python -m segzoo.data.formats.realdata fetch`` puts it there).
"""

import subprocess

import numpy as np
import pytest
import torch

from segzoo.data import NucleiTiles, TreeCrownTiles, build_dataset, check_dataset
from segzoo.data.formats.realdata import (
    WHEELS,
    BoxTiles,
    LabelImageTiles,
    boxes_in_tile,
    cuts,
    fetch_wheel,
    find_wheel,
    grid_tiles,
    to_uint8_rgb,
)
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS
from tests.data_layouts import data_config


def test_grid_and_held_out_block():
    assert cuts(512, 128) == [0, 128, 256, 384, 512]
    assert cuts(1035, 256) == [0, 256, 512, 768, 1035]  # an 11 px remainder joins the last tile
    assert cuts(400, 256) == [0, 256, 400]
    tiles = grid_tiles(512, 512, 128)
    assert len(tiles) == 16 and sum(t[4] for t in tiles) == 4
    assert {t[:2] for t in tiles if t[4]} == {(256, 256), (256, 384), (384, 256), (384, 384)}
    covered = np.zeros((300, 500), int)  # tiles cover each pixel once
    for y0, x0, y1, x1, _ in grid_tiles(300, 500, 128):
        covered[y0:y1, x0:x1] += 1
    assert (covered == 1).all()


def test_boxes_belong_to_the_tile_of_their_centre():
    boxes = np.array([[10, 10, 30, 30], [90, 90, 140, 120], [120, 5, 200, 20]], float)
    labels = np.array([0, 1, 2])
    b, lb = boxes_in_tile(boxes, labels, 0, 0, 128, 128)
    assert lb.tolist() == [0, 1] and b.tolist() == [[10, 10, 30, 30], [90, 90, 128, 120]]  # clipped
    b, lb = boxes_in_tile(boxes, labels, 0, 128, 128, 256)
    assert lb.tolist() == [2] and b.tolist() == [[0, 5, 72, 20]]


def test_tiles_datasets_split_without_overlap():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (256, 256), dtype=np.uint16)  # 16-bit grey, scaled to uint8
    labels = np.zeros((256, 256), np.int64)
    labels[10:20, 10:20] = 1
    labels[120:136, 60:70] = 2  # cut by the tile edge at row 128
    labels[126:131, 200:204] = 3  # 8 pixels above row 128 (under min_pixels), 12 below
    kw = {"tile_size": 128, "min_pixels": 10}
    train = LabelImageTiles([image], [labels], ["img"], "nucleus", "train", INSTANCE_MASKS, **kw)
    val = LabelImageTiles([image], [labels], ["img"], "nucleus", "val", INSTANCE_MASKS, **kw)
    assert len(train) == 3 and len(val) == 1
    assert not {train.image_path(i) for i in range(3)} & {val.image_path(0)}
    img, t = train[0]
    assert img.shape == (3, 128, 128) and img.dtype == torch.uint8 and int(img.max()) <= 255
    assert t["labels"].tolist() == [0, 0] and t["boxes"].tolist() == [[10, 10, 20, 20], [60, 120, 70, 128]]
    _, t = train[1]  # top-right tile: only the 8-pixel part of nucleus 3, which is crowd
    assert len(t["labels"]) == 0 and train.objects(1, 128, 128)[0].crowd
    _, t = train[2]
    assert t["boxes"].tolist() == [[60, 0, 70, 8]]
    assert [(o.crowd, int(o.mask.sum())) for o in val.objects(0, 128, 128)] == [(False, 12)]
    sem = LabelImageTiles([image], [labels], ["img"], "nucleus", "train", CLASS_MAP, tile_size=128)
    assert sem.classes == ["background", "nucleus"] and sem[1][1].sum() == 8  # every nucleus pixel, parts too

    det = BoxTiles([np.zeros((200, 300, 3), np.uint8)], [np.array([[10, 10, 40, 40], [250, 150, 290, 190]])],
                   [np.array([0, 0])], ["x"], ["tree"], "val", tile_size=100)
    assert len(det) == 2 and [len(det[i][1]["labels"]) for i in range(2)] == [0, 1]
    assert to_uint8_rgb(np.full((2, 2), 1000, np.uint16)).tolist() == [[[255] * 3] * 2] * 2
    with pytest.raises(ValueError, match="split must be 'train' or 'val'"):
        BoxTiles([np.zeros((8, 8, 3), np.uint8)], [np.zeros((0, 4))], [np.zeros(0)], ["x"], ["t"], "test")


def test_fetch_wheel_uses_the_cache_and_explains_failures(tmp_path, monkeypatch):
    (tmp_path / "stardist-0.9.2-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    assert fetch_wheel("stardist", "0.9.2", tmp_path).name.startswith("stardist-0.9.2-")
    assert not calls  # cached: pip is not run

    def failing(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing)
    with pytest.raises(RuntimeError, match="No matching distribution(.|\n)*pip download --no-deps deepforest==2.1.0"):
        fetch_wheel("deepforest", "2.1.0", tmp_path / "new")
    assert calls[0][:4] == [calls[0][0], "-m", "pip", "download"] and "--no-deps" in calls[0] and len(calls) == 2
    with pytest.raises(FileNotFoundError, match="segzoo.data.formats.realdata fetch"):
        NucleiTiles(tmp_path / "empty")


def test_a_missing_wheel_in_a_config_says_to_fetch_it_not_to_fix_a_path(tmp_path, monkeypatch):
    from segzoo.config import ConfigError

    monkeypatch.setenv("SEGZOO_WHEELS", str(tmp_path / "empty"))
    for kind in ("nuclei", "tree_crowns"):
        with pytest.raises(ConfigError, match=f"data.train \\(data.type={kind}\\).*realdata fetch") as e:
            build_dataset(data_config({"type": kind}), "train", CLASS_MAP if kind == "nuclei" else BOXES)
        assert "data.train.root" not in str(e.value)  # no root to fix: the wheel is the fix


@pytest.fixture(scope="session")
def wheel_cache():
    missing = [n for n, v in WHEELS.items() if find_wheel(n, v) is None]
    if missing:
        pytest.skip(f"wheels {missing} not cached (python -m segzoo.data.formats.realdata fetch)")
    return None  # the default cache


def test_nuclei_from_the_stardist_wheel(wheel_cache):
    train = NucleiTiles(wheel_cache, "train", target=INSTANCE_MASKS)
    val = NucleiTiles(wheel_cache, "val", target=INSTANCE_MASKS)
    assert (len(train), len(val)) == (12, 4)
    label = np.concatenate([train.label_images[0].reshape(-1)])
    assert train.arrays[0].shape == (512, 512, 3) and len(np.unique(label)) - 1 == 125  # 125 nuclei
    counts = [len(train[i][1]["labels"]) for i in range(len(train))]
    assert sum(counts) > 90
    report = check_dataset(train, num_classes=1)
    assert report.ok and report.num_items == 12 and report.classes_found == [0], report.format()
    cfg = data_config({"type": "nuclei", "train": {"tile_size": 128}, "ignore_index": 255})
    sem = build_dataset(cfg, "train", CLASS_MAP, with_transforms=False)
    assert sem.num_classes == 2 and 0.05 < float(sem[0][1].float().mean()) < 0.6


def test_tree_crowns_from_the_deepforest_wheel(wheel_cache):
    train, val = TreeCrownTiles(wheel_cache, "train"), TreeCrownTiles(wheel_cache, "val")
    boxes = [sum(len(ds.objects(i, *ds.image_hw(i))) for i in range(len(ds))) for ds in (train, val)]
    assert sum(boxes) == 951 and 0.15 < boxes[1] / sum(boxes) < 0.4  # every crown in exactly one tile
    assert {train.image_path(i) for i in range(len(train))}.isdisjoint(val.image_path(i) for i in range(len(val)))
    report = check_dataset(val, num_classes=1)
    assert report.ok and report.num_items == len(val), report.format()
    _, t = val[0]
    assert t["labels"].eq(0).all() and (t["boxes"][:, 2:] > t["boxes"][:, :2]).all()
