"""Property-based tests (hypothesis) of the detection building blocks in segzoo/detection."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segzoo.detection import centernet as ct
from segzoo.detection.anchors import AnchorGenerator
from segzoo.detection.box_coder import BoxCoder
from segzoo.detection.boxes import pairwise_iou
from segzoo.detection.postprocess import paste_masks

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@st.composite
def boxes(draw, n_min=1, n_max=8, lo=-50.0, hi=200.0, min_size=0.0, max_size=100.0):
    """``(K, 4)`` float64 xyxy boxes with x2 - x1, y2 - y1 in [min_size, max_size] (or 0 when min_size is 0)."""
    n = draw(st.integers(n_min, n_max))
    coord = st.floats(lo, hi, allow_nan=False, allow_infinity=False)
    size = st.floats(max(min_size, 1e-3), max_size)  # pixel boxes: no sizes like 1e-300
    if min_size == 0:
        size = st.one_of(st.just(0.0), size)  # empty boxes too
    rows = draw(st.lists(st.tuples(coord, coord, size, size), min_size=n, max_size=n))
    return torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float64).reshape(-1, 4)


# ---------------------------------------------------------------------------- box coder

WEIGHTS = st.sampled_from([(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0)])


@SETTINGS
@given(data=st.data(), weights=WEIGHTS)
def test_box_coder_decode_inverts_encode(data, weights):
    targets = data.draw(boxes(min_size=0.5, max_size=60.0))
    refs = data.draw(boxes(n_min=len(targets), n_max=len(targets), min_size=1.0, max_size=60.0))
    coder = BoxCoder(weights)
    deltas = coder.encode(targets, refs)
    assert deltas.shape == targets.shape and torch.isfinite(deltas).all()
    torch.testing.assert_close(coder.decode(deltas, refs), targets, rtol=0, atol=1e-9)
    # identical boxes encode to zero offsets
    torch.testing.assert_close(coder.encode(refs, refs), torch.zeros_like(refs), rtol=0, atol=1e-12)


@SETTINGS
@given(ref=boxes(n_min=1, n_max=4, min_size=1.0, max_size=30.0), dw=st.floats(5.0, 1e4), weights=WEIGHTS)
def test_box_coder_clamps_huge_sizes(ref, dw, weights):
    coder = BoxCoder(weights)
    deltas = torch.zeros_like(ref)
    deltas[:, 2] = dw * weights[2]  # log-width far beyond the clip
    out = coder.decode(deltas, ref)
    assert torch.isfinite(out).all()
    width = out[:, 2] - out[:, 0]
    expected = (ref[:, 2] - ref[:, 0]) * math.exp(min(dw, coder.clip))
    torch.testing.assert_close(width, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out[:, 1::2], ref[:, 1::2], rtol=0, atol=1e-9)  # y untouched


# ---------------------------------------------------------------------------- IoU


def iou_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every pair, one pair at a time: the definition, written out."""
    out = np.zeros((len(a), len(b)))
    for i, (ax1, ay1, ax2, ay2) in enumerate(a):
        for j, (bx1, by1, bx2, by2) in enumerate(b):
            iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
            ih = max(0.0, min(ay2, by2) - max(ay1, by1))
            inter = iw * ih
            union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
            out[i, j] = inter / union if union > 0 else 0.0
    return out


@SETTINGS
@given(a=boxes(n_min=0, max_size=80.0), b=boxes(n_min=0, max_size=80.0))
def test_iou_matches_direct_computation(a, b):
    got = pairwise_iou(a, b)
    assert got.shape == (len(a), len(b))
    np.testing.assert_allclose(got.numpy(), iou_numpy(a.numpy(), b.numpy()), rtol=1e-9, atol=1e-12)
    assert ((got >= 0) & (got <= 1 + 1e-12)).all()
    torch.testing.assert_close(pairwise_iou(b, a), got.T)  # symmetric


@SETTINGS
@given(data=st.data(), n=st.integers(1, 3))
def test_batched_iou_matches_per_image(data, n):
    k, m = data.draw(st.integers(0, 5)), data.draw(st.integers(0, 5))
    a = torch.stack([data.draw(boxes(n_min=k, n_max=k, max_size=60.0)) for _ in range(n)])  # (N, K, 4)
    b = torch.stack([data.draw(boxes(n_min=m, n_max=m, max_size=60.0)) for _ in range(n)])
    got = pairwise_iou(a, b)
    assert got.shape == (n, k, m)
    for i in range(n):
        np.testing.assert_allclose(got[i].numpy(), iou_numpy(a[i].numpy(), b[i].numpy()), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(a=boxes(min_size=0.01, max_size=80.0))
def test_iou_of_a_box_with_itself_is_one(a):
    torch.testing.assert_close(pairwise_iou(a, a).diagonal(), torch.ones(len(a), dtype=a.dtype))


# ---------------------------------------------------------------------------- anchors


@SETTINGS
@given(
    sizes=st.lists(st.sampled_from([8, 16, 24, 32, 48, 64, 128, 256]), min_size=1, max_size=4),
    ratios=st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=3, unique=True),
    image=st.tuples(st.integers(16, 256), st.integers(16, 256)),
    data=st.data(),
)
def test_anchor_generator_counts_centres_and_shapes(sizes, ratios, image, data):
    strides = [2 ** (2 + i) for i in range(len(sizes))]
    shapes = [(max(1, math.ceil(image[0] / s)), max(1, math.ceil(image[1] / s))) for s in strides]
    gen = AnchorGenerator(sizes, ratios)
    anchors = gen(image, shapes)
    assert len(anchors) == len(sizes) and gen.num_anchors_per_location == len(ratios)
    for level, (size, (fh, fw)) in enumerate(zip(sizes, shapes)):
        a = anchors[level]
        assert a.shape == (fh * fw * len(ratios), 4)
        grid = a.view(fh, fw, len(ratios), 4)  # ordered (row, column, ratio)
        sy, sx = image[0] // fh, image[1] // fw
        row, col = data.draw(st.integers(0, fh - 1)), data.draw(st.integers(0, fw - 1))
        centre = (grid[row, col, :, :2] + grid[row, col, :, 2:]) / 2  # (A, 2) x, y
        torch.testing.assert_close(centre, torch.tensor([[col * sx, row * sy]] * len(ratios), dtype=a.dtype))
        w = grid[row, col, :, 2] - grid[row, col, :, 0]
        h = grid[row, col, :, 3] - grid[row, col, :, 1]
        r = torch.tensor(ratios)
        # integer corners: each side is within one pixel of size / sqrt(r) (width), size * sqrt(r) (height)
        assert ((w - size / r.sqrt()).abs() <= 1 + 1e-4).all() and ((h - size * r.sqrt()).abs() <= 1 + 1e-4).all()
        assert (a == a.round()).all()
        # every position has the same anchors, shifted
        torch.testing.assert_close(grid - grid[:1, :1], (grid - grid[:1, :1])[..., :2].repeat(1, 1, 1, 2))


# ---------------------------------------------------------------------------- mask paste


@SETTINGS
@given(data=st.data(), m=st.sampled_from([7, 14, 28]))
def test_pasted_full_mask_covers_the_box(data, m):
    height, width = data.draw(st.integers(8, 80)), data.draw(st.integers(8, 80))
    n = data.draw(st.integers(1, 5))
    rows = []
    for _ in range(n):
        x1, y1 = data.draw(st.floats(0, width - 4)), data.draw(st.floats(0, height - 4))
        x2, y2 = data.draw(st.floats(x1 + 4, width)), data.draw(st.floats(y1 + 4, height))
        rows.append([x1, y1, x2, y2])
    box = torch.tensor(rows)
    pasted = paste_masks(torch.ones(n, m, m), box, height, width)
    assert pasted.shape == (n, height, width) and ((pasted >= 0) & (pasted <= 1 + 1e-6)).all()
    ys = torch.arange(height).view(1, height, 1) + 0.5  # pixel centres
    xs = torch.arange(width).view(1, 1, width) + 0.5
    b = box[:, :, None, None]

    def within(margin_x, margin_y):  # pixels whose centre lies in the box grown by the margins
        return ((xs >= b[:, 0] - margin_x) & (xs <= b[:, 2] + margin_x)
                & (ys >= b[:, 1] - margin_y) & (ys <= b[:, 3] + margin_y))

    # the paste is separable: across the box's middle row and column, thresholded at 0.5, it is the
    # box up to the one pixel that integer paste bounds move it (corners are rounded by the blend)
    for i, (x1, y1, x2, y2) in enumerate(rows):
        row, col = pasted[i, int((y1 + y2) / 2)], pasted[i, :, int((x1 + x2) / 2)]
        for profile, lo, hi, centres in ((row, x1, x2, xs.flatten()), (col, y1, y2, ys.flatten())):
            assert profile.max() == pytest.approx(1.0, abs=1e-6)
            assert (profile[(centres >= lo + 1) & (centres <= hi - 1)] > 0.5).all()
            assert (profile[(centres < lo - 1) | (centres > hi + 1)] < 0.5).all()
    # the blend from the mask's one-cell zero border spans box side / m pixels on each side
    blend_x, blend_y = (b[:, 2] - b[:, 0]) / m + 1, (b[:, 3] - b[:, 1]) / m + 1
    assert (pasted[within(-blend_x, -blend_y)] > 0.999).all() and (pasted[~within(blend_x, blend_y)] == 0).all()
    # the same as torchvision's reference paste, for any mask content
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    probs = torch.rand(n, m, m, generator=torch.Generator().manual_seed(n))
    ref = paste_masks_in_image(probs[:, None], box, (height, width))[:, 0]
    torch.testing.assert_close(paste_masks(probs, box, height, width), ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- CenterNet targets


@SETTINGS
@given(data=st.data(), stride=st.sampled_from([1, 2, 4]), num_classes=st.integers(1, 4))
def test_centernet_encode_then_decode_is_identity(data, stride, num_classes):
    out = (data.draw(st.integers(4, 16)), data.draw(st.integers(4, 16)))
    n = data.draw(st.integers(1, 3))
    sizes = torch.tensor([[out[0] * stride, out[1] * stride]] * n)
    boxes_, labels, idx = [], [], []
    for i in range(n):
        k = data.draw(st.integers(0, 5))
        cells = data.draw(st.lists(st.integers(0, out[0] * out[1] - 1), min_size=k, max_size=k, unique=True))
        for cell in cells:  # one object per centre cell, fully inside the image
            cx = (cell % out[1] + data.draw(st.floats(0.05, 0.95))) * stride
            cy = (cell // out[1] + data.draw(st.floats(0.05, 0.95))) * stride
            hw = min(cx, cy, out[1] * stride - cx, out[0] * stride - cy)
            w, h = data.draw(st.floats(0.02, 2 * hw)), data.draw(st.floats(0.02, 2 * hw))
            boxes_.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            labels.append(data.draw(st.integers(0, num_classes - 1)))
            idx.append(i)
    boxes_t = torch.tensor(boxes_, dtype=torch.float32).reshape(-1, 4)
    labels_t, idx_t = torch.tensor(labels, dtype=torch.int64), torch.tensor(idx, dtype=torch.int64)
    enc = ct.encode_targets(boxes_t, labels_t, idx_t, sizes, num_classes=num_classes, out_size=out, stride=stride)
    assert enc["heatmap"].shape == (n, num_classes, *out) and len(enc["index"]) == len(boxes_t)
    assert enc["heatmap"].max() <= 1 and (enc["heatmap"] == 1).sum() == len(boxes_t)  # one peak per object
    size_map, off_map = torch.zeros(n, 2, *out), torch.zeros(n, 2, *out)
    img, cell = enc["index"] // (out[0] * out[1]), enc["index"] % (out[0] * out[1])
    size_map[img, :, cell // out[1], cell % out[1]] = enc["size"]  # the maps a perfect network predicts
    off_map[img, :, cell // out[1], cell % out[1]] = enc["offset"]
    k = max(1, int(torch.bincount(idx_t, minlength=n).max()) if len(idx_t) else 1)
    dec_boxes, scores, dec_labels = ct.decode(enc["heatmap"], size_map, off_map, stride, k=k)
    for i in range(n):
        mine = idx_t == i
        found = scores[i] == 1
        assert int(found.sum()) == int(mine.sum())
        want = sorted(zip(centre_cells(boxes_t[mine], stride), boxes_t[mine].tolist(), labels_t[mine].tolist()))
        got = sorted(zip(centre_cells(dec_boxes[i][found], stride), dec_boxes[i][found].tolist(),
                         dec_labels[i][found].tolist()))
        assert [(c, lab) for c, _, lab in got] == [(c, lab) for c, _, lab in want]
        for (_, gb, _), (_, wb, _) in zip(got, want):
            assert gb == pytest.approx(wb, abs=1e-4 * stride * max(out))


def centre_cells(b: torch.Tensor, stride: int) -> list[tuple[int, int]]:
    """(row, column) of the output cell holding each box's centre."""
    cx, cy = (b[:, 0] + b[:, 2]) / 2 / stride, (b[:, 1] + b[:, 3]) / 2 / stride
    return list(zip(cy.floor().long().tolist(), cx.floor().long().tolist()))
