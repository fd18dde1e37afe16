"""Mask2Former and EoMT export their inference path (final class and mask logits, before the merges)
with dynamic batch, height and width: one torch.export program and one ONNX file run at two sizes
and equal eager; the merges of the exported outputs equal eager model(images)."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from segzoo import export as ex
from segzoo.models.eomt import eomt_vit_tiny_test
from segzoo.models.mask2former import Mask2Former

pytest.importorskip("scipy")
HAS_ONNX = bool(importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime"))
SIZES = [(1, 3, 70, 100), (2, 3, 96, 64)]  # not multiples of the patch size / stride 32


def _mask2former():
    torch.manual_seed(0)
    return Mask2Former(num_classes=3, num_stuff=1, backbone="resnet18", dim=32, mask_dim=32, heads=2,
                       encoder_layers=1, encoder_ffn=32, decoder_layers=2, decoder_ffn=32, num_queries=4,
                       score_thresh=0.1, overlap_thresh=0.3).eval()


def _eomt(prob):
    torch.manual_seed(0)
    m = eomt_vit_tiny_test(num_classes=3, num_stuff=1, score_thresh=0.1, overlap_thresh=0.3).eval()
    m.attn_mask_probs.fill_(prob)
    return m


def _close(out, ref):
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))


def _check(model, tmp_path, name, onnx=True):
    program = ex.export_program(model, torch.rand(1, 3, 64, 96), dynamic=True)
    module = model.exportable()
    inputs = [torch.rand(*s) for s in SIZES]
    with torch.no_grad():
        refs = [module(x) for x in inputs]
        for x, ref in zip(inputs, refs):
            for out, r in zip(program.module()(x), ref):
                _close(out, r)
        # the merges of the exported outputs are eager model(images)
        x = inputs[0]
        cls, msk = program.module()(x)
        d = model.size_divisibility
        padded = (-(-x.shape[-2] // d) * d, -(-x.shape[-1] // d) * d)
        merged = model.postprocess(cls, msk, padded, [tuple(x.shape[-2:])] * x.shape[0])
        eager = model(x)
    for a, b in zip(merged, eager):
        torch.testing.assert_close(a["sem_seg"], b["sem_seg"], rtol=0, atol=1e-4)
        assert torch.equal(a["segments"], b["segments"]) and a["segments_info"] == b["segments_info"]
    if not (onnx and HAS_ONNX):
        return
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.export_onnx(program, path)
    for x, ref in zip(inputs, refs):
        outs = ex.run_onnx(path, x)
        assert len(outs) == 2
        for out, r in zip(outs, ref):
            _close(out, r)


def test_eomt_torch_export_at_any_size(tmp_path):
    _check(_eomt(0.0), tmp_path, "eomt", onnx=False)


@pytest.mark.slow
def test_eomt_with_masked_attention_exports_to_onnx_at_any_size(tmp_path):
    _check(_eomt(1.0), tmp_path, "eomt")


@pytest.mark.slow
def test_mask2former_exports_at_any_size(tmp_path):
    _check(_mask2former(), tmp_path, "mask2former")


def test_eomt_mid_annealing_is_refused():
    m = _eomt(0.5)
    with pytest.raises(ValueError, match="mid-annealing"):
        m.exportable()


def test_set_models_name_their_onnx_outputs():
    assert ex.OUTPUT_NAMES[ex._kind(_eomt(0.0))] == ("class_logits", "mask_logits")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eomt_vit_tiny_test", "mask2former_resnet18_small"])
def test_segzoo_export_dynamic_takes_set_models(name, tmp_path, capsys):
    """``segzoo export --dynamic`` (refused for them before the universal task): the program runs at two
    sizes and equals the model's exported module there."""
    from segzoo.cli import main
    from segzoo.registry import build

    out = tmp_path / f"{name}.pt2"
    assert main(["export", name, "--num-classes", "3", "--format", "exported-program", "--dynamic", "--height",
                 "64", "--width", "96", "--out", str(out), "--check"]) == 0
    assert "dynamic" in capsys.readouterr().out
    program = torch.export.load(out)
    model = build(name, num_classes=3)
    for shape in SIZES:
        with torch.no_grad():
            cls, msk = program.module()(torch.rand(*shape))
        assert cls.shape[0] == shape[0] and cls.shape[-1] == 4 and msk.shape[:2] == cls.shape[:2]
        assert msk.shape[-2:] == (-(-shape[2] // model.size_divisibility) * model.size_divisibility // 4,
                                  -(-shape[3] // model.size_divisibility) * model.size_divisibility // 4)
