"""Benchmark datasets in their official layouts: Cityscapes, Pascal VOC 2012 + SBD, ADE20K."""

import numpy as np
import pytest
import torch
from PIL import Image

from segzoo.data import ADE20K, Cityscapes, VOCSegmentation, build_dataset, check_dataset
from segzoo.data.formats.cityscapes import LABELS, THING_CLASSES, TRAIN_CLASSES, TRAIN_PALETTE, train_id_lut
from segzoo.data.targets import CLASS_MAP, INSTANCE_MASKS
from tests.data_layouts import H, W, data_config, write_ade20k, write_cityscapes, write_voc


def test_cityscapes_label_table():
    assert len(TRAIN_CLASSES) == 19 and TRAIN_CLASSES[0] == "road" and TRAIN_CLASSES[-1] == "bicycle"
    assert TRAIN_PALETTE[13] == (0, 0, 142)  # car
    assert THING_CLASSES == ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
    lut = train_id_lut()
    assert lut[7] == 0 and lut[26] == 13 and lut[33] == 18 and lut[29] == 255 and lut[0] == 255
    assert sorted(lut[lut != 255].tolist()) == list(range(19)) and len(LABELS) == 35


def test_cityscapes_semantic_and_instances(tmp_path):
    root = write_cityscapes(tmp_path)
    ds = Cityscapes(root, "train")
    assert len(ds) == 1 and ds.classes == list(TRAIN_CLASSES) and ds.num_classes == 19
    image, mask = ds[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    assert mask[0, 5] == 10 and mask[39, 0] == 0 and mask[25, 10] == 13 and mask[34, 40] == 11
    assert (mask[10:14] == 255).all() and mask[1, 1] == 255  # static and caravan are ignored

    inst = Cityscapes(root, "val", target=INSTANCE_MASKS)
    _, t = inst[0]
    assert inst.classes == list(THING_CLASSES)
    assert t["labels"].tolist() == [2, 2]  # two cars; the person crowd group is left out
    assert t["boxes"].tolist() == [[5, 20, 15, 30], [20, 20, 30, 30]]
    objs = inst.objects(0, H, W)
    assert [o.crowd for o in objs] == [True, False, False]  # 24 (person, no instance id) is a crowd region
    assert check_dataset(ds, 19, allow_empty=False).ok
    with pytest.raises(FileNotFoundError, match="splits here: \\['train', 'val'\\]"):
        Cityscapes(root, "test")


def test_voc_segmentation_and_augmented_set(tmp_path):
    voc = write_voc(tmp_path)
    ds = VOCSegmentation(voc, "val")
    assert ds.num_classes == 21 and ds.palette[1] == (128, 0, 0) and ds.palette[15] == (192, 128, 128)
    _, mask = ds[0]
    assert mask[10, 10] == 8 and mask[4, 10] == 255
    with pytest.raises(FileNotFoundError, match="train_aug.txt.*sbd_root"):
        VOCSegmentation(voc, "train_aug")

    # the DeepLab augmented set: SegmentationClassAug grey PNGs and a train_aug list
    (voc / "SegmentationClassAug").mkdir()
    aug = np.zeros((H, W), np.uint8)
    aug[0:5, 0:5] = 12
    Image.fromarray(aug, mode="L").save(voc / "SegmentationClassAug" / "2007_000032.png")
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text(
        "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n2007_000039\n")
    ds = VOCSegmentation(voc, "train_aug")
    assert ds.ids == ["2007_000032", "2007_000039"]
    assert ds[0][1][2, 2] == 12 and ds[1][1][10, 10] == 8  # no Aug PNG: the official one


def test_voc_sbd_mat_labels(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    voc = write_voc(tmp_path)
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(voc / "JPEGImages" / "2008_000002.jpg")
    seg = np.zeros((H, W), np.uint8)
    seg[10:20, 10:20] = 20
    scipy_io.savemat(sbd / "cls" / "2008_000002.mat",
                     {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 21), dtype=object),
                                "CategoriesPresent": np.array([20], np.uint8)}})
    (sbd / "train.txt").write_text("2008_000002\n")
    (sbd / "val.txt").write_text("2007_000063\n")  # VOC val: left out of train_aug
    ds = VOCSegmentation(voc, "train_aug", sbd_root=sbd)
    assert ds.ids == ["2007_000032", "2007_000039", "2008_000002"]  # SBD train+val + VOC train - VOC val
    _, mask = ds[2]
    assert mask[15, 15] == 20 and mask[0, 0] == 0


def test_ade20k_reduce_zero_label(tmp_path):
    root = write_ade20k(tmp_path)
    ds = ADE20K(tmp_path, "train")  # the folder above ADEChallengeData2016 works too
    assert ds.root == root and ds.num_classes == 150 and ds.classes[0] == "wall" and ds.classes[-1] == "flag"
    assert len(set(ds.classes)) == 150 and len(ds.palette) == 150
    _, mask = ds[0]
    assert mask[0, 0] == 2 and mask[30, 0] == 0 and mask[30, 40] == 149
    raw = ADE20K(root, "validation", reduce_zero_label=False)
    assert raw.num_classes == 151 and raw[0][1][0, 0] == 3
    lab = np.zeros((H, W), np.uint8)
    Image.fromarray(lab, mode="L").save(root / "annotations" / "training" / "ADE_train_00000001.png")
    assert (ADE20K(root, "train")[0][1] == 255).all()  # 0 ("other") is ignored
    report = check_dataset(ADE20K(root, "train"), 150)
    assert not report.ok and "no labelled pixel" in report.errors[0]
    ds = build_dataset(data_config({"type": "ade20k", "train": {"root": str(root)}}), "train", CLASS_MAP)
    image, mask = ds[0]
    assert image.dtype == torch.float32 and mask.dtype == torch.int64
