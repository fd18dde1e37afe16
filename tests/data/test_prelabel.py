"""Pre-labels (segzoo infer --to): predictions written as annotations and read back by segzoo's own readers."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from PIL import Image

import segzoo
from segzoo.data.prelabel import Predictions, write_prelabels
from segzoo.data.sources import open_splits
from segzoo.data.targets import CLASS_MAP, INSTANCE_MASKS, SEGMENTS
from segzoo.slicing import CropMasks

pytest.importorskip("pycocotools", reason="COCO polygons are rasterised with pycocotools")
H, W = 40, 48


def _image(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
    return path


def _instance_result():
    """Five detections: a square, a ring (a hole), two parts, one below the threshold, one with an empty mask."""
    masks = np.full((5, H, W), 0.1, np.float32)
    masks[0, 5:15, 5:15] = 0.9
    masks[1, 20:35, 20:35] = 0.8
    masks[1, 25:30, 25:30] = 0.2  # the hole
    masks[2, 2:6, 30:34] = 0.7
    masks[2, 10:14, 40:46] = 0.7
    masks[3, 30:38, 2:10] = 0.9
    return {"boxes": torch.tensor([[5, 5, 15, 15], [20, 20, 35, 35], [30, 2, 46, 14], [2, 30, 10, 38],
                                   [1.5, 2.5, 9.0, 11.0]], dtype=torch.float32),
            "scores": torch.tensor([0.95, 0.9, 0.8, 0.3, 0.6]), "labels": torch.tensor([0, 1, 0, 1, 1]),
            "masks": torch.from_numpy(masks)[:, None]}


def _expected(result):
    m = result["masks"][:, 0].numpy() >= 0.5
    box = np.zeros((H, W), bool)
    box[3:11, 2:9] = True  # the box [1.5, 2.5, 9, 11] rasterised at pixel centres
    # (label, pixels, score) best first; the 0.3 detection is below --score-thresh
    return [(0, m[0], 0.95), (1, m[1], 0.9), (0, m[2], 0.8), (1, None, 0.6)], box


def _read(dst, target=INSTANCE_MASKS):
    _, parts = open_splits(dst, "auto", target)
    [(_, ds)] = parts
    return ds


@pytest.fixture
def predictions(tmp_path):
    p = Predictions(INSTANCE_MASKS, ["cat", "dog"], score_thresh=0.5)
    p.add(_image(tmp_path / "a.png"), _instance_result())
    return p


@pytest.mark.parametrize("to", ["coco", "labelme", "cvat"])
def test_instance_prelabels_round_trip_with_their_scores(predictions, tmp_path, to):
    dst = tmp_path / to
    report = write_prelabels(predictions, dst, to)
    assert report.splits["train"] == (1, 4)
    ds = _read(dst)
    assert ds.object_classes == ["cat", "dog"] and len(ds) == 1
    objs = ds.objects(0, H, W)
    expected, box = _expected(_instance_result())
    assert [o.label for o in objs] == [e[0] for e in expected]
    for o, (_, pixels, _) in zip(objs[:3], expected):
        assert np.array_equal(o.pixels(H, W), pixels)  # traced polygons (and the ring's mask) give the same pixels
    assert np.allclose(objs[3].xyxy(H, W), [1.5, 2.5, 9.0, 11.0])  # an empty mask: its box
    if to == "coco":
        doc = json.loads((dst / "annotations" / "instances_train.json").read_text())
        scores = [a["score"] for a in doc["annotations"]]
        assert isinstance(doc["annotations"][0]["segmentation"], list)  # polygons, editable in the tools
        assert isinstance(doc["annotations"][1]["segmentation"], dict)  # the ring: RLE
    elif to == "labelme":
        doc = json.loads((dst / "a.json").read_text())
        seen = {}
        for s in doc["shapes"]:
            seen.setdefault((s["label"], s["group_id"], s["score"]), s["shape_type"])
        scores = [k[2] for k in seen]
        assert list(seen.values()) == ["polygon", "mask", "polygon", "rectangle"]
        assert sum(s["group_id"] is not None for s in doc["shapes"]) == 2  # the two parts are one group
    else:
        root = ET.parse(dst / "annotations.xml").getroot()
        els = list(root.find("image"))
        assert [e.tag for e in els] == ["polygon", "mask", "polygon", "polygon", "box"]
        assert all(e.get("source") == "auto" for e in els)
        scores = list(dict.fromkeys(float(e.find("attribute[@name='score']").text) for e in els))
        assert root.findtext("meta/task/name") == "cvat"
        declared = root.findall(".//labels/label/attributes/attribute/name")
        assert [d.text for d in declared] == ["score", "score"]
    assert scores == pytest.approx([0.95, 0.9, 0.8, 0.6])


def test_yolo_prelabels_split_parts_and_fill_holes(predictions, tmp_path):
    report = write_prelabels(predictions, tmp_path / "yolo", "yolo")
    assert report.parts_split == 1 and report.holes_filled == 1 and report.boxes_as_rectangles == 1
    assert any("no place for scores" in n for n in report.notes)
    objs = _read(tmp_path / "yolo").objects(0, H, W)
    expected, _ = _expected(_instance_result())
    m = _instance_result()["masks"][:, 0].numpy() >= 0.5
    ring = m[1].copy()
    ring[25:30, 25:30] = True
    assert [o.label for o in objs] == [0, 1, 0, 0, 1]
    assert np.array_equal(objs[0].pixels(H, W), m[0]) and np.array_equal(objs[1].pixels(H, W), ring)
    assert np.array_equal(objs[2].pixels(H, W) | objs[3].pixels(H, W), m[2])


def test_instance_prelabels_as_label_maps(predictions, tmp_path):
    write_prelabels(predictions, tmp_path / "mf", "mask_folder")
    ds = _read(tmp_path / "mf", CLASS_MAP)
    labels = ds[0][1].numpy()
    m = _instance_result()["masks"][:, 0].numpy() >= 0.5
    _, box = _expected(_instance_result())
    shapes = [(m[1], 1), (m[0], 0), (m[2], 0), (box, 1)]
    expected = np.zeros((H, W), np.int64)
    for pixels, lab in sorted(shapes, key=lambda s: -int(s[0].sum())):  # painted largest first
        expected[pixels] = lab + 1
    assert ds.classes == ["background", "cat", "dog"] and np.array_equal(labels, expected)


def _label_map():
    labels = np.zeros((H, W), np.int64)
    labels[4:20, 4:30] = 1
    labels[8:12, 8:12] = 0  # a hole in class 1
    labels[25:38, 10:40] = 2
    labels[30:34, 15:20] = 1  # a second part of class 1, inside class 2
    return labels


@pytest.mark.parametrize("to", ["coco", "labelme", "cvat", "mask_folder"])
def test_semantic_prelabels_round_trip_to_the_same_label_map(tmp_path, to):
    p = Predictions(CLASS_MAP, ["background", "road", "car"])
    labels = _label_map()
    p.add(_image(tmp_path / "s.png"), {"mask": torch.from_numpy(labels)})
    write_prelabels(p, tmp_path / to, to)
    ds = _read(tmp_path / to, CLASS_MAP)
    assert ds.classes == ["background", "road", "car"]
    assert np.array_equal(ds[0][1].numpy(), labels)


def test_prelabels_refuse_a_used_folder_and_leave_nothing_half_written(predictions, tmp_path, monkeypatch):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    with pytest.raises(FileExistsError, match="not empty"):
        write_prelabels(predictions, tmp_path / "used", "coco")
    import segzoo.data.convert as convert  # the one folder writer behind data convert and the pre-labels

    monkeypatch.setattr(convert, "write", lambda *a: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        write_prelabels(predictions, tmp_path / "new", "coco")
    assert not (tmp_path / "new").exists() and not (tmp_path / ".new.partial").exists()
    with pytest.raises(ValueError, match="semantic, detection and instance"):
        Predictions(SEGMENTS, ["a"])


def test_segzoo_infer_to_labelme_writes_what_the_model_predicts(tmp_path, capsys):
    from segzoo.cli import main as cli

    torch.manual_seed(0)
    model = segzoo.build("unet", num_classes=3, channels=[8, 16]).eval()
    segzoo.save(model, tmp_path / "m.safetensors", classes=["background", "road", "car"])
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "one.png")
    _image(images / "two.png")
    out = tmp_path / "out"
    assert cli(["infer", str(tmp_path / "m.safetensors"), str(images), "--out", str(out), "--to", "labelme"]) == 0
    assert "converted semantic predictions -> labelme" in capsys.readouterr().out
    ds = _read(out / "prelabels_labelme", CLASS_MAP)
    assert sorted(ds.item_name(i) for i in range(len(ds))) == ["one.json", "two.json"]
    for i in range(len(ds)):
        expected = segzoo.predict(model, str(images / ds.image_path(i).name))["mask"].numpy()
        assert np.array_equal(ds[i][1].numpy(), expected)
    assert cli(["infer", str(tmp_path / "m.safetensors"), str(images), "--out", str(out), "--to", "labelme"]) == 2
    assert "holds pre-labels already" in capsys.readouterr().err


@pytest.mark.slow  # ~20 s on one shared core: a Mask R-CNN is built, loaded and run twice
def test_segzoo_infer_to_coco_keeps_an_instance_models_detections(tmp_path, capsys):
    from segzoo.cli import main as cli

    torch.manual_seed(0)
    model = segzoo.build("maskrcnn_resnet18_fpn", num_classes=2).eval()
    segzoo.save(model, tmp_path / "m.safetensors", classes=["tree", "roof"])
    image = _image(tmp_path / "aerial.png")
    out = tmp_path / "out"
    args = ["infer", str(tmp_path / "m.safetensors"), str(image), "--out", str(out), "--to", "coco",
            "--score-thresh", "0.05"]
    assert cli(args) == 0
    expected = segzoo.predict(segzoo.load(tmp_path / "m.safetensors"), str(image))
    keep = torch.argsort(expected["scores"], descending=True)
    keep = keep[expected["scores"][keep] >= 0.05]
    assert len(keep) > 0
    doc = json.loads((out / "prelabels_coco" / "annotations" / "instances_train.json").read_text())
    assert [c["name"] for c in doc["categories"]] == ["tree", "roof"]
    assert [a["score"] for a in doc["annotations"]] == pytest.approx(expected["scores"][keep].tolist(), abs=1e-4)
    objs = _read(out / "prelabels_coco").objects(0, H, W)
    assert [o.label for o in objs] == expected["labels"][keep].tolist()
    for o, k in zip(objs, keep.tolist()):
        m = expected["masks"][k].numpy() >= 0.5
        if m.any():
            assert np.array_equal(o.pixels(H, W), m)


@pytest.mark.slow  # ~30 s on one shared core: a Mask R-CNN runs on the tiles twice
def test_segzoo_infer_tiled_instance_prelabels_are_the_sliced_predictions(tmp_path):
    """`segzoo infer --tile --overlap --merge nms --to coco`: the crop masks of sliced inference reach the
    pre-labels at the image's pixels (polygons shifted from the crops)."""
    from segzoo.cli import main as cli

    torch.manual_seed(0)
    model = segzoo.build("maskrcnn_resnet18_fpn", num_classes=2, box_score_thresh=0.0,
                         box_detections_per_img=5).eval()
    segzoo.save(model, tmp_path / "m.safetensors", classes=["tree", "roof"])
    image = _image(tmp_path / "aerial.png")
    out = tmp_path / "out"
    assert cli(["infer", str(tmp_path / "m.safetensors"), str(image), "--out", str(out), "--to", "coco",
                "--score-thresh", "0.0", "--tile", "24", "--overlap", "0.25", "--merge", "nms"]) == 0
    expected = segzoo.predict(segzoo.load(tmp_path / "m.safetensors"), str(image), tile=24, overlap=0.25,
                              merge="nms")
    assert len(expected["boxes"]) > 1 and isinstance(expected["masks"], CropMasks)
    objs = _read(out / "prelabels_coco").objects(0, H, W)
    assert [o.label for o in objs] == expected["labels"].tolist()
    for o, k in zip(objs, range(len(objs))):
        m = expected["masks"].mask(k).numpy()
        if m.any():
            assert np.array_equal(o.pixels(H, W), m)
