"""Format readers on tiny files in each tool's own layout: Pascal VOC, YOLO, LabelMe, CVAT; ``data.type: auto``."""

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.data import CVAT, VOC, YOLO, LabelMe, build_dataset, check_dataset, detect_format, resolve_auto
from segzoo.data.formats.voc import VOC_CLASSES
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS
from tests.data_layouts import (
    CVAT_MASK,
    VOC_OBJECTS,
    H,
    W,
    data_config,
    labelme_shape,
    rgb,
    write_cvat,
    write_labelme,
    write_voc,
    write_yolo,
)

pytest.importorskip("pycocotools")


# ---------------------------------------------------------------------------------------------- VOC
def test_voc_semantic_instance_and_detection(tmp_path):
    voc = write_voc(tmp_path)
    sem = VOC(tmp_path / "VOCdevkit", "train", target=CLASS_MAP)  # VOCdevkit resolves to VOC2012
    assert len(sem) == 2 and sem.classes[0] == "background" and sem.classes[1:] == list(VOC_CLASSES)
    image, mask = sem[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    assert mask[10, 10] == 8 and mask[25, 30] == 15 and mask[0, 0] == 0
    assert mask[4, 10] == 255  # the void border stays ignore

    inst = VOC(voc, "val", target=INSTANCE_MASKS)
    _, t = inst[0]
    assert t["labels"].tolist() == [7, 14]  # cat, person: 0-based object classes
    assert t["boxes"].tolist() == [[6, 5, 20, 15], [25, 20, 41, 35]]
    assert t["masks"].shape == (2, H, W) and t["masks"][0].sum() == 10 * 14

    det = VOC(voc, "train", target=BOXES)
    _, t = det[1]
    assert det.classes == list(VOC_CLASSES)
    # 1-based inclusive pixel indices -> continuous xyxy: the same boxes as the masks; difficult bottle left out
    assert t["boxes"].tolist() == [[6, 5, 20, 15], [25, 20, 41, 35]] and "masks" not in t
    _, t = VOC(voc, "train", target=BOXES, use_difficult=True)[0]
    assert t["labels"].tolist() == [7, 14, 4] and t["boxes"][2].tolist() == [39, 1, 46, 12]


def test_voc_custom_classes_rgb_masks_and_errors(tmp_path):
    voc = write_voc(tmp_path)
    # CVAT's "Segmentation mask 1.1" export: labelmap.txt and RGB masks in those colours
    (voc / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nleaf:10,200,30::\n")
    m = np.zeros((H, W, 3), np.uint8)
    m[5:9, 5:9] = (10, 200, 30)
    m[0, :] = (224, 224, 192)  # VOC's void colour
    Image.fromarray(m).save(voc / "SegmentationClass" / "2007_000032.png")
    ds = VOC(voc, "train", target=CLASS_MAP)
    assert ds.classes == ["background", "leaf"]
    _, mask = ds[0]
    assert mask[6, 6] == 1 and mask[0, 3] == 255 and mask[20, 20] == 0
    m[30, 30] = (1, 2, 3)
    Image.fromarray(m).save(voc / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(ValueError, match=r"colours \[\(1, 2, 3\)\].*labelmap.txt"):
        ds[0]
    with pytest.raises(FileNotFoundError, match="splits here: .*train.*val"):
        VOC(voc, "test")
    # custom detection classes (labelImg): names not in VOC are taken from the files, and the check says so
    det = VOC(tmp_path / "VOCdevkit", "train", target=BOXES, classes=["cat", "person"])
    report = check_dataset(det, num_classes=2)
    assert any("bottle" in e for e in report.errors)  # an object name outside the classes


# ---------------------------------------------------------------------------------------------- YOLO
@pytest.mark.parametrize("names_as_dict", [True, False])
def test_yolo_segmentation_and_detection(tmp_path, names_as_dict):
    root = write_yolo(tmp_path / "seg", segment=True, names_as_dict=names_as_dict)
    ds = YOLO(root, "train", target=INSTANCE_MASKS)
    assert ds.classes == ["square", "triangle"] and len(ds) == 3  # two labelled images and a negative
    _, t = ds[1]
    assert t["labels"].tolist() == [1, 0]
    assert np.allclose(t["boxes"].tolist(), [[12, 4, 30, 20], [5, 24, 17, 36]], atol=1e-4)
    assert t["masks"][1, 26:34, 7:15].all() and t["masks"][1].sum() == 12 * 12
    _, t = ds[0]  # negative.jpg sorts first: no label file, no objects
    assert t["boxes"].shape == (0, 4)
    _, sem = YOLO(root, "val", target=CLASS_MAP)[0]
    assert sem[30, 10] == 1 and sem[10, 21] == 2 and sem[0, 0] == 0

    det = YOLO(write_yolo(tmp_path / "det", segment=False), "val", target=BOXES)
    _, t = det[0]
    assert np.allclose(t["boxes"].tolist(), [[12, 4, 30, 20], [5, 24, 17, 36]], atol=1e-4)


def test_yolo_bad_labels_say_where(tmp_path):
    root = write_yolo(tmp_path)
    label = root / "labels" / "val" / "val_0.txt"
    for line, match in (("5 0.5 0.5 0.1 0.1", r"val_0.txt:1: class 5 is not an id in 0..1"),
                        ("0 12 14 30 20", "not normalised"),
                        ("0 0.5 0.5 0.1", "3 coordinates"),
                        ("cat 0.5 0.5 0.1 0.1", "not numbers")):
        label.write_text(line + "\n")
        with pytest.raises(ValueError, match=match):
            YOLO(root, "val")[0]
        report = check_dataset(YOLO(root, "val"), num_classes=2)
        assert not report.ok and "cannot be read" in report.errors[0]
    with pytest.raises(ValueError, match="no 'test' split; it has \\['train', 'val'\\]"):
        YOLO(root, "test")
    (tmp_path / "pose.yaml").write_text("train: images/train\nkpt_shape: [17, 3]\nnames: [person]\n")
    with pytest.raises(ValueError, match="pose"):
        YOLO(tmp_path / "pose.yaml")
    for p in (root / "labels" / "train").iterdir():
        p.unlink()
    report = check_dataset(YOLO(root, "train"), num_classes=2)
    assert any("has a label file" in e for e in report.errors)


# ---------------------------------------------------------------------------------------------- LabelMe
def test_labelme_shapes_groups_ignore_and_embedded_image(tmp_path):
    root = write_labelme(tmp_path / "lm")
    ds = LabelMe(root, target=INSTANCE_MASKS)
    assert ds.classes == ["cat", "dog"] and ds.classes_inferred
    image, t = ds[0]
    assert image.shape == (3, H, W)
    # cat polygon, dog rectangle, the grouped dog (two polygons -> one object), cat circle; line and ignore out
    assert t["labels"].tolist() == [0, 1, 1, 0]
    assert t["boxes"][1].tolist() == [30, 30, 44, 38] and t["boxes"][2].tolist() == [26, 4, 44, 12]
    m = t["masks"]
    assert m[2, 8, 40] and m[2, 5, 31] and not m[2, 8, 35]  # both parts, not the gap between them
    assert abs(int(m[3].sum()) - np.pi * 36) < 8  # the circle of radius 6
    _, sem = LabelMe(root, target=CLASS_MAP)[0]
    assert (sem[21:27, 1:7] == 255).all() and sem[10, 10] == 1 and sem[34, 40] == 2

    image, t = ds[1]  # b.json: image embedded in imageData, a mask shape
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(rgb(seed=2)))
    assert t["boxes"].tolist() == [[12, 21, 18, 25]] and t["masks"][0].sum() == 24

    (tmp_path / "labels.txt").write_text("__ignore__\n_background_\ndog\ncat\nbird\n")
    ds = LabelMe(root, target=BOXES)
    assert ds.classes == ["dog", "cat", "bird"] and not ds.classes_inferred
    report = check_dataset(ds, num_classes=3)
    assert report.ok and any("1 line" in w for w in report.warnings) and any("bird" in w for w in report.warnings)


# ---------------------------------------------------------------------------------------------- CVAT
def test_cvat_task_export(tmp_path):
    root = write_cvat(tmp_path / "cvat")
    ds = CVAT(root, target=INSTANCE_MASKS)
    assert ds.classes == ["car", "person", "tree"] and len(ds) == 2
    _, t = ds[0]
    # box, polygon, mask, the person group (polygon + box), ellipse; crowd polygon, polyline and tag out
    assert t["labels"].tolist() == [0, 1, 2, 1, 2]
    assert t["boxes"][0].tolist() == [2.5, 3.0, 12.0, 9.5]
    full = np.zeros((H, W), bool)
    full[25:28, 30:34] = CVAT_MASK
    assert np.array_equal(t["masks"][2].numpy().astype(bool), full)  # the rle decoded exactly
    assert t["boxes"][3].tolist() == [2, 20, 14, 30]
    assert t["masks"][3, 25, 12] and t["masks"][3, 22, 6]
    _, sem = CVAT(root, target=CLASS_MAP)[0]
    assert sem[5, 44] == 255  # the crowd polygon is ignored
    report = check_dataset(CVAT(root, target=INSTANCE_MASKS), num_classes=3)
    assert not report.ok and any("no polygon or mask" in e for e in report.errors)  # a lone box in an instance task
    assert any("2 polyline" in w and "2 tag" in w for w in report.warnings)
    assert check_dataset(CVAT(root, target=BOXES), num_classes=3).ok


def test_cvat_project_subsets_and_errors(tmp_path):
    root = write_cvat(tmp_path / "p", project=True)
    train = CVAT(root, target=BOXES, subset="Train")
    assert len(train) == 1 and train.image_path(0) == root / "images" / "Train" / "frame_000000.png"
    assert train[0][0].shape == (3, H, W)
    with pytest.raises(ValueError, match="subsets: \\['Train', 'Validation'\\]"):
        CVAT(root, subset="Test")
    (tmp_path / "bad.xml").write_text("<annotations><image id='0' name='x.png' width='4' height='4'>"
                                      "<polygon label='ghost' points='0,0;1,0;1,1'/></image></annotations>")
    ds = CVAT(tmp_path / "bad.xml", classes=["car"])
    assert any("ghost" in p for p in ds.problems)
    with pytest.raises(ValueError, match="'ghost' is not one of the classes"):
        ds.objects(0, 4, 4)


# ---------------------------------------------------------------------------------------------- auto
def test_detect_format_recognises_each_layout(tmp_path):
    import json

    write_voc(tmp_path / "voc")
    write_yolo(tmp_path / "yolo")
    write_labelme(tmp_path / "labelme")
    write_cvat(tmp_path / "cvat")
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []}))
    (tmp_path / "masks" / "images").mkdir(parents=True)
    (tmp_path / "masks" / "masks").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "masks" / "a.png")
    for name in ("voc", "yolo", "labelme", "cvat", "coco"):
        assert detect_format(tmp_path / name) == name
    assert detect_format(tmp_path / "masks") == "mask_folder"
    assert detect_format(tmp_path / "yolo" / "data.yaml") == "yolo"
    assert detect_format(tmp_path / "labelme" / "a.json") == "labelme"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no known layout fits(.|\n)*voc: no \(no JPEGImages/\)"):
        detect_format(tmp_path / "empty")
    write_cvat(tmp_path / "yolo")  # now two layouts in one folder
    with pytest.raises(ValueError, match="several layouts fit .*yolo, cvat|several layouts fit .*cvat, yolo"):
        detect_format(tmp_path / "yolo")


def test_build_dataset_registered_types_and_auto(tmp_path):
    voc = write_voc(tmp_path / "voc")
    write_yolo(tmp_path / "yolo")
    cfg = {"type": "voc", "train": {"root": str(voc)}, "val": {"root": str(voc)}, "ignore_index": 255}
    ds = build_dataset(data_config(cfg), "val", INSTANCE_MASKS, with_transforms=False)
    assert isinstance(ds, VOC) and ds.target is INSTANCE_MASKS and ds.split == "val"
    ds = build_dataset(data_config({**cfg, "type": "auto"}), "train", BOXES, with_transforms=False)
    assert isinstance(ds, VOC) and ds.target is BOXES and len(ds) == 2
    ds = build_dataset(data_config({"type": "auto", "val": {"root": str(tmp_path / "yolo")}}), "val", CLASS_MAP,
                       with_transforms=False)
    assert isinstance(ds, YOLO) and ds.classes == ["background", "square", "triangle"]
    ds = build_dataset(data_config({"type": "yolo", "train": {"root": str(tmp_path / "yolo")}, "classes": ["a", "b"]}),
                       "train", BOXES)
    assert ds.classes == ["a", "b"]
    image, target = ds[1]
    assert image.dtype == torch.float32 and target["boxes"].shape == (2, 4)  # the task's transforms ran
    with pytest.raises(ValueError, match="data.type ade20k gives semantic data but the model's task is instance"):
        build_dataset(data_config({"type": "ade20k", "train": {"root": str(tmp_path)}}), "train", INSTANCE_MASKS)


def test_check_reports_class_count_and_boxes(tmp_path):
    root = write_labelme(tmp_path / "lm")
    report = check_dataset(LabelMe(root, target=INSTANCE_MASKS), num_classes=1)
    assert any("set model.num_classes=2" in e for e in report.errors)
    assert any("class names were taken from the labels found" in w for w in report.warnings)
    import json

    doc = json.loads((root / "a.json").read_text())
    doc["shapes"] = [labelme_shape("cat", [(60, 4), (90, 4), (90, 16)])]  # outside the 48 px wide image
    (root / "a.json").write_text(json.dumps(doc))
    report = check_dataset(LabelMe(root, target=BOXES), num_classes=2)
    assert any("outside their image" in e for e in report.errors)
    assert VOC_OBJECTS  # the layouts module is shared with the benchmark tests


def test_auto_parses_each_json_once(tmp_path, monkeypatch):
    """Recognising a COCO folder asks about its json for instances, panoptic, LabelMe and the split's
    arguments; each file is parsed once (a COCO json can be hundreds of MB), and again when it changes."""
    import json

    import segzoo.data.formats.detect as formats

    (tmp_path / "annotations").mkdir()
    (tmp_path / "train").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "train" / "a.png")
    ann = tmp_path / "annotations" / "instances_train.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    parsed = []
    load = json.load
    monkeypatch.setattr(formats.json, "load", lambda f, **kw: (parsed.append(f.name), load(f, **kw))[1])
    assert resolve_auto(tmp_path, "train") == ("coco", {"root": tmp_path / "train", "ann_file": ann})
    assert parsed == [str(ann)]
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x", "isthing": 1}]}))
    assert detect_format(tmp_path) == "coco_panoptic" and parsed == [str(ann)] * 2  # changed: read again
