"""``segzoo data convert --to {labelme,cvat}``: the writers the labelling tools import, read back by segzoo."""

import numpy as np
import pytest

from segzoo.data import YOLO, LabelMe
from segzoo.data.convert import convert
from segzoo.data.formats.cvat import CVAT
from segzoo.data.formats.voc import VOC
from segzoo.data.targets import INSTANCE_MASKS
from segzoo.data.writers import cvat_rle
from tests.data_layouts import write_cvat, write_labelme, write_voc

pytest.importorskip("pycocotools")


def _same_objects(a, b):
    assert a.object_classes == b.object_classes and len(a) == len(b)
    for i in range(len(a)):
        h, w = a.image_hw(i)
        assert b.image_hw(i) == (h, w)
        oa, ob = a.objects(i, h, w), b.objects(i, h, w)
        assert [(o.label, o.crowd) for o in oa] == [(o.label, o.crowd) for o in ob]
        for x, y in zip(oa, ob):
            assert np.array_equal(x.pixels(h, w), y.pixels(h, w))


@pytest.mark.parametrize("to", ["labelme", "cvat"])
def test_labelme_and_cvat_sources_round_trip_through_the_new_writers(tmp_path, to):
    sources = (("lm", write_labelme(tmp_path / "lm"), LabelMe), ("cv", write_cvat(tmp_path / "cv"), CVAT))
    for name, src, reader in sources:
        report = convert(src, tmp_path / f"{name}_{to}", to)
        back = (LabelMe if to == "labelme" else CVAT)(tmp_path / f"{name}_{to}", target=INSTANCE_MASKS)
        _same_objects(reader(src, target=INSTANCE_MASKS), back)
        assert report.target == to


def test_voc_masks_with_holes_survive_as_masks(tmp_path):
    voc = write_voc(tmp_path / "voc")
    src = VOC(voc, "val", target=INSTANCE_MASKS)
    for to, reader in (("labelme", LabelMe), ("cvat", CVAT)):
        convert(voc, tmp_path / to, to, splits=["val"])
        _same_objects(src, reader(tmp_path / to, target=INSTANCE_MASKS))


def test_cvat_rle_is_what_the_reader_decodes():
    from segzoo.data.formats.cvat import decode_cvat_rle

    rng = np.random.default_rng(0)
    for _ in range(20):
        crop = rng.random((rng.integers(1, 9), rng.integers(1, 9))) < 0.5
        back = decode_cvat_rle(cvat_rle(crop), 2, 3, crop.shape[1], crop.shape[0], 20, 20)
        assert np.array_equal(back[3:3 + crop.shape[0], 2:2 + crop.shape[1]], crop) and back.sum() == crop.sum()


def test_yolo_simplify_is_applied(tmp_path):
    from PIL import Image

    for sub in ("images/train", "masks/train"):
        (tmp_path / "mf" / sub).mkdir(parents=True)
    yy, xx = np.mgrid[:40, :40]
    disk = ((yy - 20) ** 2 + (xx - 20) ** 2 < 15 ** 2).astype(np.uint8)  # a staircase outline of many vertices
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "mf" / "images" / "train" / "a.png")
    Image.fromarray(disk).save(tmp_path / "mf" / "masks" / "train" / "a.png")
    (tmp_path / "mf" / "classes.txt").write_text("background\ndisk\n")
    convert(tmp_path / "mf", tmp_path / "exact", "yolo")
    convert(tmp_path / "mf", tmp_path / "simple", "yolo", tolerance=2.0)

    def vertices(d):
        return len((d / "labels" / "train" / "a.txt").read_text().split()) // 2

    assert vertices(tmp_path / "simple") < vertices(tmp_path / "exact") // 2  # --simplify reached the writer
    exact = YOLO(tmp_path / "exact", "train", target=INSTANCE_MASKS)[0][1]["masks"][0].numpy()
    assert np.array_equal(exact, disk)
