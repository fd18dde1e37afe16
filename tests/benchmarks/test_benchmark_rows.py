"""The benchmark rows added for issue 30: Panoptic FPN's and HRNet-OCR's anchors, CenterNet's int8 column,
and --optimize timing inference cases only."""

from __future__ import annotations

import pytest
import torch

import segzoo
from benchmarks import speed as benchmark
from benchmarks.speed import Case
from benchmarks.speed.cases_detection import combine_panoptic


def test_optimize_runs_only_the_inference_cases(monkeypatch):
    built = []

    def cases(size=None):
        def build(mode):
            def make():
                built.append(mode)
                return segzoo.build("unet", num_classes=2, channels=(4, 8, 16, 32, 64))
            return make
        return [Case(name="tiny", build=build("infer"), make_input=lambda d: torch.rand(1, 3, 32, 32)),
                Case(name="tiny", mode="train", build=build("train"), make_input=lambda d: torch.rand(1, 3, 32, 32))]

    monkeypatch.setitem(benchmark._CASES, "tiny_probe", cases)
    rows = benchmark.run(["tiny_probe"], device="cpu", warmup=1, runs=1,
                         options=benchmark.Options(optimize=True, int8=False))
    assert [r["mode"] for r in rows] == ["infer"] and built == ["infer"]
    rows = benchmark.run(["tiny_probe"], device="cpu", warmup=1, runs=1)
    assert [r["mode"] for r in rows] == ["infer", "train"]


def test_combine_panoptic_restates_detectron2s_merge():
    semantic = torch.zeros(4, 6, dtype=torch.int64)
    semantic[:, 3:] = 2  # stuff label 2 on the right half (12 pixels), "things" (0) on the left
    masks = torch.zeros(3, 4, 6, dtype=torch.bool)
    masks[0, :2, :3] = True  # 6 pixels
    masks[1, :2, :2] = True  # inside the first: dropped (overlap 1.0 > 0.5)
    masks[2, 1:3, :3] = True  # half overlaps the first: painted on its free 3 pixels
    scores = torch.tensor([0.9, 0.8, 0.7])
    seg, info = combine_panoptic(masks, scores, torch.tensor([5, 6, 7]), semantic, stuff_area=5)
    assert [(d["id"], d["isthing"], d["category_id"]) for d in info] == [(1, True, 5), (2, True, 7), (3, False, 2)]
    assert (seg == 1).sum() == 6 and (seg == 2).sum() == 3 and (seg == 3).sum() == 12
    _, few = combine_panoptic(masks, scores, torch.tensor([5, 6, 7]), semantic, stuff_area=13, score_thresh=0.85)
    assert [d["id"] for d in few] == [1]  # below the score threshold the loop stops; small stuff is dropped


@pytest.mark.slow  # two R-18 Panoptic FPNs at 96 px: about 10 s
def test_panoptic_anchor_and_segzoo_hold_the_same_weights_and_detections():
    torch.manual_seed(0)
    (case,) = benchmark._CASES["panoptic_fpn_resnet18"](96)
    ours, anchor = case.build(), case.anchor()
    x = case.make_input(torch.device("cpu"))
    with torch.no_grad():
        o, r = ours(x)[0], anchor(case.anchor_input(x))[0]
    assert len(o["boxes"]) == len(r["boxes"]) == 100
    torch.testing.assert_close(o["boxes"], r["boxes"], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(o["scores"], r["scores"], rtol=1e-4, atol=1e-5)
    assert r["panoptic_seg"].shape == o["segments"].shape == (96, 96)


def test_hrnet_ocr_anchor_gives_logits_at_input_size():
    from benchmarks.speed.cases_hrnet import TimmHRNetOCR

    model = TimmHRNetOCR("hrnet_w18_small", 7, mid=64, key=32).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 96)).shape == (1, 7, 64, 96)


@pytest.mark.slow  # PT2E export and calibration of a CenterNet-R18: about 20 s
def test_centernet_gets_an_int8_column():
    from benchmarks.speed.optimized import variant_calls
    from segzoo.quantize import QuantizedDetector

    model = segzoo.build("centernet_resnet18", num_classes=3).eval()
    calls, info = variant_calls(model, lambda m, x: m(x), torch.rand(1, 3, 64, 64))
    assert len(calls) == 2 and "int8" in info
    q = calls[1].__closure__  # the second call wraps the int8 model
    assert any(isinstance(c.cell_contents, QuantizedDetector) for c in q)
