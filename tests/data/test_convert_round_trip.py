"""What segzoo writes, segzoo reads: ``data convert`` to every target gives a dataset that segzoo's own reader
(``data.type: auto``) accepts as written, for every (source, target) pair."""

import shutil

import numpy as np
import pytest
from PIL import Image

from segzoo.data import build_dataset, check_dataset, detect_format
from segzoo.data.convert import TARGETS, convert
from segzoo.tasks import get_task
from tests.data_layouts import (
    data_config,
    rgb,
    write_ade20k,
    write_cityscapes,
    write_coco,
    write_cvat,
    write_labelme,
    write_voc,
    write_yolo,
)

pytest.importorskip("pycocotools")


def _mask_folder(root):
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rgb(seed=i)).save(root / "images" / split / f"{i}.png")
            labels = np.zeros((40, 48), np.uint8)
            labels[5:20, 5:30] = 1 + i
            Image.fromarray(labels).save(root / "masks" / split / f"{i}.png")
    return root


def _single_json(root):
    coco = write_coco(root / "c", splits=(("images", 2),))
    shutil.move(coco / "annotations" / "instances_images.json", coco / "instances.json")
    return coco / "instances.json"


SOURCES = {
    "voc": lambda p: write_voc(p / "voc").parents[1],
    "yolo": lambda p: write_yolo(p / "yolo"),
    "yolo_boxes": lambda p: write_yolo(p / "yolob", segment=False),
    "labelme": lambda p: write_labelme(p / "lm"),
    "cvat": lambda p: write_cvat(p / "cvat"),
    "cvat_project": lambda p: write_cvat(p / "cvatp", project=True),
    "coco": lambda p: write_coco(p / "coco"),
    "coco_single_json": _single_json,
    "cityscapes": lambda p: write_cityscapes(p / "city"),
    "ade20k": lambda p: write_ade20k(p / "ade"),
    "mask_folder": lambda p: _mask_folder(p / "mf"),
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("source", list(SOURCES))
def test_converted_data_reads_back_as_written(source, target, tmp_path):
    src = SOURCES[source](tmp_path)
    dst = tmp_path / "out"
    if source == "ade20k" and target != "mask_folder":
        with pytest.raises(ValueError, match="no instances; convert it to mask_folder"):
            convert(src, dst, target)
        return
    report = convert(src, dst, target)
    assert detect_format(dst) == target
    task = "semantic" if target == "mask_folder" else "detection"  # every object has a box; masks: other tests
    num_classes = len(report.classes)
    for split, (images, _) in report.splits.items():
        assert split in ("train", "val", "test"), report.splits
        cfg = {"type": "auto", split: {"root": str(dst)}}
        ds = build_dataset(data_config(cfg), split, get_task(task).target, with_transforms=False)
        assert len(ds) == images
        check = check_dataset(ds, num_classes, name=split, allow_empty=True)
        assert check.ok, (report.format(), check.format())
        assert list(ds.classes) == list(report.classes), (ds.classes, report.classes)
