"""CenterNet's training targets and losses against the official code's rules, re-stated here.

The reference below is written from the paper ("Objects as Points") and the rules of the
official code (``ctdet`` dataset, ``gaussian_radius``, ``draw_umich_gaussian``, ``FocalLoss``,
``RegL1Loss``), one object at a time as the official data loader does:

* the first ``max_objs`` annotations of an image make targets (128 in its COCO setting);
* a box in output cells is clipped to ``[0, W_out - 1] x [0, H_out - 1]``, kept if its width
  and height are positive; its centre ``c`` (float32) marks the cell ``int(c)``;
* the peak radius is ``max(0, int(r))`` of CornerNet's rule at min overlap 0.7 on the
  rounded-up height and width, as the official function computes it: the smallest of three
  quadratics' ``(b + sqrt(b^2 - 4ac)) / 2`` (its known quirk: not the textbook ``/ 2a``
  smaller root); the peak is ``exp(-(dx^2 + dy^2) / (2 sigma^2))`` with ``sigma = (2r+1)/6``
  on the ``(2r+1)^2`` window cut by the map, merged into the class map by maximum;
* losses: penalty-reduced focal loss (alpha 2, beta 4, probabilities clamped to
  ``[1e-4, 1 - 1e-4]``) over the number of peaks (the negative sum alone without peaks); L1
  on width/height and on the offset ``c - int(c)`` at the centre cells, summed over
  ``2 * #objects + 1e-4``; total ``hm + 0.1 wh + 1 off``.

segzoo clips boxes to the image instead of the last output cell (documented in
:mod:`segzoo.detection.centernet`), so the exact comparison uses boxes inside the last cell;
:func:`test_border_boxes_keep_their_true_size` checks the documented difference.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import segzoo
from segzoo.detection import centernet as ct

STRIDE = 4


def official_radius(h: float, w: float, overlap: float = 0.7) -> float:
    cases = [  # (a, b, c) of the three CornerNet cases
        (1.0, h + w, w * h * (1 - overlap) / (1 + overlap)),
        (4.0, 2 * (h + w), (1 - overlap) * w * h),
        (4 * overlap, -2 * overlap * (h + w), (overlap - 1) * w * h),
    ]
    return min((b + math.sqrt(b * b - 4 * a * c)) / 2 for a, b, c in cases)


def reference_targets(boxes: np.ndarray, labels: list[int], num_classes: int, oh: int, ow: int,
                      max_objs: int | None) -> dict:
    """One image: ``boxes`` (K x 4) in output cells -> heatmap, and per kept object its cell
    index, size and offset."""
    hm = np.zeros((num_classes, oh, ow), dtype=np.float32)
    index, size, offset = [], [], []
    for k in range(len(boxes) if max_objs is None else min(len(boxes), max_objs)):
        b = boxes[k].astype(np.float32).copy()
        b[[0, 2]] = np.clip(b[[0, 2]], 0, ow - 1)
        b[[1, 3]] = np.clip(b[[1, 3]], 0, oh - 1)
        h, w = b[3] - b[1], b[2] - b[0]
        if not (h > 0 and w > 0):
            continue
        r = max(0, int(official_radius(math.ceil(h), math.ceil(w))))
        centre = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2], dtype=np.float32)
        cx, cy = (int(v) for v in centre)
        sigma = (2 * r + 1) / 6
        for y in range(max(0, cy - r), min(oh, cy + r + 1)):
            for x in range(max(0, cx - r), min(ow, cx + r + 1)):
                peak = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
                hm[labels[k], y, x] = max(hm[labels[k], y, x], peak)
        index.append(cy * ow + cx)
        size.append([w, h])
        offset.append(centre - np.array([cx, cy], dtype=np.float32))
    return {"heatmap": hm, "index": index, "size": size, "offset": offset}


def reference_losses(maps: dict[str, torch.Tensor], refs: list[dict]) -> dict[str, float]:
    p = torch.sigmoid(maps["heatmap"].double()).clamp(1e-4, 1 - 1e-4)
    gt = torch.from_numpy(np.stack([r["heatmap"] for r in refs])).double()
    pos = gt == 1
    pos_sum = (torch.log(p) * (1 - p) ** 2)[pos].sum()
    neg_sum = (torch.log(1 - p) * p ** 2 * (1 - gt) ** 4)[~pos].sum()
    num_pos = int(pos.sum())
    hm = -neg_sum if num_pos == 0 else -(pos_sum + neg_sum) / num_pos
    out = {"loss_heatmap": float(hm)}
    for key, name in (("size", "loss_size"), ("offset", "loss_offset")):
        total, count = 0.0, 0
        for i, r in enumerate(refs):
            flat = maps[key][i].double().flatten(1)  # (2, H*W)
            for idx, target in zip(r["index"], r[key]):
                total += float((flat[:, idx] - torch.tensor(np.asarray(target), dtype=torch.float64)).abs().sum())
                count += 2
        out[name] = total / (count + 1e-4)
    out["loss"] = out["loss_heatmap"] + 0.1 * out["loss_size"] + out["loss_offset"]
    return out


def _objects() -> tuple[list[list[list[float]]], list[list[int]]]:
    """Input-pixel boxes inside the last output cell (the map is 24 x 32 for 96 x 128 images):
    overlapping same-class objects, two centres in one cell, tiny (radius 0) and large ones,
    fractional coordinates; the first image has more objects than the cap used below."""
    boxes = [
        [[8.0, 8.0, 48.0, 48.0], [10.5, 9.0, 46.0, 47.5], [60.2, 4.0, 66.0, 12.6], [70.0, 30.0, 123.0, 91.0],
         [3.0, 60.0, 5.5, 62.0], [90.0, 10.0, 100.0, 20.0], [91.0, 11.0, 99.0, 19.0], [30.0, 70.0, 62.0, 90.0]],
        [[0.0, 0.0, 40.0, 30.0], [50.3, 40.7, 57.9, 77.2], [101.0, 60.0, 123.9, 91.9]],
        [],
    ]
    labels = [[0, 0, 1, 2, 1, 2, 2, 0], [1, 1, 0], []]
    return boxes, labels


@pytest.mark.parametrize("max_objects", [None, 5])
def test_targets_and_losses_equal_the_official_rules(max_objects):
    boxes, labels = _objects()
    model = segzoo.build("centernet_resnet18", num_classes=3, neck_channels=(32, 32, 32), head_conv=16,
                         max_objects=max_objects).eval()
    for m in model.head.modules():  # spread the heads so that every term of the losses counts
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=0.3)
    images = torch.rand(3, 3, 96, 128)
    targets = [{"boxes": torch.tensor(b).reshape(-1, 4), "labels": torch.tensor(lab, dtype=torch.int64)}
               for b, lab in zip(boxes, labels)]
    oh, ow = 96 // STRIDE, 128 // STRIDE
    refs = [reference_targets(np.asarray(b, dtype=np.float32).reshape(-1, 4) / STRIDE, lab, 3, oh, ow, max_objects)
            for b, lab in zip(boxes, labels)]
    # targets
    flat_boxes = torch.cat([t["boxes"] for t in targets])
    image_idx = torch.tensor([i for i, b in enumerate(boxes) for _ in b])
    enc = ct.encode_targets(flat_boxes, torch.cat([t["labels"] for t in targets]), image_idx,
                            torch.tensor([[96, 128]] * 3), num_classes=3, out_size=(oh, ow), stride=STRIDE,
                            max_objects=max_objects)
    torch.testing.assert_close(enc["heatmap"], torch.from_numpy(np.stack([r["heatmap"] for r in refs])),
                               atol=1e-6, rtol=0)
    assert enc["index"].tolist() == [i * oh * ow + j for i, r in enumerate(refs) for j in r["index"]]
    for key in ("size", "offset"):
        expected = torch.tensor(np.asarray([v for r in refs for v in r[key]], dtype=np.float32))
        torch.testing.assert_close(enc[key], expected, atol=1e-6, rtol=0)
    kept = sum(len(r["index"]) for r in refs)
    assert kept == (11 if max_objects is None else 8)  # the cap applies per image, first objects first
    # losses, from the model's own maps
    with torch.no_grad():
        losses = model(images, targets)
        maps = model.forward_maps(model.preprocess(images)[0])
    expected = reference_losses(maps, refs)
    for k, v in expected.items():
        assert losses[k].item() == pytest.approx(v, rel=1e-5), k


def test_losses_without_objects_equal_the_official_rules():
    model = segzoo.build("centernet_resnet18", num_classes=2, neck_channels=(16, 16, 16), head_conv=8).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        losses = model(images, [{}, {}])
        maps = model.forward_maps(model.preprocess(images)[0])
    refs = [reference_targets(np.zeros((0, 4), np.float32), [], 2, 16, 16, None)] * 2
    expected = reference_losses(maps, refs)
    assert losses["loss_heatmap"].item() == pytest.approx(expected["loss_heatmap"], rel=1e-5)
    assert losses["loss_size"].item() == 0 and losses["loss_offset"].item() == 0


def test_max_objects_is_an_argument_with_segzoos_default():
    assert segzoo.build("centernet_resnet18", num_classes=2).max_objects is None  # every object
    assert segzoo.build("centernet_resnet18", num_classes=2, max_objects=128).spec.kwargs["max_objects"] == 128
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_objects"):
            segzoo.build("centernet_resnet18", num_classes=2, max_objects=bad)


def test_border_boxes_keep_their_true_size():
    # segzoo's deliberate difference: a box touching the right border keeps its width, where
    # the official code clips it to the last output cell (one cell narrower)
    box = np.array([[100.0, 40.0, 128.0, 60.0]], dtype=np.float32)
    enc = ct.encode_targets(torch.from_numpy(box), torch.tensor([0]), torch.tensor([0]),
                            torch.tensor([[96, 128]]), num_classes=1, out_size=(24, 32), stride=STRIDE)
    ref = reference_targets(box / STRIDE, [0], 1, 24, 32, None)
    assert enc["size"][0].tolist() == [7.0, 5.0]
    assert ref["size"][0] == pytest.approx([6.0, 5.0])
