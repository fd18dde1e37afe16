"""Multi-label data: one PNG per class, multi-page TIFFs, and COCO / LabelMe / CVAT overlaps read as multi-hot."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.data import DataError, build_dataset
from segzoo.data.checks import check_dataset
from segzoo.data.formats.coco import CocoInstances, CocoMultiLabel
from segzoo.data.formats.cvat import CVAT
from segzoo.data.formats.labelme import LabelMe
from segzoo.data.formats.multilabel import MultiLabelMasks
from segzoo.data.targets import CLASS_MAP, MULTI_HOT
from tests.data_layouts import H, W, data_config, rgb, write_cvat, write_labelme

CAT = np.zeros((H, W), bool)
CAT[4:20, 4:24] = True
DOG = np.zeros((H, W), bool)
DOG[10:30, 16:40] = True  # overlaps the cat on rows 10-19, columns 16-23


def _per_class_folders(root):
    (root / "images").mkdir(parents=True)
    for name in ("cat", "dog"):
        (root / "masks" / name).mkdir(parents=True)
    for stem in ("a", "b"):
        Image.fromarray(rgb()).save(root / "images" / f"{stem}.jpg")
    Image.fromarray(CAT.astype(np.uint8) * 255).save(root / "masks" / "cat" / "a.png")  # 0/255
    Image.fromarray(DOG.astype(np.uint8)).save(root / "masks" / "dog" / "a.png")  # 0/1
    Image.fromarray(DOG.astype(np.uint8) * 255).save(root / "masks" / "dog" / "b.png")  # b has no cat
    return root


def test_one_png_per_class_gives_overlapping_multi_hot_masks(tmp_path):
    root = _per_class_folders(tmp_path)
    ds = MultiLabelMasks(root / "images", root / "masks")
    assert ds.classes == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 2 and ds.layout == "folders"
    image, masks = ds[0]
    assert masks.shape == (2, H, W) and masks.dtype == torch.uint8
    assert torch.equal(masks[0].bool(), torch.from_numpy(CAT)) and torch.equal(masks[1].bool(), torch.from_numpy(DOG))
    assert int((masks.sum(0) == 2).sum()) == 10 * 8  # the overlap carries both labels
    assert not ds[1][1][0].any()  # no cat file for b: no cat there
    ordered = MultiLabelMasks(root / "images", root / "masks", classes=["dog", "cat"])
    assert torch.equal(ordered[0][1], masks.flip(0))
    union = MultiLabelMasks(root / "images", root / "masks", target=CLASS_MAP)
    assert union.classes == ["background", "foreground"]
    assert torch.equal(union[0][1], torch.from_numpy(CAT | DOG).long())
    report = check_dataset(ds, 2)
    assert report.ok and report.found_names == ["cat", "dog"]
    assert "set model.num_classes=2" in check_dataset(ds, 3).format()


def test_bad_per_class_masks_are_refused_with_the_fix(tmp_path):
    root = _per_class_folders(tmp_path)
    Image.fromarray(np.full((H, W), 7, np.uint8)).save(root / "masks" / "dog" / "b.png")
    ds = MultiLabelMasks(root / "images", root / "masks")
    with pytest.raises(DataError, match=r"values \[7\].*0 \(absent\) and 1 or 255"):
        ds[1]
    assert any("values [7]" in e for e in check_dataset(ds, 2).errors)
    with pytest.raises(DataError, match="no folder for classes"):
        MultiLabelMasks(root / "images", root / "masks", classes=["cat", "bird"])
    Image.fromarray(CAT.astype(np.uint8) * 255).save(root / "masks" / "cat" / "b.jpg")
    with pytest.raises(DataError, match="JPEG"):
        MultiLabelMasks(root / "images", root / "masks")
    flat = tmp_path / "flat"
    flat.mkdir()
    with pytest.raises(DataError, match="neither one folder per class"):
        MultiLabelMasks(root / "images", flat)


def test_ignore_value_marks_unlabelled_pixels(tmp_path):
    root = _per_class_folders(tmp_path)
    m = CAT.astype(np.uint8) * 255
    m[0, :] = 128
    Image.fromarray(m).save(root / "masks" / "cat" / "a.png")
    masks = MultiLabelMasks(root / "images", root / "masks", ignore_value=128)[0][1]
    assert (masks[0, 0] == 255).all() and (masks[1, 0] == 0).all()


def _tiff(path, pages):
    frames = [Image.fromarray(p.astype(np.uint8) * 255) for p in pages]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def test_multi_page_tiffs_give_one_channel_per_page(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(rgb()).save(tmp_path / "images" / "a.png")
    _tiff(tmp_path / "masks" / "a.tif", [CAT, DOG, CAT & DOG])
    ds = MultiLabelMasks(tmp_path / "images", tmp_path / "masks")
    assert ds.layout == "tiff" and ds.classes == ["0", "1", "2"]
    masks = ds[0][1]
    assert torch.equal(masks.bool(), torch.from_numpy(np.stack([CAT, DOG, CAT & DOG])))
    named = MultiLabelMasks(tmp_path / "images", tmp_path / "masks", classes=["cat", "dog"])
    with pytest.raises(DataError, match="3 pages but there are 2 classes"):
        named[0]


def test_build_dataset_reads_mask_folders_for_either_target(tmp_path):
    root = _per_class_folders(tmp_path)
    cfg = data_config({"type": "mask_folders", "train": {"images": str(root / "images"),
                                                         "masks": str(root / "masks")}})
    multi = build_dataset(cfg, "train", MULTI_HOT, train=False)
    assert multi[0][1].shape == (2, H, W)
    binary = build_dataset(cfg, "train", CLASS_MAP, train=False)
    assert binary[0][1].shape == (H, W) and set(binary[0][1].unique().tolist()) == {0, 1}
    train = build_dataset(cfg, "train", MULTI_HOT)  # the semantic preset crops and pads both alike
    assert train[0][1].shape[0] == 2 and train[0][1].shape[1:] == train[0][0].shape[1:]


def _coco(root):
    (root / "images").mkdir(parents=True)
    Image.fromarray(rgb()).save(root / "images" / "a.jpg")

    def poly(m):
        ys, xs = np.nonzero(m)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        return [[float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]], [int(x0), int(y0), int(x1 - x0), int(y1 - y0)]

    anns = []
    for k, (m, cat, crowd) in enumerate(((CAT, 1, 0), (DOG, 2, 0))):
        segm, bbox = poly(m)
        anns.append({"id": k + 1, "image_id": 1, "category_id": cat, "segmentation": segm, "bbox": bbox,
                     "area": float(m.sum()), "iscrowd": crowd})
    anns.append({"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [40, 40, 4, 4], "area": 16.0,
                 "segmentation": [[40.0, 40.0, 44.0, 40.0, 44.0, 44.0, 40.0, 44.0]]})
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}], "annotations": anns,
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "sofa"}]}
    (root / "ann.json").write_text(json.dumps(doc))
    return root


def test_coco_overlaps_read_as_multi_label_for_multi_label_models(tmp_path):
    root = _coco(tmp_path)
    cfg = data_config({"type": "coco", "train": {"images": str(root / "images"),
                                                 "annotations": str(root / "ann.json")}})
    ds = build_dataset(cfg, "train", MULTI_HOT, with_transforms=False)
    assert isinstance(ds, CocoMultiLabel) and ds.classes == ["cat", "sofa"] and ds.target is MULTI_HOT
    masks = ds[0][1]
    assert torch.equal(masks[0, :39, :39].bool(), torch.from_numpy(CAT[:39, :39]))  # overlap kept in both
    assert torch.equal(masks[1].bool() | (masks[1] == 255), torch.from_numpy(DOG) | (masks[1] == 255))
    assert (masks[:, 40:44, 40:44] == 255).all()  # the crowd region is unlabelled in every class
    assert isinstance(build_dataset(cfg, "train", CLASS_MAP, with_transforms=False), CocoInstances)


def test_labelme_and_cvat_overlaps_read_as_multi_label(tmp_path):
    lm = LabelMe(write_labelme(tmp_path / "lm"), target=MULTI_HOT)
    masks = lm[0][1]
    assert masks.shape == (len(lm.classes), H, W) and lm.classes == ["cat", "dog"]
    inst = LabelMe(tmp_path / "lm")[0][1]  # the instance masks of the same file
    for k in range(len(lm.classes)):
        union = inst["masks"][inst["labels"] == k].bool().any(0)
        labelled = masks[k] != 255
        assert torch.equal(masks[k].bool()[labelled], union[labelled])
    assert (masks == 255).any()  # the __ignore__ region
    cv = CVAT(write_cvat(tmp_path / "cvat"), target=MULTI_HOT)
    assert cv[0][1].shape == (3, H, W) and cv.classes == ["car", "person", "tree"]
