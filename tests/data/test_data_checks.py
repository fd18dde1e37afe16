"""Data checks report every malformed case, and refuse data with errors."""

import json

import numpy as np
import pytest
from PIL import Image

from segzoo.data import CocoInstances, CocoSemantic, DataError, MaskFolder, Shapes, check_dataset
from segzoo.data.targets import CLASS_MAP, INSTANCE_MASKS


def _folder(tmp_path, masks: dict):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    for stem, m in masks.items():
        Image.fromarray(np.zeros((*m.shape, 3), np.uint8)).save(tmp_path / "im" / f"{stem}.jpg")
        Image.fromarray(m.astype(np.uint8)).save(tmp_path / "gt" / f"{stem}.png")
    return tmp_path / "im", tmp_path / "gt"


def test_mask_folder_good_data_passes(tmp_path):
    m = np.zeros((8, 8))
    m[:4] = 1
    m[0, 0] = 255
    report = check_dataset(MaskFolder(*_folder(tmp_path, {"a": m})), num_classes=2)
    assert report.ok and report.classes_found == [0, 1]
    report.raise_if_errors()


def test_mask_folder_problems(tmp_path):
    binary = np.zeros((8, 8))
    binary[:4] = 255
    high = np.full((8, 8), 7)
    empty = np.full((8, 8), 255)
    im, gt = _folder(tmp_path, {"bin": binary, "high": high, "empty": empty})
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(im / "lonely.jpg")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gt / "orphan.png")
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(im / "orphan2.jpg")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(gt / "orphan2.png")
    ds = MaskFolder(im, gt)
    report = check_dataset(ds, num_classes=3, name="train")
    text = " | ".join(report.errors)
    assert "lonely.jpg" in text and "orphan.png" in text  # missing files both ways
    assert "only 0 and 255" in text and "data.binary=true" in text
    assert "mask value 7 is outside [0, 2]" in text and "num_classes to at least 8" in text
    assert "no labelled pixel" in text and "allow_empty" in text
    assert "differ in size" in text and "orphan2.png" in text
    with pytest.raises(DataError, match="only 0 and 255"):
        report.raise_if_errors()
    relaxed = check_dataset(ds, num_classes=3, allow_empty=True)
    assert any("no labelled pixel" in w for w in relaxed.warnings)
    # the binary option fixes the 0/255 masks
    fixed = check_dataset(MaskFolder(im, gt, binary=True), num_classes=3)
    assert not any("only 0 and 255" in e for e in fixed.errors)


def _coco(tmp_path, anns, images=None, categories=None):
    (tmp_path / "img").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "b.png")
    data = {"images": images or [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
                                 {"id": 2, "file_name": "b.png", "height": 20, "width": 30}],
            "annotations": anns, "categories": categories or [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]}
    (tmp_path / "a.json").write_text(json.dumps(data))
    return tmp_path / "img", tmp_path / "a.json"


def _ann(i, image_id, cat, bbox, segm=True):
    x, y, w, h = bbox
    out = {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, "iscrowd": 0}
    if segm:
        out["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
    return out


def test_coco_good_and_problems(tmp_path):
    good = [_ann(1, 1, 1, [1, 1, 5, 5]), _ann(2, 2, 2, [3, 3, 4, 4])]
    ok = check_dataset(CocoInstances(*_coco(tmp_path / "ok", good)), num_classes=2)
    assert ok.ok and ok.classes_found == [0, 1] and not ok.warnings
    bad = [_ann(1, 1, 1, [25, 1, 10, 5]), _ann(2, 1, 2, [3, 3, 0, 4]), _ann(5, 1, 1, [1, 1, 2, 2], segm=False)]
    images = [{"id": 1, "file_name": "a.png", "height": 20, "width": 30},
              {"id": 2, "file_name": "b.png", "height": 20, "width": 30},
              {"id": 3, "file_name": "gone.png", "height": 20, "width": 30}]
    # annotations naming unknown categories or images: refused by the dataset itself (issue 15.2)
    unknown = [*bad, _ann(3, 1, 9, [1, 1, 2, 2]), _ann(4, 99, 1, [1, 1, 2, 2])]
    with pytest.raises(DataError) as e:
        CocoInstances(*_coco(tmp_path / "unknown", unknown, images=images))
    msg = str(e.value)
    assert "category id that is not in 'categories'" in msg and "image id that is not in 'images'" in msg
    ds = CocoInstances(*_coco(tmp_path / "bad", bad, images=images))
    text = " | ".join(check_dataset(ds, num_classes=1).errors)
    assert "outside their image" in text and "zero or negative" in text
    assert "without a segmentation" in text and "gone.png" in text
    assert "has 2 object categories" in text and "model.num_classes=2" in text
    assert "no annotations: b.png" in text
    sem = check_dataset(CocoSemantic(*_coco(tmp_path / "ok", good)), num_classes=2)
    assert "3 labels including background" in " ".join(sem.errors)


def test_shapes_passes_checks(tmp_path):
    for target, n in ((CLASS_MAP, 4), (INSTANCE_MASKS, 3)):
        report = check_dataset(Shapes(tmp_path, "val", target, num_train=2, num_val=4, size=64), num_classes=n)
        assert report.ok, report.format()
