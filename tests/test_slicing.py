"""Sliced inference of detection / instance models (segzoo.slicing): tiles, merging, crop masks, memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch import nn
from torchvision.ops import box_iou

from segzoo import infer_files, inference, slicing
from segzoo.data.prelabel import Predictions
from segzoo.data.targets import INSTANCE_MASKS
from segzoo.slicing import CropMasks, merge_detections, sliced_detect, tile_boxes

ROOT = Path(__file__).resolve().parents[1]


class Blobs(nn.Module):
    """An 'instance model' that finds the bright blobs of each image it is given (connected components of
    channel 0 > 0.5), with tile-size float masks as Mask R-CNN returns them."""

    task = "instance"

    def forward(self, images):
        outs = []
        for im in images:
            lab, n = ndimage.label(im[0].cpu().numpy() > 0.5)
            masks = torch.from_numpy(np.stack([lab == i + 1 for i in range(n)]) if n else
                                     np.zeros((0, *lab.shape), bool)).float()[:, None]
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(lab)]
            outs.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         "scores": torch.linspace(0.9, 0.5, n), "labels": torch.zeros(n, dtype=torch.int64),
                         "masks": masks})
        return outs


def _image(h, w, n, seed=0, size=(8, 20)):
    g = np.random.default_rng(seed)
    im = torch.zeros(3, h, w)
    for _ in range(n):
        bh, bw = g.integers(*size, size=2)
        y, x = g.integers(0, h - bh), g.integers(0, w - bw)
        im[:, y : y + bh, x : x + bw] = 1
    return im


def _key(det):
    order = np.lexsort(det["boxes"].numpy().T[::-1])
    return det["boxes"][order], order


def test_the_tiling_arithmetic_is_the_semantic_one():
    assert inference.tile_origins is slicing.tile_origins
    tiles = tile_boxes(300, 500, 128, 0.25)
    assert {(y, x) for y, x, _, _ in tiles} == {(y, x) for y in slicing.tile_origins(300, 128, 0.25)
                                                 for x in slicing.tile_origins(500, 128, 0.25)}
    cover = torch.zeros(300, 500, dtype=torch.bool)
    for y, x, th, tw in tiles:
        cover[y : y + th, x : x + tw] = True
    assert cover.all() and tile_boxes(50, 60, 128) == [(0, 0, 50, 60)]
    with pytest.raises(ValueError, match="overlap"):
        tile_boxes(300, 500, 128, 1.0)


def test_fused_tiles_equal_the_whole_image():
    """Blobs cut by tile borders are fused back whole: the same boxes and the same pixels as one forward
    (the overlap, 29 px or more, exceeds the blobs, so that each piece overlaps its whole blob)."""
    im = _image(300, 420, 25)
    whole = Blobs()([im])[0]
    for overlap in (0.3, 0.5):
        sliced = sliced_detect(Blobs(), im, 96, overlap, merge="fuse", iou=0.9)
        assert isinstance(sliced["masks"], CropMasks) and len(sliced["boxes"]) == len(whole["boxes"])
        (bw, ow), (bs, os_) = _key(whole), _key(sliced)
        assert torch.equal(bw, bs)
        assert torch.equal(sliced["masks"].dense()[os_], whole["masks"][ow, 0])


@pytest.mark.parametrize("merge", ["nms", "fuse"])
def test_an_image_without_objects(merge):
    out = sliced_detect(Blobs(), torch.zeros(3, 100, 150), 64, 0.25, merge=merge)
    assert out["boxes"].shape == (0, 4) and len(out["masks"]) == 0 and out["masks"].id_map().shape == (100, 150)


def test_nms_merges_the_copies_that_overlapping_tiles_see():
    im = _image(256, 256, 12, seed=1)
    whole = Blobs()([im])[0]
    raw = sliced_detect(Blobs(), im, 128, 0.5, merge="nms", iou=1.01)  # nothing merged
    nms = sliced_detect(Blobs(), im, 128, 0.5, merge="nms", iou=0.5)
    assert len(raw["boxes"]) > len(nms["boxes"]) >= len(whole["boxes"])
    # every object is found (NMS keeps the best-scoring copy, which may be a piece cut by a tile border:
    # that is what merge="fuse" repairs)
    iou = box_iou(whole["boxes"], nms["boxes"])
    assert bool((iou.max(1).values > 0.5).all())
    assert torch.all(nms["scores"][:-1] >= nms["scores"][1:])


def test_fusion_is_class_wise_and_unions_boxes_and_masks():
    m = CropMasks([torch.ones(2, 4, dtype=torch.bool), torch.ones(3, 2, dtype=torch.bool),
                   torch.ones(2, 2, dtype=torch.bool)], torch.tensor([[0, 0], [0, 3], [0, 0]]), (6, 8))
    det = {"boxes": torch.tensor([[0.0, 0, 4, 2], [3, 0, 5, 3], [0, 0, 2, 2]]), "scores": torch.tensor([0.9, 0.8, 0.7]),
           "labels": torch.tensor([0, 0, 1]), "masks": m}
    out = merge_detections(det, "fuse", iou=0.3)  # box 1 shares 2 of its 6 pixels with box 0
    assert out["labels"].tolist() == [0, 1] and out["boxes"][0].tolist() == [0, 0, 5, 3]
    union = out["masks"].mask(0)
    assert union.sum() == 8 + 6 - 2 and union[:3, 3:5].all() and not union[2, :3].any()
    assert merge_detections(det, "fuse", iou=0.4)["labels"].tolist() == [0, 0, 1]
    with pytest.raises(ValueError, match="merge must be one of"):
        merge_detections(det, "wbf")


def test_fusion_with_tile_borders_drops_pieces_of_whole_objects_and_unions_the_rest():
    det = {"boxes": torch.tensor([[10.0, 10, 20, 20], [0, 0, 100, 100], [40, 0, 50, 10], [45, 0, 55, 10]]),
           "scores": torch.tensor([0.9, 0.3, 0.8, 0.7]), "labels": torch.zeros(4, dtype=torch.int64)}
    cut = torch.tensor([False, True, True, True])
    out = merge_detections(det, "fuse", iou=0.5, cut=cut)
    # the large cut box lies around a whole detection: dropped, not fused with it; the two pieces fuse
    assert sorted(out["boxes"].tolist()) == [[10, 10, 20, 20], [40, 0, 55, 10]]
    assert merge_detections(det, "fuse", iou=0.5)["boxes"].tolist() == [[0, 0, 100, 100]]  # no borders known


def test_crop_masks_index_paste_and_id_map():
    masks = torch.zeros(3, 1, 20, 30)
    masks[0, 0, 2:5, 3:9] = 0.9
    masks[1, 0, 4:10, 5:7] = 0.8
    cm = CropMasks.from_masks(masks, (10, 40), (50, 80))
    assert [tuple(c.shape) for c in cm.crops] == [(3, 6), (6, 2), (0, 0)] and cm.nbytes == 18 + 12
    assert cm.origins.tolist() == [[12, 43], [14, 45], [10, 40]]
    full = torch.zeros(3, 50, 80)
    full[:, 10:30, 40:70] = masks[:, 0] > 0.5
    assert torch.equal(cm.dense(), full) and torch.equal(cm.mask(1), full[1].bool())
    sub = cm[torch.tensor([1, 0])]
    assert torch.equal(sub.dense(), full[[1, 0]])
    ids = sub.id_map()
    assert ids[14, 45] == 1 and ids[12, 43] == 2 and ids.max() == 2 and (ids > 0).sum() == 30 - 2  # 1 on top


def test_predict_and_write_with_tiles(tmp_path):
    im = _image(200, 260, 10, seed=2)
    res = inference.predict(Blobs(), im, tile=96, overlap=0.25, merge="fuse", nms_iou=0.9)
    assert isinstance(res["masks"], CropMasks)
    whole = inference.predict(Blobs(), im)
    written = infer_files.write_prediction(res, im, tmp_path, "s", ["blob"], score_thresh=0.0)
    infer_files.write_prediction(whole, im, tmp_path, "w", ["blob"], score_thresh=0.0)
    a = np.array(Image.open(tmp_path / "s_masks.png")) > 0
    b = np.array(Image.open(tmp_path / "w_masks.png")) > 0
    assert np.array_equal(a, b) and a.any() and len(written) == 3
    assert len(json.loads((tmp_path / "s.json").read_text())["boxes"]) == len(whole["boxes"])
    # the dense layout is still what detect() hands the evaluator
    dense = inference.detect(Blobs(), [im], tile=96, overlap=0.25, merge="fuse", nms_iou=0.9)[0]
    assert dense["masks"].shape == (len(whole["boxes"]), 200, 260)


def test_prelabels_of_crop_masks_equal_the_dense_ones(tmp_path):
    im = _image(120, 150, 6, seed=3)
    path = tmp_path / "a.png"
    Image.fromarray((im.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    sliced = inference.predict(Blobs(), im, tile=64, overlap=0.5, merge="fuse", nms_iou=0.9)
    dense = {**sliced, "masks": sliced["masks"].dense()}
    got = []
    for res in (sliced, dense):
        p = Predictions(INSTANCE_MASKS, ["blob"], score_thresh=0.0)
        p.add(path, res)
        got.append([(o.label, o.segmentation, o.score) for o in p.objects(0, 120, 150)])
    assert got[0] == got[1] and all(seg for _, seg, _ in got[0])


MEMORY = textwrap.dedent("""
    import resource, sys, tempfile, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_slicing import Blobs
    from segzoo import infer_files, inference
    im = torch.zeros(3, 1536, 1536)
    for i in range(18):
        for j in range(18):  # 324 blobs, 12 x 12 px
            im[:, 20 + 85 * i : 32 + 85 * i, 20 + 85 * j : 32 + 85 * j] = 1
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = inference.predict(Blobs(), im, tile=256, overlap=0.25, merge="fuse")
    infer_files.write_prediction(res, im, tempfile.mkdtemp(), "big", score_thresh=0.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(len(res["boxes"]), (peak - base) / 1024)
""")


def test_memory_of_sliced_instance_inference_is_bounded():
    """324 instances on a 2.4-megapixel image: full-size float masks would be 3 GB (bool 0.76 GB); the
    peak must stay within 250 MB of what the image and the interpreter already hold."""
    out = subprocess.run([sys.executable, "-c", MEMORY.format(tests=str(ROOT / "tests"))], capture_output=True,
                         text=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                                                   "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    n, extra_mb = out.stdout.split()
    assert int(n) == 324
    assert float(extra_mb) < 250, f"sliced inference grew the peak memory by {extra_mb} MB"


# ------------------------------------------------------------------ sliced training crops (data.augment.crop_mode)


def _huge_sample(box=(900, 900, 910, 910), size=1000):
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.zeros(3, size, size, dtype=torch.uint8))
    mask = torch.zeros(1, size, size, dtype=torch.uint8)
    x0, y0, x1, y1 = box
    mask[0, y0:y1, x0:x1] = 1
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY",
                                                canvas_size=(size, size)),
              "labels": torch.tensor([0]), "masks": tv_tensors.Mask(mask)}
    return image, target


@pytest.mark.parametrize("mode", ["resized", "random", "object-centred"])
def test_crop_modes_of_the_detection_preset(mode):
    from segzoo.data.transforms import instance_transforms

    torch.manual_seed(0)
    tf = instance_transforms(True, size=128, scale=(1.0, 1.0), hflip=0.0, color_jitter=0.0, crop_mode=mode)
    found = []
    for _ in range(20):
        image, target = tf(*_huge_sample())
        assert tuple(image.shape) == (3, 128, 128)
        found.append(len(target["boxes"]))
        if len(target["boxes"]):
            b = target["boxes"][0]
            assert mode == "resized" or (float(b[2] - b[0]), float(b[3] - b[1]), int(target["masks"].sum())) == \
                (10.0, 10.0, 100)
    if mode == "object-centred":
        assert found == [1] * 20  # the one small object, at its own resolution, in every crop
    elif mode == "random":
        assert sum(found) < 5  # native-resolution slices: most of them hold nothing
    else:
        assert sum(found) == 0  # the whole 1000 px image fitted to 128 px: a 10 px crown is 1.3 px, dropped


def test_object_centred_crop_of_a_box_larger_than_the_crop_lies_inside_it():
    from segzoo.data.transforms import instance_transforms
    from segzoo.data.transforms.augment import ObjectCentredCrop

    torch.manual_seed(0)
    image, target = _huge_sample(box=(100, 200, 700, 900))
    for _ in range(10):
        params = ObjectCentredCrop(256).make_params([image, target["boxes"]])
        assert 100 <= params["left"] <= 700 - 256 and 200 <= params["top"] <= 900 - 256
    with pytest.raises(ValueError, match="crop_mode must be one of"):
        instance_transforms(True, crop_mode="centre")
