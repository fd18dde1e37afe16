"""segzoo.quantize: a PT2E int8 semantic model that runs, stays close to float on Shapes and exports."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

import segzoo
from segzoo.data.synthetic.shapes import render
from segzoo.quantize import QuantizedDetector

pytest.importorskip("torchao", reason="int8 needs the int8 extra: pip install 'segzoo[int8]'")


def _shapes(start: int, count: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [render(i, size, seed=0)[:2] for i in range(start, start + count)]
    images = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).float() / 255
    return images, torch.from_numpy(np.stack([p[1] for p in pairs])).long()


@pytest.fixture(scope="module")
def trained():
    """A small U-Net fitted to Shapes for a few seconds: confident enough that int8 rounding is visible
    only where the float model hesitates."""
    torch.manual_seed(0)
    model = segzoo.build("unet", num_classes=4, channels=(8, 16, 32, 64, 128))
    images, masks = _shapes(0, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        k = torch.arange(8) + 8 * (step % 8)
        loss = model(images[k], masks[k])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_int8_shapes_model_agrees_with_float_and_exports(trained):
    calib, _ = _shapes(100, 8)
    q = segzoo.quantize(trained, calib, compile=False)
    assert q.task == "semantic" and q.num_classes == 4 and not q.dynamic
    graph = str(q.graph_module.graph)
    assert "quantize_per_tensor" in graph and "dequantize_per_channel" in graph  # really int8
    images, masks = _shapes(200, 8)
    with torch.no_grad():
        ref = torch.cat([trained(im[None]) for im in images])
        out = torch.cat([q(im[None]) for im in images])
    assert out.shape == ref.shape
    agree = (out.argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.97, f"int8 argmax agrees with float on {agree:.1%} of the pixels"
    assert not torch.equal(out, ref)
    assert (ref.argmax(1) == masks).float().mean() > 0.8  # the float model learnt something
    program = q.export()
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images[:1]), out[:1], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="quantized for inputs of shape"):
        q(torch.rand(1, 3, 96, 96))
    with pytest.raises(RuntimeError, match="inference only"):
        q.train()


def test_dynamic_int8_runs_at_other_sizes(trained):
    calib, _ = _shapes(100, 2)
    q = segzoo.quantize(trained, list(calib), dynamic=True, compile=False)  # a list of 3 x H x W images
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ref, out = trained(x), q(x)
    assert out.shape == ref.shape and (out.argmax(1) == ref.argmax(1)).float().mean() > 0.9


def test_bad_calibration_and_models_are_refused(trained):
    with pytest.raises(ValueError, match="no calibration images"):
        segzoo.quantize(trained, [])
    with pytest.raises(ValueError, match="float in"):
        segzoo.quantize(trained, torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="3 x H x W"):
        segzoo.quantize(trained, torch.rand(2, 64, 64))
    with pytest.raises(ValueError, match="2 sizes"):
        segzoo.quantize(trained, [torch.rand(3, 64, 64), torch.rand(3, 64, 96)])
    with pytest.raises(ValueError, match="canvas= sets a detector"):
        segzoo.quantize(trained, torch.rand(1, 3, 64, 64), canvas=(64, 64))
    det = segzoo.build("fasterrcnn_resnet18_fpn", num_classes=2)
    with pytest.raises(NotImplementedError, match="supports semantic models and CenterNet"):
        segzoo.quantize(det, torch.rand(1, 3, 64, 64))


def test_missing_torchao_says_which_extra(monkeypatch, trained):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("torchao"):
            raise ImportError("no torchao")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r"segzoo\[int8\]"):
        segzoo.quantize(trained, torch.rand(1, 3, 64, 64))


def test_centernet_int8_maps_follow_float_and_decode_in_float():
    torch.manual_seed(0)
    model = segzoo.build("centernet_resnet18", num_classes=2).eval()
    calib = [torch.rand(3, 96, 96) for _ in range(3)]
    q = segzoo.quantize(model, calib, compile=False)
    assert isinstance(q, QuantizedDetector) and q.task == model.task
    assert "quantize_per_tensor" in str(q.graph_module.graph)  # the maps network really runs in int8
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        padded, _ = model.preprocess(x)
        ref = model.forward_maps(padded)
        got = [q.graph_module(xi) for xi in padded.split(1)]
    for i, key in enumerate(q.keys):
        out = torch.cat([g[i] for g in got])
        assert not torch.equal(out, ref[key])
        corr = torch.corrcoef(torch.stack([out.flatten(), ref[key].flatten()]))[0, 1]
        assert corr > 0.99, f"int8 {key} map correlates {corr:.4f} with float"
    dets = q(x)  # one dict per image, decoded by the float model's postprocess
    assert len(dets) == 2 and set(dets[0]) == {"boxes", "scores", "labels"}
    maps = {k: torch.cat([g[i] for g in got]) for i, k in enumerate(q.keys)}
    expected = model.postprocess(maps, torch.tensor([[96, 96], [96, 96]]))
    torch.testing.assert_close(dets[1]["boxes"], expected[1]["boxes"])
    program = q.export()
    boxes, scores, labels, num = program.module()(x[:1])
    torch.testing.assert_close(scores[0, : int(num[0])], dets[0]["scores"])
    with pytest.raises(ValueError, match="padded to 96 x 96"):
        q(torch.rand(1, 3, 128, 128))
    small = q(torch.rand(1, 3, 64, 80))[0]  # a smaller image pads to the graph's size, as in a float batch
    assert small["boxes"].numel() == 0 or (small["boxes"][:, 2] <= 80).all() and (small["boxes"][:, 3] <= 64).all()
    with pytest.raises(ValueError, match="fixed-size"):
        segzoo.quantize(model, calib, dynamic=True)
    wide = segzoo.quantize(model, calib[:1], compile=False, canvas=(100, 128))  # rounded up to 128 x 128
    assert len(wide(torch.rand(1, 3, 128, 120))) == 1
    with pytest.raises(RuntimeError, match="inference only"):
        q.train()


def test_hrnet_quantizes():
    """HRNet's fuse layers and stem call one ReLU module per output (PT2E annotates a module's call once: one
    module called for several outputs made a partition with many outputs and the quantizer refused the graph)."""
    torch.manual_seed(0)
    model = segzoo.build("hrnet_w18_small", num_classes=3).eval()
    images = torch.rand(2, 3, 64, 64)
    q = segzoo.quantize(model, images, compile=False)
    with torch.no_grad():
        ref, got = model(images[:1]), q(images[:1])
    assert got.shape == ref.shape
    assert (got.argmax(1) == ref.argmax(1)).float().mean() > 0.8  # int8 rounding moves only hesitant pixels
