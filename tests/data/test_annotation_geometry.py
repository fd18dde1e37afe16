"""Every annotation format checks itself against its images, through one shared validation.

Each case builds a hostile export in one format (a stated size that is not the image's, a NaN or
infinite coordinate, a box or mask outside the image, an RLE or polygon that would allocate
gigabytes); ``segzoo data check`` names the file and the object, and loading the image for
training refuses it (``"error"`` kinds even with ``data.check: false``; the others through the
data check that training runs).
"""

import re
import resource

import numpy as np
import pytest

from segzoo.data import CVAT, VOC, YOLO, LabelMe, check_dataset
from segzoo.data.errors import DataError
from segzoo.data.targets import BOXES, INSTANCE_MASKS
from tests.data_layouts import H, W, _b64_png, write_cvat, write_labelme, write_voc, write_yolo


def sub(path, old, new, count=1):
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, count))


def voc(tmp_path, old, new):
    root = write_voc(tmp_path / "voc")
    sub(root / "Annotations" / "2007_000032.xml", old, new)
    return VOC(root, split="train", target=BOXES)


def yolo(tmp_path, line):
    root = write_yolo(tmp_path / "yolo", segment=False)
    (root / "labels" / "train" / "train_0.txt").write_text(line + "\n")
    return YOLO(root, split="train", target=BOXES)


def labelme(tmp_path, edit):
    import json

    root = write_labelme(tmp_path / "lm")
    doc = json.loads((root / "a.json").read_text())
    edit(doc)
    (root / "a.json").write_text(json.dumps(doc))
    return LabelMe(root, target=INSTANCE_MASKS)


def cvat(tmp_path, old, new):
    root = write_cvat(tmp_path / "cvat")
    sub(root / "annotations.xml", old, new)
    return CVAT(root, target=INSTANCE_MASKS)


def _point(doc, value):
    doc["shapes"][0]["points"][1][0] = value


def _mask_outside(doc):
    doc["shapes"][0] = {**doc["shapes"][0], "shape_type": "mask", "points": [[44.0, 36.0], [60.0, 50.0]],
                        "mask": _b64_png(np.full((14, 16), 255, np.uint8))}


# (id, dataset builder, kind of problem shown, file named, object named, refused when loaded)
CASES = [
    ("voc size", lambda t: voc(t, f"<width>{W}</width>", "<width>64</width>"),
     "differs from the image file", "2007_000032", "64x40", True),
    ("voc nan", lambda t: voc(t, "<xmin>7</xmin>", "<xmin>nan</xmin>"), "NaN or infinite", "2007_000032",
     "<object> 1 (cat)", True),
    ("voc outside", lambda t: voc(t, "<xmax>46</xmax>", "<xmax>70</xmax>"), "outside their image", "2007_000032",
     "<object> 3", False),
    ("yolo nan", lambda t: yolo(t, "0 nan 0.5 0.2 0.2"), "NaN or infinite", "train_0", "line 1 (square)", True),
    ("yolo inf", lambda t: yolo(t, "1 0.5 0.5 inf 0.2"), "NaN or infinite", "train_0", "line 1 (triangle)", True),
    ("yolo outside", lambda t: yolo(t, "0 0.95 0.5 0.5 0.2"), "outside their image", "train_0", "line 1", False),
    ("labelme size", lambda t: labelme(t, lambda d: d.update(imageHeight=H + 8)), "differs from the image file",
     "a.json", f"{W}x{H + 8}", True),
    ("labelme nan", lambda t: labelme(t, lambda d: _point(d, float("nan"))), "NaN or infinite", "a.json",
     "shape 1 (cat)", True),
    ("labelme outside", lambda t: labelme(t, lambda d: _point(d, 90.0)), "outside their image", "a.json",
     "shape 1 (cat)", False),
    ("labelme mask outside", lambda t: labelme(t, _mask_outside), "outside their image", "a.json", "mask shape",
     True),
    ("cvat size", lambda t: cvat(t, f'width="{W}"', 'width="4800"'), "differs from the image file", "frame_000000",
     "4800x40", True),
    ("cvat nan", lambda t: cvat(t, 'xtl="2.50"', 'xtl="nan"'), "NaN or infinite", "frame_000000", "(car)", True),
    ("cvat polygon outside", lambda t: cvat(t, "20.00,2.00;28.00", "20.00,2.00;52.00"), "outside their image",
     "frame_000000", "(person)", False),
    ("cvat mask crop outside", lambda t: cvat(t, 'left="30"', 'left="46"'), "outside their image", "frame_000000",
     "<mask> crop 4x3 at (46, 25)", True),
]


@pytest.mark.parametrize(("make", "shown", "file", "obj", "refused"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_data_check_names_file_and_object_and_training_refuses(make, shown, file, obj, refused, tmp_path):
    ds = make(tmp_path)
    report = check_dataset(ds, num_classes=len(ds.object_classes))
    hits = [e for e in report.errors if shown in e]
    assert hits, report.format()
    assert file in hits[0] and obj in hits[0], hits[0]
    bad = next(i for i in range(len(ds)) if file in ds.item_name(i))
    if refused:  # never trained on, even with data.check: false
        with pytest.raises(DataError, match=re.escape(file)):
            ds[bad]
    else:  # the trainer refuses it through the data check it runs (report.raise_if_errors)
        with pytest.raises(DataError, match=re.escape(shown)):
            report.raise_if_errors()


def _grows_by_mb(fn) -> float:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


@pytest.mark.parametrize(("edit", "kind"), [
    # one CVAT element declared 8.8 GB of runs over a 4 x 3 crop
    (lambda t: re.sub(r'rle="[^"]*"', 'rle="0, 8800000000"', t, count=1), "runs add up to 8,800,000,000 pixels"),
    (lambda t: t.replace('width="4" height="3"', 'width="100000" height="100000"'), "crop 100000x100000"),
    # polygons and boxes a billion pixels long: rasterising them allocates in proportion to their length
    (lambda t: t.replace("20.00,2.00;28.00,2.00", "20.00,2.00;1000000000.00,2.00"), "far outside"),
    (lambda t: t.replace('xbr="12.00"', 'xbr="4000000000.00"'), "far outside"),
], ids=["rle runs", "mask crop", "polygon", "box"])
def test_cvat_sizes_are_bounded_before_allocation(edit, kind, tmp_path):
    root = write_cvat(tmp_path / "cvat")
    text = (root / "annotations.xml").read_text()
    (root / "annotations.xml").write_text(edit(text))
    assert edit(text) != text
    ds = CVAT(root, target=INSTANCE_MASKS)
    grown = _grows_by_mb(lambda: check_dataset(ds, num_classes=3))
    report = check_dataset(ds, num_classes=3)
    assert any(kind in e and "frame_000000" in e for e in report.errors), report.format()
    with pytest.raises(DataError, match=re.escape(kind)):
        ds[0]
    assert grown < 200, f"the check allocated {grown:.0f} MB"


def test_coco_polygons_far_outside_are_refused_before_rasterising(tmp_path):
    from segzoo.data import CocoInstances
    from tests.data_layouts import write_coco

    root = write_coco(tmp_path / "coco")
    ann = root / "annotations" / "instances_train2017.json"
    import json

    doc = json.loads(ann.read_text())
    doc["annotations"][0]["segmentation"] = [[0, 0, 2e9, 0, 2e9, 5]]
    ann.write_text(json.dumps(doc))
    ds = CocoInstances(root / "train2017", ann)
    report = check_dataset(ds, num_classes=len(ds.classes))
    assert any("far outside" in e for e in report.errors), report.format()
    bad = next(i for i in range(len(ds)) if ds.images[i]["id"] == doc["annotations"][0]["image_id"])
    with pytest.raises(DataError, match="far outside"):
        ds[bad]


@pytest.mark.parametrize("check", [True, False])
def test_data_check_and_training_agree(check, tmp_path, capsys):
    """The same hostile YOLO line: `segzoo data check` exits 1 and `segzoo train` refuses it before a step,
    with the data check on (its report) and off (the loader's refusal), naming the file and line."""
    from segzoo.cli import main as cli

    root = write_yolo(tmp_path / "yolo", segment=False)
    (root / "labels" / "train" / "train_0.txt").write_text("0 0.5 nan 0.2 0.2\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: fcn_resnet50, num_classes: 3, backbone: resnet18}}\n"
                   f"data: {{type: yolo, check: {str(check).lower()}, batch_size: 3, num_workers: 0,\n"
                   f"       train: {{root: {root}}}, val: {{root: {root}}}, augment: {{size: 32}}}}\n"
                   "train: {max_steps: 1, device: cpu, progress: false, tensorboard: false}\n")
    assert cli(["data", "check", str(cfg)]) == 1
    out = capsys.readouterr()
    assert "NaN or infinite" in out.out + out.err and "train_0.jpg: line 1 (square)" in out.out + out.err
    code = cli(["train", str(cfg), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "train_0.jpg: line 1 (square)" in err and "NaN or infinite" in err, err
