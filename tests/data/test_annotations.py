"""Broken COCO json and mask folders: refused or reported with the file, image id and annotation id.

One test per class of failure (issues 15.2, 15.3 and 21.6). "Refused" means the dataset itself
raises, so even ``data.check: false`` never trains on it; "reported" means ``segzoo data check``
and the trainer's check list it as an error.
"""

import copy
import json
import re

import numpy as np
import pytest
from PIL import Image

from segzoo.data import CocoInstances, CocoSemantic, DataError, MaskFolder, check_dataset
from segzoo.data.targets import INSTANCE_MASKS

H, W = 20, 30


def square(x, y, s=6):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def good_coco():
    anns = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [2, 2, 6, 6], "segmentation": square(2, 2),
             "area": 36, "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 5, "bbox": [4, 4, 6, 6], "segmentation": square(4, 4),
             "area": 36, "iscrowd": 0}]
    images = [{"id": 1, "file_name": "a.png", "width": W, "height": H},
              {"id": 2, "file_name": "b.png", "width": W, "height": H}]
    return {"images": images, "annotations": anns, "categories": [{"id": 3, "name": "x"}, {"id": 5, "name": "y"}]}


def write(tmp_path, data, sizes=None):
    (tmp_path / "img").mkdir(exist_ok=True)
    for name, (h, w) in (sizes or {"a.png": (H, W), "b.png": (H, W)}).items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "img" / name)
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "img", tmp_path / "ann.json"


def edited(edit):
    data = good_coco()
    edit(data)
    return data


def check_errors(ds, num_classes=2):
    return " | ".join(check_dataset(ds, num_classes=num_classes).errors)


def test_good_coco_passes(tmp_path):
    for cls in (CocoInstances, CocoSemantic):
        ds = cls(*write(tmp_path, good_coco()))
        assert check_dataset(ds, num_classes=2 + (cls is CocoSemantic)).ok
        ds[0], ds[1]


# ---------------------------------------------------------------- refused by the dataset (index problems)

FATAL = {
    "duplicate image id": (lambda d: d["images"][1].update(id=1), "image ids used by several images.*id 1: a.png "
                           "and b.png"),
    "unknown image": (lambda d: d["annotations"][1].update(image_id=7), "annotation 11 -> image_id 7"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=4), "image 1 \\(a.png\\) annotation 10 "
                         "-> category_id 4"),
    "duplicate category id": (lambda d: d["categories"].append({"id": 3, "name": "z"}), "category ids used by"),
    "string id": (lambda d: d["annotations"][0].update(image_id="1"), "ids that are not integers.*image_id='1'"),
    "non-object entry": (lambda d: d["annotations"].append([1, 2]), "annotation #2 is a list"),
    "images not a list": (lambda d: d.update(images={"1": "a.png"}), "a dict instead of a 'images' list"),
}
for key in ("id", "image_id", "category_id"):
    FATAL[f"annotation without {key}"] = (lambda d, k=key: d["annotations"][1].pop(k),
                                          f"annotation #1.* has no '{key}'")
for key in ("id", "file_name"):
    FATAL[f"image without {key}"] = (lambda d, k=key: d["images"][0].pop(k), f"image #0.* has no '{key}'")
FATAL["category without id"] = (lambda d: d["categories"][0].pop("id"), "category #0 has no 'id'")


@pytest.mark.parametrize("case", sorted(FATAL))
def test_index_problems_are_refused_by_the_dataset(tmp_path, case):
    """Duplicate ids, unknown references, missing keys: a DataError, never a KeyError or wrong objects."""
    edit, match = FATAL[case]
    args = write(tmp_path, edited(edit))
    for cls in (CocoInstances, CocoSemantic):
        with pytest.raises(DataError, match=match) as e:
            cls(*args)
        assert "ann.json cannot be used" in str(e.value) or "ann.json has" in str(e.value)


# ---------------------------------------------------------------- content problems: reported and refused on load

CONTENT = {
    "polygon with 2 points": (lambda d: d["annotations"][0].update(segmentation=[[2, 2, 8, 8]]),
                              "fewer than 3 points.*image 1 \\(a.png\\) annotation 10: polygon \\[2, 2, 8, 8\\] has 2"),
    "empty polygon list": (lambda d: d["annotations"][0].update(segmentation=[]), "without a segmentation"),
    "flat polygon": (lambda d: d["annotations"][0].update(segmentation=[2, 2, 8, 2, 8, 8]), "one flat list"),
    "odd polygon": (lambda d: d["annotations"][0].update(segmentation=[[2, 2, 8, 2, 8]]), "odd number"),
    "NaN polygon": (lambda d: d["annotations"][0].update(segmentation=[[2, 2, float("nan"), 2, 8, 8]]),
                    "NaN or infinite"),
    "RLE of another size": (lambda d: d["annotations"][0].update(
        segmentation={"size": [H + 5, W], "counts": [(H + 5) * W]}), "RLE masks whose size is not their image's.*"
        "annotation 10: RLE size \\[height, width\\] = \\[25, 30\\] but the image is 30x20"),
    "RLE counts that do not add up": (lambda d: d["annotations"][0].update(
        segmentation={"size": [H, W], "counts": [5, 5]}), "counts add up to 10 pixels"),
    "garbage compressed RLE": (lambda d: d["annotations"][0].update(segmentation={"size": [H, W], "counts": "0000"}),
                               "compressed RLE counts add up to 0 pixels"),
    "bbox of 3 numbers": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "without a bbox of 4 numbers"),
    "bbox missing": (lambda d: d["annotations"][0].pop("bbox"), "annotation 10: has no 'bbox'"),
    "infinite bbox": (lambda d: d["annotations"][0].update(bbox=[1, 2, float("inf"), 3]), "NaN or infinite"),
    "NaN area": (lambda d: d["annotations"][0].update(area=float("nan")), "area=nan"),
    "iscrowd 2": (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd=2"),
    "json size not the file's": (lambda d: d["images"][0].update(width=W + 1),
                                 "width/height in the json differ.*image 1 \\(a.png\\): json 31x20, file 30x20"),
}


@pytest.mark.parametrize("case", sorted(CONTENT))
def test_content_problems_are_reported_with_ids_and_refused_on_load(tmp_path, case):
    """Today a polygon of 2 points silently gives an empty mask and training succeeds."""
    edit, match = CONTENT[case]
    ds = CocoInstances(*write(tmp_path, edited(edit)))
    assert re.search(match, check_errors(ds)), check_errors(ds)
    with pytest.raises(DataError, match="ann.json: image 1 \\(a.png\\)"):
        ds[0]
    ds[1]  # the other image is fine


def test_compressed_rle_strings_are_decoded_exactly(tmp_path):
    """pycocotools decodes a malformed counts string into a garbage mask without an error."""
    mask_utils = pytest.importorskip("pycocotools.mask")
    from segzoo.data.formats.coco_json import rle_string_counts
    from segzoo.data.synthetic.shapes import encode_rle

    rng = np.random.RandomState(0)
    for _ in range(50):
        a = (rng.rand(*rng.randint(1, 40, 2)) < rng.rand()).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(a))
        assert rle_string_counts(rle["counts"].decode()) == encode_rle(a)["counts"]
    assert rle_string_counts("garbage") is None and rle_string_counts("0P") is None  # ends inside a run


def test_json_with_a_byte_order_mark_and_bad_sizes(tmp_path):
    img, ann = write(tmp_path, edited(lambda d: d["images"][1].update(width="30")))
    ann.write_bytes(b"\xef\xbb\xbf" + ann.read_bytes())  # Windows tools write a UTF-8 BOM
    ds = CocoInstances(img, ann)
    assert "image 2 (b.png): width='30' is not a positive number" in check_errors(ds)


def test_negative_box_is_reported(tmp_path):
    ds = CocoInstances(*write(tmp_path, edited(lambda d: d["annotations"][0].update(bbox=[8, 8, -6, -6]))))
    text = check_errors(ds)
    assert "zero or negative width/height (image 1 (a.png) annotation 10: bbox xywh [8, 8, -6, -6])" in text


def test_duplicate_annotation_ids_and_files_are_reported(tmp_path):
    def edit(d):
        d["annotations"][1]["id"] = 10
        d["images"].append({"id": 3, "file_name": "a.png", "width": W, "height": H})

    text = check_errors(CocoInstances(*write(tmp_path, edited(edit))))
    assert "annotations that share an id with another (annotation id 10 (2 annotations))" in text
    assert "image files listed under two image ids (a.png (2 image ids))" in text


def test_exif_rotated_photo_with_unrotated_json_size_gets_a_hint(tmp_path):
    data = good_coco()
    (tmp_path / "img").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "img" / "a.jpg", exif=exif)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "img" / "b.png")
    data["images"][0]["file_name"] = "a.jpg"  # json says 30x20, the photo is displayed 20x30
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoInstances(tmp_path / "img", tmp_path / "ann.json")
    assert "json 30x20, file 20x30 (turned by 90 degrees: EXIF orientation?)" in check_errors(ds)
    with pytest.raises(DataError, match="EXIF orientation applied"):
        ds[0]


# ---------------------------------------------------------------- crowd regions (issue 21.6)


def test_image_with_only_crowd_regions_is_not_empty(tmp_path):
    def edit(d):
        d["annotations"][1].update(iscrowd=1, segmentation={"size": [H, W], "counts": [50, 30, H * W - 80]})

    for cls, n in ((CocoInstances, 2), (CocoSemantic, 3)):
        ds = cls(*write(tmp_path, edited(edit)))
        report = check_dataset(ds, num_classes=n)
        assert report.ok and not any("no annotations" in w for w in report.warnings), report.format()
    _, mask = CocoSemantic(*write(tmp_path, edited(edit)))[1]
    assert (mask == 255).sum() == 30  # the crowd region is ignored, the rest is background
    truly_empty = edited(lambda d: d["annotations"].pop(1))
    report = check_dataset(CocoInstances(*write(tmp_path, truly_empty)), num_classes=2)
    assert "1 images have no annotations: b.png" in " ".join(report.errors)


def test_crowd_only_images_are_not_empty_in_the_format_readers(tmp_path):
    from segzoo.data.records import AnnotatedImages, Obj

    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "a.png")

    class OneImage(AnnotatedImages):  # the shape of every format reader (CVAT, LabelMe, Cityscapes, ...)
        object_classes = ["person"]

        def __init__(self, objs):
            super().__init__(INSTANCE_MASKS)
            self.objs = objs

        def __len__(self):
            return 1

        def image_path(self, index):
            return tmp_path / "a.png"

        def objects(self, index, height, width):
            return self.objs

    crowd = Obj(0, segmentation=[[1, 1, 9, 1, 9, 9, 1, 9]], crowd=True)
    assert not any("no labelled pixel or object" in e for e in check_dataset(OneImage([crowd]), 1).errors)
    assert any("no labelled pixel or object" in e for e in check_dataset(OneImage([]), 1).errors)


# ---------------------------------------------------------------- mask folders (issue 15.3)


def folder(tmp_path, masks, image_ext=".jpg"):
    (tmp_path / "im").mkdir(parents=True, exist_ok=True)
    (tmp_path / "gt").mkdir(exist_ok=True)
    for stem, m in masks.items():
        Image.fromarray(np.zeros((*m.shape, 3), np.uint8)).save(tmp_path / "im" / f"{stem}{image_ext}")
        Image.fromarray(m.astype(np.uint8)).save(tmp_path / "gt" / f"{stem}.png")
    return tmp_path / "im", tmp_path / "gt"


def test_0_255_masks_are_refused_without_binary_even_with_little_foreground(tmp_path):
    """Today: with little foreground only a warning, and the model learns nothing (mIoU 0.0)."""
    m = np.zeros((32, 32))
    m[:3, :3] = 255  # under 1% foreground
    im, gt = folder(tmp_path, {"a": m, "b": m.T})
    report = check_dataset(MaskFolder(im, gt), num_classes=2)
    assert "2 masks hold only 0 and 255 (a.png, b.png)" in " ".join(report.errors) and "data.binary=true" in \
        " ".join(report.errors)
    assert check_dataset(MaskFolder(im, gt, binary=True), num_classes=2).ok
    # VOC-style data (255 = void border around real labels) stays fine
    voc = m.copy()
    voc[10:20, 10:20] = 1
    im, gt = folder(tmp_path / "voc", {"a": voc})
    assert check_dataset(MaskFolder(im, gt), num_classes=2).ok


@pytest.mark.parametrize("where", ["im", "gt"])
def test_same_stem_twice_is_an_error_not_a_silent_drop(tmp_path, where):
    im, gt = folder(tmp_path, {"a": np.zeros((8, 8)), "b": np.ones((8, 8))})
    extra = tmp_path / where / ("a.png" if where == "im" else "a.tif")
    Image.fromarray(np.zeros((8, 8, 3) if where == "im" else (8, 8), np.uint8)).save(extra)
    pair = "a.jpg and a.png" if where == "im" else "a.png and a.tif"
    with pytest.raises(DataError, match=f"share a file stem with another \\({pair}"):
        MaskFolder(im, gt)


def test_jpeg_masks_are_named_and_refused(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "gt").mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im" / f"{stem}.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "gt" / f"{stem}.jpg")
    with pytest.raises(DataError, match="2 masks in .* are JPEG files \\(a.jpg, b.jpg\\).*export the masks as PNG"):
        MaskFolder(tmp_path / "im", tmp_path / "gt")


def test_trainer_check_refuses_broken_coco(tmp_path):
    """The check the trainer runs at start (``segzoo data check``) exits 1 and names the annotation."""
    from segzoo.cli import main

    img, ann = write(tmp_path, edited(lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]])))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: fcn_resnet50, backbone: resnet18, num_classes: 3}}\n"
                   f"data: {{type: coco, train: {{images: {img}, annotations: {ann}}}}}\n")
    assert main(["data", "check", str(cfg)]) == 1
    broken = copy.deepcopy(good_coco())
    broken["images"][1]["id"] = 1
    ann.write_text(json.dumps(broken))
    assert main(["data", "check", str(cfg)]) == 1
