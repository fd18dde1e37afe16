"""Every registered model exports (torch.export and ONNX) and compiles without graph breaks."""

import warnings

import pytest
import torch

import segzoo
from segzoo import export as ex
from segzoo.fuse import fuse
from segzoo.registry import get_entry
from tests.conftest import build_small as small_model

ALL = segzoo.list_models()


def randomize_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def compare(name, outs, ref):
    task = get_entry(name).task
    if task == "semantic":
        assert (outs[0] - ref[0]).abs().max() < 1e-3
        return
    n = ref[-1]
    assert torch.equal(outs[-1].long(), n.long())
    for i in range(len(n)):  # kept detections only: boxes and scores within 1e-3
        k = int(n[i])
        assert (outs[0][i, :k] - ref[0][i, :k]).abs().max(initial=0) < 1e-3
        assert (outs[1][i, :k] - ref[1][i, :k]).abs().max(initial=0) < 1e-3


@pytest.mark.parametrize("name", ALL)
def test_torch_export_matches_eager(name):
    model = small_model(name)
    x = torch.rand(1, 3, 96, 128)
    ep = ex.export_program(model, x, max_detections=20)
    with torch.no_grad():
        out = ep.module()(x)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    compare(name, outs, ex.eager_outputs(model, x, max_detections=20))


@pytest.mark.parametrize("name", ALL)
def test_onnx_matches_eager(name, tmp_path):
    pytest.importorskip("onnx", reason="needs the export extra: pip install 'segzoo[export]'")
    pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'segzoo[export]'")
    model = small_model(name)
    x = torch.rand(1, 3, 96, 128)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.export_onnx(model, path, x, max_detections=20)
    compare(name, ex.run_onnx(path, x), ex.eager_outputs(model, x, max_detections=20))


@pytest.mark.parametrize("name", segzoo.list_models(task="semantic"))
def test_compile_fullgraph(name):
    model = small_model(name)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("name", [n for n in ALL if get_entry(n).task == "semantic"])
def test_fuse_matches_eager(name):
    model = randomize_bn(small_model(name))
    fused = fuse(model)
    assert fused.fused_pairs, "no conv-bn pair found"
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert (fused(x) - model(x)).abs().max() < 1e-4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for n, m in fused.named_modules()
                   if any(n == b for _, b in fused.fused_pairs))


def test_fuse_keeps_shared_conv_outputs_unfused():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # conv output used twice: must not be folded

    m = Branchy().eval()
    m.bn.running_var.fill_(4.0)
    f = fuse(m, torch.rand(1, 3, 8, 8))
    assert f.fused_pairs == []
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(f(x), m(x))


def test_onnx_extra_missing_message(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "onnx":
            raise ImportError("no onnx")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    model = segzoo.build("fcn_resnet50", num_classes=2, backbone="resnet18")
    with pytest.raises(ImportError, match=r"segzoo\[export\]"):
        ex.export_onnx(model, tmp_path / "m.onnx")
