"""Datasets on small generated files: COCO (polygons, RLE, crowd), mask folders, Shapes."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.data import CocoInstances, CocoSemantic, MaskFolder, Shapes, build_dataset
from segzoo.data.synthetic.shapes import encode_rle, render
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS
from tests.data_layouts import data_config

pytest.importorskip("pycocotools")


def _write_coco(tmp_path, annotations, categories=None, images=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    coco = {
        "images": images or [{"id": 7, "file_name": "a.png", "height": 20, "width": 30}],
        "annotations": annotations,
        "categories": categories or [{"id": 3, "name": "cat"}, {"id": 10, "name": "dog"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "img", tmp_path / "ann.json"


def test_coco_polygon_rle_crowd_and_contiguous_labels(tmp_path):
    rle_mask = np.zeros((20, 30), np.uint8)
    rle_mask[2:6, 20:28] = 1
    crowd = np.zeros((20, 30), np.uint8)
    crowd[15:19, 0:5] = 1
    anns = [
        {"id": 1, "image_id": 7, "category_id": 10, "bbox": [2, 3, 8, 6], "iscrowd": 0, "area": 48,
         "segmentation": [[2, 3, 10, 3, 10, 9, 2, 9]]},
        {"id": 2, "image_id": 7, "category_id": 3, "bbox": [20, 2, 8, 4], "iscrowd": 0, "area": 32,
         "segmentation": encode_rle(rle_mask)},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 15, 5, 4], "iscrowd": 1, "area": 20,
         "segmentation": encode_rle(crowd)},
    ]
    root, ann = _write_coco(tmp_path, anns)
    ds = CocoInstances(root, ann)
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2
    image, target = ds[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8
    assert target["labels"].tolist() == [1, 0]  # id 10 -> 1, id 3 -> 0; crowd left out
    assert target["boxes"].tolist() == [[2, 3, 10, 9], [20, 2, 28, 6]]
    masks = target["masks"]
    assert masks.shape == (2, 20, 30)
    assert torch.equal(masks[1], torch.from_numpy(rle_mask))  # uncompressed RLE decoded exactly
    assert masks[0, 4:8, 3:9].all() and masks[0].sum() < 80 and masks[0, 15:, :].sum() == 0

    sem = CocoSemantic(root, ann)
    assert sem.classes == ["background", "cat", "dog"] and sem.num_classes == 3
    _, mask = sem[0]
    assert mask.dtype == torch.int64
    assert mask[4, 4] == 2 and mask[3, 22] == 1 and mask[0, 0] == 0
    assert (mask[15:19, 0:5] == 255).all()  # crowd -> ignore


def test_coco_compressed_rle(tmp_path):
    from pycocotools import mask as mask_utils

    m = np.zeros((20, 30), np.uint8, order="F")
    m[5:10, 5:15] = 1
    rle = mask_utils.encode(m)
    rle["counts"] = rle["counts"].decode("ascii")
    root, ann = _write_coco(tmp_path, [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [5, 5, 10, 5],
                                       "iscrowd": 0, "segmentation": rle}])
    _, target = CocoInstances(root, ann)[0]
    assert torch.equal(target["masks"][0], torch.from_numpy(np.ascontiguousarray(m)))


def test_coco_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoInstances(tmp_path, tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoInstances(tmp_path, tmp_path / "bad.json")
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="'annotations'"):
        CocoInstances(tmp_path, tmp_path / "x.json")


def test_mask_folder_palette_grey_binary_and_mapping(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    labels = np.array([[0, 1], [2, 255]], np.uint8).repeat(4, 0).repeat(4, 1)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im" / "a.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im" / "b.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im" / "c.png")  # no mask
    pal = Image.fromarray(labels, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [9] * (256 * 3 - 9))
    pal.save(tmp_path / "gt" / "a.png")
    Image.fromarray((labels > 0).astype(np.uint8) * 255).save(tmp_path / "gt" / "b.png")  # grey 0/255
    ds = MaskFolder(tmp_path / "im", tmp_path / "gt", num_classes=3)
    assert len(ds) == 2 and ds.missing_masks == [str(tmp_path / "im" / "c.png")]
    image, mask = ds[0]
    assert image.shape == (3, 8, 8) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(labels.astype(np.int64)))  # palette indices, not colours
    assert set(ds[1][1].unique().tolist()) == {0, 255}
    binary = MaskFolder(tmp_path / "im", tmp_path / "gt", binary=True)
    assert binary.num_classes == 2 and set(binary[1][1].unique().tolist()) == {0, 1}
    mapped = MaskFolder(tmp_path / "im", tmp_path / "gt", mapping={2: 1, 255: 0})
    assert set(mapped[0][1].unique().tolist()) == {0, 1}
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "gt" / "a.png")  # RGB mask
    with pytest.raises(ValueError, match="palette or grey"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="masks folder not found"):
        MaskFolder(tmp_path / "im", tmp_path / "missing")


def test_mask_folder_no_pairs(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im" / "a.jpg")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gt" / "b.png")
    with pytest.raises(ValueError, match="share no file stem"):
        MaskFolder(tmp_path / "im", tmp_path / "gt")


def test_shapes_deterministic_and_consistent(tmp_path):
    a, la, inst = render(3, 64, seed=1)
    b, lb, _ = render(3, 64, seed=1)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, render(4, 64, seed=1)[0])
    for i in inst:  # instance masks agree with the semantic map
        assert (la[i["mask"]] == i["label"] + 1).all()
    sem = Shapes(tmp_path / "s", "train", CLASS_MAP, num_train=6, num_val=2, size=64)
    ins = Shapes(tmp_path / "s", "val", INSTANCE_MASKS, num_train=6, num_val=2, size=64)
    assert len(sem) == 6 and len(ins) == 2 and sem.num_classes == 4 and ins.num_classes == 3
    assert ins.classes == ["circle", "square", "triangle"]
    assert (tmp_path / "s" / "train" / "instances.json").is_file()
    _, mask = sem[0]
    assert np.array_equal(mask.numpy(), render(0, 64, seed=0)[1])
    image, target = ins[0]
    assert len(target["labels"]) == target["masks"].shape[0] > 0
    # regenerating with other settings replaces the files
    Shapes(tmp_path / "s", "train", num_train=3, num_val=1, size=64)
    assert len(list((tmp_path / "s" / "train" / "images").iterdir())) == 3


def test_build_dataset_from_config(tmp_path):
    cfg = {"type": "shapes", "root": str(tmp_path / "s"), "train": {"num_train": 4, "num_val": 2, "size": 64},
           "val": {"num_train": 4, "num_val": 2, "size": 64}, "augment": {"size": 48}, "ignore_index": 255}
    ds = build_dataset(data_config(cfg), "train", CLASS_MAP)
    image, mask = ds[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32 and mask.shape == (48, 48)
    val = build_dataset(data_config(cfg), "val", BOXES)
    _, target = val[0]
    assert "masks" not in target and target["boxes"].shape[1] == 4
    with pytest.raises(ValueError, match="unknown data.type"):
        build_dataset(data_config({**cfg, "type": "kitti"}), "train", CLASS_MAP)
    with pytest.raises(ValueError, match="unknown arguments"):
        build_dataset(data_config({**cfg, "train": {"sise": 3}}), "train", CLASS_MAP)


def test_missing_pycocotools_names_the_extra(tmp_path, monkeypatch):
    import sys

    root, ann = _write_coco(tmp_path, [])
    monkeypatch.setitem(sys.modules, "pycocotools", None)
    with pytest.raises(ImportError, match=r"segzoo\[coco\]"):
        CocoInstances(root, ann)
    assert len(CocoInstances(root, ann, with_masks=False)) == 1  # boxes only: no pycocotools needed
