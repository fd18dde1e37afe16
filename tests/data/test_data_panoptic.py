"""COCO-panoptic data (json + RGB-encoded PNGs), the panoptic Shapes data and the panoptic transforms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.data import CocoPanoptic, DataError, ShapesPanoptic, build_dataset, build_transforms, check_dataset
from segzoo.data.errors import ImageFileError
from segzoo.data.formats.coco_panoptic import ids_to_rgb, rgb_to_ids
from segzoo.data.image import read_panoptic
from segzoo.data.targets import INSTANCE_MASKS, SEGMENTS
from segzoo.tasks import get_task
from tests.data_layouts import data_config

BIG_ID = 3 + 7 * 256 + 49 * 65536  # uses all three channels


def _write(tmp_path, segments_info=None, ids=None, categories=None, extra_png_id=None):
    """A one-image COCO-panoptic dataset: stuff 'sky' (id 20) on top, 'grass' (id 21) below, a 'dog' (id 1)
    and a crowd of 'cat' (id 2); a void row."""
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "panoptic").mkdir(exist_ok=True)
    h, w = 20, 30
    if ids is None:
        ids = np.zeros((h, w), dtype=np.int64)
        ids[:10] = 7
        ids[10:] = BIG_ID
        ids[2:6, 3:9] = 11  # dog
        ids[12:18, 20:28] = 12  # crowd of cats
        ids[9] = 0  # void
        if extra_png_id is not None:
            ids[0, 0] = extra_png_id
    Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(tmp_path / "images" / "a.jpg")
    Image.fromarray(ids_to_rgb(ids)).save(tmp_path / "panoptic" / "a.png")
    if segments_info is None:
        segments_info = [{"id": 7, "category_id": 20}, {"id": BIG_ID, "category_id": 21},
                         {"id": 11, "category_id": 1, "iscrowd": 0}, {"id": 12, "category_id": 2, "iscrowd": 1}]
    if categories is None:
        categories = [{"id": 21, "name": "grass", "isthing": 0}, {"id": 2, "name": "cat", "isthing": 1},
                      {"id": 20, "name": "sky", "isthing": 0}, {"id": 1, "name": "dog", "isthing": 1}]
    data = {"images": [{"id": 5, "file_name": "a.jpg", "height": h, "width": w}],
            "annotations": [{"image_id": 5, "file_name": "a.png", "segments_info": segments_info}],
            "categories": categories}
    (tmp_path / "panoptic.json").write_text(json.dumps(data))
    return tmp_path / "images", tmp_path / "panoptic.json", tmp_path / "panoptic"


def test_ids_round_trip_through_the_png(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65536, BIG_ID]])
    assert (rgb_to_ids(ids_to_rgb(ids)) == ids).all()
    Image.fromarray(ids_to_rgb(ids)).save(tmp_path / "p.png")
    assert (read_panoptic(tmp_path / "p.png") == ids).all()


@pytest.mark.parametrize("kind", ["grey", "rgb16", "jpeg"])
def test_panoptic_pngs_that_would_decode_wrong_ids_are_refused(tmp_path, kind):
    if kind == "grey":
        path = tmp_path / "p.png"
        Image.fromarray(np.full((4, 4), 7, np.uint8)).save(path)
    elif kind == "jpeg":
        path = tmp_path / "p.jpg"
        Image.fromarray(ids_to_rgb(np.full((4, 4), 7))).save(path)
    else:  # 16 bits per channel: Pillow would keep only the high byte
        import struct
        import zlib

        path = tmp_path / "p.png"
        raw = b"".join(b"\x00" + bytes(4 * 6) for _ in range(4))

        def chunk(tag, data):
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0))
                         + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(ImageFileError, match="panoptic"):
        read_panoptic(path)


def test_coco_panoptic_item(tmp_path):
    ds = CocoPanoptic(*_write(tmp_path))
    assert ds.classes == ["dog", "cat", "sky", "grass"]  # things by id, then stuff by id
    assert (ds.num_classes, ds.num_stuff, ds.num_things) == (4, 2, 2) and ds.cat_ids == [1, 2, 20, 21]
    image, t = ds[0]
    assert image.shape == (3, 20, 30) and t["image_id"] == 5
    assert t["labels"].tolist() == [2, 3, 0, 1] and t["iscrowd"].tolist() == [0, 0, 0, 1]
    assert t["masks"].shape == (4, 20, 30) and t["masks"].dtype == torch.uint8
    assert int(t["masks"][1].sum()) == 10 * 30 - 6 * 8  # BIG_ID decoded from all three channels
    assert t["boxes"][2].tolist() == [3, 2, 9, 6]  # xyxy pixel extents of the dog
    assert int(t["masks"].sum()) == 20 * 30 - 30  # the void row is in no segment
    report = check_dataset(ds, 4, name="val")
    assert report.ok and report.classes_found == [0, 1, 2, 3]
    assert not check_dataset(ds, 3).ok  # another class count


@pytest.mark.parametrize("change, match", [
    (dict(extra_png_id=99), "does not list"),
    (dict(segments_info=[{"id": 7, "category_id": 20}, {"id": 11, "category_id": 1}, {"id": 12, "category_id": 2},
                         {"id": BIG_ID, "category_id": 21}, {"id": 40, "category_id": 1}]), "does not contain"),
])
def test_pngs_that_disagree_with_the_json_are_refused_when_loaded(tmp_path, change, match):
    ds = CocoPanoptic(*_write(tmp_path, **change))
    with pytest.raises(DataError, match=match):
        ds[0]
    assert not check_dataset(ds, 4).ok


@pytest.mark.parametrize("change, match", [
    (dict(categories=[{"id": 1, "name": "dog"}]), "isthing"),
    (dict(segments_info=[{"id": 7, "category_id": 99}]), "category_id 99"),
    (dict(segments_info=[{"id": 7, "category_id": 20}, {"id": 7, "category_id": 21}]), "twice"),
    (dict(segments_info=[{"id": 0, "category_id": 20}]), "id > 0"),
])
def test_bad_json_is_refused(tmp_path, change, match):
    with pytest.raises(DataError, match=match):
        CocoPanoptic(*_write(tmp_path, **change))


def test_training_transforms_keep_iscrowd_with_its_segment(tmp_path):
    ds = CocoPanoptic(*_write(tmp_path), transforms=build_transforms(SEGMENTS, True, size=12, scale=(1.0, 1.0)))
    torch.manual_seed(0)
    for _ in range(20):  # random 12 x 12 crops drop segments
        _, t = ds[0]
        assert len(t["labels"]) == len(t["iscrowd"]) == len(t["masks"]) == len(t["boxes"])
        for label, crowd in zip(t["labels"].tolist(), t["iscrowd"].tolist()):
            assert crowd == (label == 1)  # only the cats are a crowd


def test_shapes_panoptic(tmp_path):
    ds = ShapesPanoptic(tmp_path / "sp", "val", num_train=2, num_val=3, size=64)
    assert ds.classes == ["circle", "square", "triangle", "sky", "grass", "brick"]
    assert (ds.num_classes, ds.num_stuff) == (6, 3) and len(ds) == 3
    report = check_dataset(ds, 6)
    assert report.ok, report.format()
    stuff_seen = set()
    for i in range(3):
        _, t = ds[i]
        labels = t["labels"].tolist()
        stuff = [c for c in labels if c >= 3]
        assert 2 <= len(stuff) == len(set(stuff)) <= 3  # one segment per stuff class present
        stuff_seen.update(stuff)
        assert not bool((t["masks"].sum(0) > 1).any())  # disjoint
    assert len(stuff_seen) >= 2
    again = ShapesPanoptic(tmp_path / "sp2", "val", num_train=2, num_val=3, size=64)
    assert (read_panoptic(again.png_path(0)) == read_panoptic(ds.png_path(0))).all()  # deterministic


def test_build_dataset_keeps_the_two_shapes_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = {"type": "shapes_panoptic", "root": "data/shapes", "train": {"num_train": 2, "num_val": 1, "size": 48}}
    ds = build_dataset(data_config(cfg), "train", SEGMENTS)
    assert ds.ann_file.parent.parent == tmp_path / "data" / "shapes_panoptic" or \
        ds.ann_file.parent.parent.resolve() == (tmp_path / "data" / "shapes_panoptic").resolve()
    with pytest.raises(ValueError, match="panoptic"):
        build_dataset(data_config(cfg), "train", INSTANCE_MASKS)
    with pytest.raises(ValueError, match="shapes_panoptic"):
        build_dataset(data_config({"type": "shapes", "root": str(tmp_path / "s")}), "train", SEGMENTS)


def test_a_model_with_another_thing_stuff_split_is_refused(tmp_path):
    ds = CocoPanoptic(*_write(tmp_path))
    with torch.device("meta"):
        model = segzoo.build("panoptic_fpn_resnet18", num_classes=4, num_stuff=1)
        right = segzoo.build("panoptic_fpn_resnet18", num_classes=4, num_stuff=2)
    with pytest.raises(ValueError, match="num_stuff=2"):
        get_task(model).check_categories(model, ds)
    get_task(right).check_categories(right, ds)


def test_auto_recognises_coco_panoptic_layouts(tmp_path):
    """``data.type: auto`` tells a COCO-panoptic json from an instances json (both have images /
    annotations / categories) and finds the images beside it, not the PNG folder."""
    from segzoo.data import detect_format, resolve_auto
    from segzoo.data.convert import convert

    for name in ("flat", "src"):
        (tmp_path / name).mkdir()
    _write(tmp_path / "flat")  # images/ + panoptic.json + panoptic/ (the panoptic Shapes layout)
    assert detect_format(tmp_path / "flat") == "coco_panoptic"
    assert detect_format(tmp_path / "flat" / "panoptic.json") == "coco_panoptic"
    ds = build_dataset(data_config({"type": "auto", "val": {"root": str(tmp_path / "flat")}}), "val", SEGMENTS,
                       with_transforms=False)
    assert isinstance(ds, CocoPanoptic) and ds.root == tmp_path / "flat" / "images" and len(ds) == 1

    coco = tmp_path / "coco"  # the COCO 2017 layout: val2017/, annotations/panoptic_val2017{.json,/}
    images, ann, pngs = _write(tmp_path / "src")
    (coco / "annotations").mkdir(parents=True)
    images.rename(coco / "val2017")
    pngs.rename(coco / "annotations" / "panoptic_val2017")
    ann.rename(coco / "annotations" / "panoptic_val2017.json")
    kind, args = resolve_auto(coco, "val")
    assert kind == "coco_panoptic" and args == {"root": coco / "val2017",
                                                "ann_file": coco / "annotations" / "panoptic_val2017.json"}
    assert CocoPanoptic(**args)[0][1] is not None  # the PNGs are found at the default place

    # an instances json beside it: both layouts fit, and the message says to name one
    (coco / "annotations" / "instances_val2017.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "dog"}]}))
    with pytest.raises(ValueError, match="several layouts fit .*coco, coco_panoptic(.|\n)*set data.type"):
        detect_format(coco)
    with pytest.raises(ValueError, match="is COCO-panoptic.*does not convert it"):
        convert(tmp_path / "flat", tmp_path / "out", "coco")
