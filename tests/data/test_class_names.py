"""One meaning of data.classes for every dataset type, and class names in the data check."""

import json

import numpy as np
import pytest
from PIL import Image

from segzoo.data import CVAT, YOLO, LabelMe, build_dataset, check_dataset
from segzoo.data.records import split_classes
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS
from tests.data_layouts import data_config, write_cvat, write_labelme, write_yolo


def test_split_classes_convention():
    assert split_classes(["background", "cat", "dog"], CLASS_MAP) == (["cat", "dog"], "background")
    assert split_classes(["sky", "cat"], CLASS_MAP) == (["cat"], "sky")
    assert split_classes(["cat", "dog"], INSTANCE_MASKS) == (["cat", "dog"], None)
    assert split_classes(None, BOXES) == (None, None)
    with pytest.raises(ValueError, match="every label including background"):
        split_classes(["cat"], CLASS_MAP)
    with pytest.raises(ValueError, match="object classes only.*remove 'background'"):
        split_classes(["background", "cat"], BOXES)
    with pytest.raises(ValueError, match="twice"):
        split_classes(["cat", "cat"], INSTANCE_MASKS)


def test_semantic_classes_include_background_in_every_reader(tmp_path):
    lm = write_labelme(tmp_path / "lm")
    sem = LabelMe(lm, target=CLASS_MAP, classes=["bg", "cat", "dog"])
    assert sem.classes == ["bg", "cat", "dog"] and sem.num_classes == 3 and not sem.problems
    _, mask = sem[0]
    assert set(mask.unique().tolist()) <= {0, 1, 2, 255}
    inst = LabelMe(lm, target=INSTANCE_MASKS, classes=["cat", "dog"])
    assert inst.classes == ["cat", "dog"] and inst.num_classes == 2
    # the object names alone for a semantic task: "cat" would silently become background; it is reported
    wrong = LabelMe(lm, target=CLASS_MAP, classes=["cat", "dog"])
    assert any("prepend the background name: [background, cat, dog]" in p for p in wrong.problems)
    assert not check_dataset(wrong, num_classes=2).ok
    cvat = write_cvat(tmp_path / "cvat")
    assert CVAT(cvat, target=CLASS_MAP, classes=["background", "car", "person", "tree"]).num_classes == 4
    assert any("prepend" in p for p in CVAT(cvat, target=CLASS_MAP, classes=["car", "person", "tree"]).problems)
    with pytest.raises(ValueError, match="object classes only"):
        CVAT(cvat, target=INSTANCE_MASKS, classes=["background", "car", "person", "tree"])


def test_yolo_class_count_must_match_its_yaml(tmp_path):
    root = write_yolo(tmp_path / "yolo")
    assert YOLO(root, "train", target=CLASS_MAP, classes=["background", "sq", "tri"]).classes == ["background", "sq",
                                                                                                  "tri"]
    with pytest.raises(ValueError, match="names 1 object classes .* has 2"):
        YOLO(root, "train", target=BOXES, classes=["square"])
    cfg = data_config({"type": "yolo", "train": {"root": str(root)}, "classes": ["bg", "a", "b"]})
    ds = build_dataset(cfg, "train", CLASS_MAP, with_transforms=False)
    assert ds.classes == ["bg", "a", "b"]


def test_data_check_prints_names_and_source_ids(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    doc = {"images": [{"id": 5, "file_name": "a.png", "height": 20, "width": 20}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 12, "name": "bird"}],
           "annotations": [{"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0,
                            "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]]},
                           {"id": 2, "image_id": 5, "category_id": 12, "bbox": [12, 12, 4, 4], "area": 16,
                            "iscrowd": 0, "segmentation": [[12, 12, 16, 12, 16, 16]]}]}
    (tmp_path / "a.json").write_text(json.dumps(doc))
    cfg = {"type": "coco", "train": {"images": str(tmp_path / "img"), "annotations": str(tmp_path / "a.json")}}
    inst = check_dataset(build_dataset(data_config(cfg), "train", INSTANCE_MASKS, with_transforms=False), 3)
    assert inst.classes_found == [1, 2]
    assert "classes found: dog (source id 7), bird (source id 12)" in inst.format()
    sem = check_dataset(build_dataset(data_config(cfg), "train", CLASS_MAP, with_transforms=False), 4)
    assert "classes found: background, dog (source id 7), bird (source id 12)" in sem.format()
    yolo = check_dataset(YOLO(write_yolo(tmp_path / "yolo"), "train", target=BOXES), 2)
    assert "classes found: square (source id 0), triangle (source id 1)" in yolo.format()
    lm = check_dataset(LabelMe(write_labelme(tmp_path / "lm"), target=INSTANCE_MASKS, classes=["cat", "dog"]), 2)
    assert "classes found: cat, dog" in lm.format()


def test_data_classes_that_contradict_coco_categories_are_refused(tmp_path):
    from segzoo.config import ConfigError
    from segzoo.data.synthetic.shapes import generate

    root = generate(tmp_path / "shapes", num_train=1, num_val=1, size=32) / "val"
    cfg = {"type": "coco", "val": {"images": str(root / "images"), "annotations": str(root / "instances.json")}}
    named = data_config({**cfg, "classes": ["circle", "square", "triangle"]})
    assert build_dataset(named, "val", INSTANCE_MASKS).num_classes == 3
    with pytest.raises(ConfigError, match=r"takes its class names from its files: \['circle', 'square', 'triangle'\]"):
        build_dataset(data_config({**cfg, "classes": ["a", "b", "c"]}), "val", INSTANCE_MASKS)


def test_mask_folder_class_count_is_checked(tmp_path):
    from segzoo.data import MaskFolder

    for d in ("im", "m"):
        (tmp_path / d).mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im" / "a.png")
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8).repeat(4, 0).repeat(4, 1)).save(tmp_path / "m" / "a.png")
    ok = check_dataset(MaskFolder(tmp_path / "im", tmp_path / "m", classes=["bg", "cat", "dog"]), 3)
    assert ok.ok and "classes found: bg (source id 0), cat (source id 1), dog (source id 2)" in ok.format()
    report = check_dataset(MaskFolder(tmp_path / "im", tmp_path / "m", classes=["cat", "dog"]), 3)
    assert any("data.classes names 2 labels" in e and "background, label 0 first" in e for e in report.errors)
    # names for every label in the masks but a wider model: a warning (a head for classes to come), not an error
    wide = check_dataset(MaskFolder(tmp_path / "im", tmp_path / "m", classes=["bg", "cat", "dog"]), 5)
    assert wide.ok and any("set model.num_classes=3 unless" in w for w in wide.warnings)
