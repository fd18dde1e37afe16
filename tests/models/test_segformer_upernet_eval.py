"""SegFormer and UPerNet under the evaluation protocols (sliding window, flip and multi-scale TTA): each window and
view runs at a size that is no multiple of 32 and the blend equals the hand computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.config import EvalConfig
from segzoo.inference import semantic_probs, tile_origins
from segzoo.tasks import get_task

SMALL = {"segformer_b0": {}, "upernet_resnet50": {"backbone": "resnet18", "channels": 32, "aux_channels": 16}}


@pytest.mark.parametrize("name", list(SMALL))
def test_sliding_window_and_tta_equal_hand_computation(name):
    torch.manual_seed(0)
    model = segzoo.build(name, num_classes=3, **SMALL[name]).eval()
    x = torch.rand(1, 3, 56, 72)
    with torch.no_grad():
        protocol = get_task("semantic").protocol
        got = semantic_probs(model, x, **protocol(EvalConfig(mode="slide", crop=(40, 40), stride=(24, 24))))
        total, count = torch.zeros(1, 3, 56, 72), torch.zeros(1, 1, 56, 72)
        for y in tile_origins(56, 40, 0, 24):
            for x0 in tile_origins(72, 40, 0, 24):
                total[..., y:y + 40, x0:x0 + 40] += model(x[..., y:y + 40, x0:x0 + 40])
                count[..., y:y + 40, x0:x0 + 40] += 1
        torch.testing.assert_close(got, (total / count).softmax(1), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, model(x).softmax(1), atol=1e-4)  # the windows really differ from one pass

        got = semantic_probs(model, x, **protocol(EvalConfig(scales=(0.75, 1.0), flip=True)))
        views = []
        for s in (0.75, 1.0):
            xs = x if s == 1.0 else F.interpolate(x, size=(42, 54), mode="bilinear", align_corners=False,
                                                  antialias=True)
            for flip in (False, True):
                lg = model(xs.flip(-1) if flip else xs)
                lg = lg.flip(-1) if flip else lg
                views.append(F.interpolate(lg, size=(56, 72), mode="bilinear", align_corners=False).softmax(1))
        torch.testing.assert_close(got, sum(views) / 4, rtol=1e-5, atol=1e-5)
