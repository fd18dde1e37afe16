"""``segzoo data convert``: round trips between formats keep pixels, class names, ids and crowd regions."""

import json

import numpy as np
import pytest

from segzoo.data import YOLO, CocoInstances, LabelMe, MaskFolder
from segzoo.data.contours import mask_to_polygons, polygon_area
from segzoo.data.convert import convert
from segzoo.data.formats.cvat import CVAT
from segzoo.data.formats.voc import VOC
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS
from tests.data_layouts import write_cvat, write_labelme, write_voc, write_yolo

pytest.importorskip("pycocotools")


def _masks(ds, i):
    return ds[i][1]["masks"].numpy().astype(bool)


def test_contours_trace_pixels_exactly():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(5, 30, 2)
        m = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        outers, holes = mask_to_polygons(m)
        area = sum(polygon_area(p) for p in outers) - sum(polygon_area(p) for p in holes)
        assert area == m.sum()
        if not holes:  # outlines along pixel edges rasterise back to the same pixels
            rle = mask_utils.merge(mask_utils.frPyObjects([p.reshape(-1).tolist() for p in outers], h, w))
            assert np.array_equal(mask_utils.decode(rle).astype(bool), m)
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8], ring[3:6, 3:6] = True, False
    outers, holes = mask_to_polygons(ring)
    assert len(outers) == 1 and len(holes) == 1 and polygon_area(holes[0]) == 9


def test_labelme_to_coco_keeps_polygons_classes_and_crowd(tmp_path):
    src = write_labelme(tmp_path / "lm")
    report = convert(src, tmp_path / "coco", "coco")
    assert report.classes == ["cat", "dog"] and report.crowd_kept == 1 and report.splits == {"train": (2, 6)}
    doc = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())
    assert doc["categories"] == [{"id": 1, "name": "cat", "supercategory": ""},
                                 {"id": 2, "name": "dog", "supercategory": ""}]
    crowd = [a for a in doc["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1 and isinstance(crowd[0]["segmentation"], dict)  # crowd regions as RLE
    coco = CocoInstances(tmp_path / "coco" / "train", tmp_path / "coco" / "annotations" / "instances_train.json")
    lm = LabelMe(src, target=INSTANCE_MASKS)
    for i in range(2):
        assert np.array_equal(_masks(coco, i), _masks(lm, i))
        assert coco[i][1]["labels"].tolist() == lm[i][1]["labels"].tolist()
        assert np.allclose(coco[i][1]["boxes"], lm[i][1]["boxes"])
    assert coco.crowd_mask(0, 40, 48)[24, 4]


def test_polygon_mask_polygon_round_trip_through_yolo(tmp_path):
    src = write_labelme(tmp_path / "lm")
    report = convert(src, tmp_path / "yolo", "yolo")
    assert report.crowd_dropped == 1 and "dropped 1 crowd regions" in report.format()
    assert report.parts_split == 1  # the dog drawn as two polygons
    back = YOLO(tmp_path / "yolo", "train", target=INSTANCE_MASKS)
    assert back.classes == ["cat", "dog"]
    lm = LabelMe(src, target=INSTANCE_MASKS)
    got, want = _masks(back, 0), _masks(lm, 0)
    labels = back[0][1]["labels"].tolist()
    assert labels == [0, 1, 1, 1, 0]  # the dog's two parts are two YOLO objects
    # polygon -> normalised YOLO polygon -> mask: within one pixel of area per polygon edge
    merged = [got[0], got[1], got[2] | got[3], got[4]]
    for g, w_, edges in zip(merged, want, [4, 4, 3 + 4, 64]):
        assert abs(int(g.sum()) - int(w_.sum())) <= edges and (g & w_).sum() / (g | w_).sum() > 0.9
    # masks (from a mask shape) are traced to polygons that rasterise to the same pixels
    assert np.array_equal(_masks(back, 1), _masks(lm, 1))


def test_voc_masks_to_yolo_and_back_exactly(tmp_path):
    voc = write_voc(tmp_path)
    report = convert(voc, tmp_path / "yolo", "yolo")
    assert set(report.splits) == {"train", "val"} and report.splits["train"] == (2, 4)
    back = YOLO(tmp_path / "yolo", "val", target=INSTANCE_MASKS)
    src = VOC(voc, "val", target=INSTANCE_MASKS)
    assert back.classes == src.classes
    assert np.array_equal(_masks(back, 0), _masks(src, 0))
    assert back[0][1]["labels"].tolist() == src[0][1]["labels"].tolist()

    convert(voc, tmp_path / "yolo_simple", "yolo", tolerance=1.0)
    simple = YOLO(tmp_path / "yolo_simple", "val", target=INSTANCE_MASKS)
    for a, b in zip(_masks(simple, 0), _masks(src, 0)):
        outers, _ = mask_to_polygons(b, 1.0)
        assert abs(int(a.sum()) - int(b.sum())) <= sum(len(p) for p in outers)

    convert(voc, tmp_path / "det", "yolo", read=BOXES)
    det = YOLO(tmp_path / "det", "train", target=BOXES)
    assert np.allclose(det[0][1]["boxes"], [[6, 5, 20, 15], [25, 20, 41, 35]], atol=1e-3)


def test_cvat_to_mask_folder_keeps_labels_and_ignore(tmp_path):
    src = write_cvat(tmp_path / "cvat")
    report = convert(src, tmp_path / "mf", "mask_folder")
    assert report.ignore_images == 2
    names = (tmp_path / "mf" / "classes.txt").read_text().split()
    assert names == ["background", "car", "person", "tree"]
    mf = MaskFolder(tmp_path / "mf" / "images" / "train", tmp_path / "mf" / "masks" / "train", classes=names)
    cvat = CVAT(src, target=CLASS_MAP)
    for i in range(2):
        assert np.array_equal(mf[i][1].numpy(), cvat[i][1].numpy())
    # and back: mask folder -> COCO, one object per class region
    report = convert(tmp_path / "mf", tmp_path / "coco", "coco")
    assert report.classes == ["car", "person", "tree"] and report.splits["train"][1] == 6


def test_yolo_coco_yolo_keeps_names_and_ids(tmp_path):
    src = write_yolo(tmp_path / "y", segment=False)
    convert(src, tmp_path / "coco", "coco")
    doc = json.loads((tmp_path / "coco" / "annotations" / "instances_val.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["square", "triangle"]
    assert sorted(a["category_id"] for a in doc["annotations"]) == [1, 2]
    convert(tmp_path / "coco", tmp_path / "y2", "yolo")
    a, b = YOLO(src, "train", target=BOXES), YOLO(tmp_path / "y2", "train", target=BOXES)
    assert b.classes == a.classes and len(b) == len(a)
    for i in range(len(a)):
        assert a[i][1]["labels"].tolist() == b[i][1]["labels"].tolist()
        assert np.allclose(a[i][1]["boxes"], b[i][1]["boxes"], atol=1e-3)


def test_convert_refuses_and_leaves_nothing_half_written(tmp_path, capsys):
    from segzoo.cli import main as cli

    def main(argv):
        return cli(["data", "convert", *argv])

    src = write_yolo(tmp_path / "y")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    assert main([str(src), str(tmp_path / "full"), "--to", "coco"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    (src / "labels" / "val" / "val_0.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    assert main([str(src), str(tmp_path / "out"), "--to", "coco"]) == 2
    assert "class 7" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    assert main([str(src), str(tmp_path / "out"), "--to", "mask_folder", "--split", "train"]) == 0
    assert "converted yolo -> mask_folder" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["train"]


def test_segzoo_data_convert_command(tmp_path, capsys):
    from segzoo.cli import main as cli

    src = write_labelme(tmp_path / "lm")
    assert cli(["data", "convert", str(src), str(tmp_path / "y"), "--to", "yolo", "--simplify", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "converted labelme -> yolo" in out and "classes (2, in id order): cat, dog" in out
    assert (tmp_path / "y" / "data.yaml").read_text().startswith("train: images/train")
    assert cli(["data", "convert", str(src), str(tmp_path / "z"), "--to", "yolo", "--from", "voc"]) == 2
    assert "no JPEGImages" in capsys.readouterr().err
