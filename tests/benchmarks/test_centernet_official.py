"""The benchmark's restatement of the official CenterNet res_18 / resdcn_18 equals segzoo on mapped weights.

This is what makes it a fair anchor: the same network, the same decoding, on the same weights
(benchmarks/speed/centernet_official.py; speed is measured by the benchmark, never here).
"""

from pathlib import Path

import pytest
import torch
from scipy.optimize import linear_sum_assignment

import segzoo
from benchmarks.speed.centernet_official import (
    OfficialCtdet,
    ctdet_decode,
    official_from_segzoo,
    official_input,
    official_state_from_segzoo,
)
from segzoo.convert import from_centernet_official

DATA = Path(__file__).resolve().parents[1] / "fixtures"
ARCHS = {"res_18": ("centernet_resnet18", False), "resdcn_18": ("centernet_resdcn18", True)}


def _fixture(arch):
    out = {}
    for line in (DATA / f"centernet_{arch}.txt").read_text().splitlines():
        key, _, shape = line.partition(" ")
        out[key] = tuple(int(s) for s in shape.split(",")) if shape else ()
    return out


def _randomize(state, seed, heatmap_bias="hm.2.bias"):
    """Random values of the official tensors: BatchNorm statistics and DCN offsets included."""
    g = torch.Generator().manual_seed(seed)
    new = {}
    for key, v in state.items():
        shape = v.shape
        if key.endswith("num_batches_tracked"):
            new[key] = v
        elif key.endswith("running_var"):
            new[key] = torch.rand(shape, generator=g) * 0.6 + 0.7
        elif key.endswith(("running_mean", ".bias")):
            new[key] = torch.randn(shape, generator=g) * 0.2
        elif v.dim() == 1:
            new[key] = 1 + torch.randn(shape, generator=g) * 0.2
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            std = (0.1 if "conv_offset_mask" in key else 1.0) / fan_in ** 0.5  # offsets of about a pixel
            new[key] = torch.randn(shape, generator=g) * std
    new[heatmap_bias] = new[heatmap_bias] - 2.19
    return new


@pytest.mark.parametrize("arch", list(ARCHS))
def test_restatement_has_the_official_layout(arch):
    _, dcn = ARCHS[arch]
    own = {k: tuple(v.shape) for k, v in OfficialCtdet(dcn=dcn).net.state_dict().items()}
    assert own == _fixture(arch)


def _compare(official_dets, segzoo_out, size):
    """The same 100 detections; equal scores within rounding may come in either order, so rows are paired
    (same label, nearest box and score) before comparing."""
    h, w = size
    boxes = official_dets[0, :, :4].clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)  # segzoo clips to the image; the official post_process does not
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    scores, labels = official_dets[0, :, 4], official_dets[0, :, 5].long()
    out = segzoo_out[0]
    assert len(out["scores"]) == 100
    torch.testing.assert_close(out["scores"], scores, rtol=1e-4, atol=1e-5)  # both sorted
    cost = (torch.cdist(boxes, out["boxes"], p=1) + 1e3 * (scores[:, None] - out["scores"][None]).abs()
            + 1e6 * (labels[:, None] != out["labels"][None]))
    rows, cols = linear_sum_assignment(cost.numpy())
    assert (rows == cols).mean() > 0.9  # ties are rare: nearly every detection is at its own rank
    torch.testing.assert_close(out["labels"][cols], labels[rows])
    torch.testing.assert_close(out["boxes"][cols], boxes[rows], rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_official_checkpoint_converted_gives_the_same_detections(arch):
    # official weights -> restatement (load_state_dict) and -> segzoo (its converter): same boxes
    name, dcn = ARCHS[arch]
    official = OfficialCtdet(dcn=dcn).eval()
    state = _randomize(official.net.state_dict(), seed=1)
    official.net.load_state_dict(state)
    model = from_centernet_official(state, name).eval()
    torch.manual_seed(0)
    for size in ((96, 128), (64, 64)):
        images = torch.rand(1, 3, *size)
        with torch.no_grad():
            dets = official(official_input(images, model.pixel_mean, model.pixel_std))
            ours = model(images)
        _compare(dets, ours, size)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_segzoo_weights_mapped_into_the_restatement_give_the_same_detections(arch):
    # the benchmark's direction: a segzoo model's weights in the official layout
    name, _ = ARCHS[arch]
    torch.manual_seed(2)
    model = segzoo.build(name, num_classes=80).eval()
    model.load_state_dict(_randomize(model.state_dict(), seed=3, heatmap_bias="head.heatmap.2.bias"))
    official = official_from_segzoo(model)
    back = official_state_from_segzoo(model.state_dict())
    assert set(back) == set(_fixture(arch))
    images = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        _compare(official(official_input(images, model.pixel_mean, model.pixel_std)), model(images), (64, 96))
    with pytest.raises(ValueError, match="res_\\* and resdcn_\\*"):
        official_from_segzoo(segzoo.build("centernet_dla34_nodcn", num_classes=3))


def test_ctdet_decode_reads_the_peaks_per_class_then_overall():
    heat = torch.zeros(1, 3, 8, 8)
    heat[0, 2, 1, 5] = 0.9  # class 2 at (x 5, y 1)
    heat[0, 0, 6, 2] = 0.7
    heat[0, 0, 6, 3] = 0.6  # beside a higher score: not a peak
    wh = torch.zeros(1, 2, 8, 8)
    wh[0, :, 1, 5] = torch.tensor([2.0, 4.0])
    reg = torch.full((1, 2, 8, 8), 0.5)
    dets = ctdet_decode(heat, wh, reg, k=3)
    torch.testing.assert_close(dets[0, 0], torch.tensor([4.5, -0.5, 6.5, 3.5, 0.9, 2.0]))
    torch.testing.assert_close(dets[0, 1], torch.tensor([2.5, 6.5, 2.5, 6.5, 0.7, 0.0]))
    assert float(dets[0, 2, 4]) == 0.0
