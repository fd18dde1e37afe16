"""One reader base: every format reader is an AnnotatedImages, and the data check asks the reader itself.

A new format written only against the base (``__len__``, ``image_path``, ``objects``) gets its
items and its ``segzoo data check`` for free; ``segzoo/data/checks.py`` never branches on a
reader's class, and ``segzoo/data/sources.py`` holds no per-reader record views.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segzoo.data.checks as checks
from segzoo.data import check_dataset
from segzoo.data.records import AnnotatedImages, Obj
from segzoo.data.targets import BOXES, CLASS_MAP, INSTANCE_MASKS

DATA = Path(checks.__file__).parent


class Dots(AnnotatedImages):
    """A made-up format: one image per line of a list, objects given as boxes (written against the base only)."""

    targets = (INSTANCE_MASKS, BOXES, CLASS_MAP)

    def __init__(self, images: list[Path], boxes: list[list[tuple]], target=BOXES) -> None:
        super().__init__(target)
        self.images, self.boxes = images, boxes
        self.object_classes = ["dot", "blob"]

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def objects(self, index: int, height: int, width: int) -> list[Obj]:
        return [Obj(label, box=box, where=f"line {k + 1}") for k, (label, box) in enumerate(self.boxes[index])]


def _images(tmp_path, n=2):
    out = []
    for i in range(n):
        p = tmp_path / f"im{i}.png"
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(p)
        out.append(p)
    return out


def test_a_reader_written_against_the_base_gets_the_data_check(tmp_path):
    good = Dots(_images(tmp_path), [[(0, (1, 1, 5, 5))], [(1, (2, 2, 8, 8))]])
    report = check_dataset(good, num_classes=2)
    assert report.ok and report.num_items == 2 and report.classes_found == [0, 1]
    assert report.found_names == ["dot", "blob"]
    bad = Dots(_images(tmp_path), [[(0, (1, 1, 5, 5)), (1, (float("nan"), 0, 3, 3))], []])
    report = check_dataset(bad, num_classes=2)
    text = " | ".join(report.errors)
    assert "im0.png: line 2 (blob)" in text and "NaN or infinite" in text  # file and object named
    assert "im1.png" in text and "allow_empty" in text  # an image without objects
    with pytest.raises(Exception, match="im0.png: line 2"):  # and its items refuse the same object
        bad[0]


def test_every_format_reader_is_on_the_one_base():
    from segzoo.data.build import DATASET_TYPES
    from segzoo.data.formats.coco import CocoInstances, CocoSemantic
    from segzoo.data.formats.coco_panoptic import CocoPanoptic
    from segzoo.data.formats.mask_folder import MaskFolder

    for reader in (CocoInstances, CocoSemantic, MaskFolder, CocoPanoptic):
        assert issubclass(reader, AnnotatedImages), reader
    for kind, reader in DATASET_TYPES.items():
        if not isinstance(reader, type) or "synthetic" in reader.__module__:
            continue
        assert issubclass(reader, AnnotatedImages), (kind, reader)


def _names(path: Path) -> tuple[set[str], list[str]]:
    tree = ast.parse(path.read_text())
    imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    calls = [ast.unparse(n) for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in ("isinstance", "issubclass")]
    return imported, calls


def test_checks_never_branch_on_a_reader_class():
    imported, calls = _names(DATA / "checks.py")
    readers = {"CocoInstances", "CocoSemantic", "MaskFolder", "CocoPanoptic", "AnnotatedImages", "VOC", "YOLO"}
    assert not imported & readers, imported & readers
    assert not [c for c in calls if any(r in c for r in readers)], calls


def test_sources_has_no_record_views():
    tree = ast.parse((DATA / "sources.py").read_text())
    classes = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    assert classes == [], classes  # the readers give their records themselves


def _coco_file(tmp_path):
    import json

    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    big = [[2.1, 2.1, 20.3, 2.1, 20.3, 15.7, 2.1, 15.7]]
    small = [[5.5, 5.5, 9.5, 5.5, 9.5, 9.5, 5.5, 9.5]]
    anns = [  # the json's areas say the small square is the larger: COCO paints by the json's area
        {"id": 1, "image_id": 7, "category_id": 3, "bbox": [2.1, 2.1, 18.2, 13.6], "area": 1.0, "segmentation": big,
         "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 5, "bbox": [5.5, 5.5, 4.0, 4.0], "area": 900.0,
         "segmentation": small, "iscrowd": 0},
        {"id": 3, "image_id": 7, "category_id": 3, "bbox": [25, 0, 4, 4], "area": 16.0, "iscrowd": 1,
         "segmentation": [[25, 0, 29, 0, 29, 4, 25, 4]]},
    ]
    data = {"images": [{"id": 7, "file_name": "a.png", "height": 20, "width": 30}], "annotations": anns,
            "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "img", tmp_path / "ann.json", anns


def test_coco_items_through_the_base_are_the_json_as_read(tmp_path):
    import torch
    from pycocotools import mask as mask_utils

    from segzoo.data import CocoInstances, CocoSemantic

    root, ann_file, anns = _coco_file(tmp_path)
    _, target = CocoInstances(root, ann_file)[0]
    boxes = torch.tensor([a["bbox"] for a in anns[:2]], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]  # the float32 sum a tensor of the json's boxes gives
    assert torch.equal(target["boxes"].as_subclass(torch.Tensor), boxes)
    assert target["labels"].tolist() == [0, 1] and target["image_id"] == 7  # the json's id, crowd left out
    for k, a in enumerate(anns[:2]):
        ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], 20, 30)))
        assert np.array_equal(target["masks"][k].numpy(), ref)
    _, mask = CocoSemantic(root, ann_file)[0]
    mask = mask.numpy()
    assert mask[12, 15] == 1 and mask[7, 7] == 1  # the "larger" (by json area) dog is painted under the cat
    assert mask[1, 26] == 255 and mask[0, 0] == 0  # crowd region -> ignore


def test_coco_records_for_convert_take_the_shared_validation(tmp_path):
    from segzoo.data import CocoInstances

    root, ann_file, _ = _coco_file(tmp_path)
    records = CocoInstances(root, ann_file, with_masks=False, target=CLASS_MAP, records_only=True)
    assert records.kinds is checks_kinds() and records.classes == ["background", "cat", "dog"]
    report = check_dataset(records, num_classes=3)  # the base's check of records (segzoo.data.validation)
    assert report.ok and report.classes_found == [0, 1, 2], report.format()
    painted = records.semantic_map(0, 20, 30)
    assert painted[7, 7] == 2  # records paint by pixel count (as data convert always did), not by the json's area


def checks_kinds():
    import segzoo.data.validation as validation

    return validation.KINDS
