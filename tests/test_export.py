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
# the MobileNetV2 R-CNN variants repeat their family's export graph on a body unet_mobilenetv2 exports already;
# their ONNX export alone costs 30-80 s, so they export through torch.export only (Faster R-CNN) or not at all
HEAVY_REPEATS = {"maskrcnn_mobilenetv2_fpn", "panoptic_fpn_mobilenetv2", "fasterrcnn_mobilenetv2_fpn"}
# the universal models' full-size variants repeat the graphs of their CPU-sized ones (eomt_vit_tiny, and
# mask2former_resnet18_small through torch.export: its ONNX export costs 20 s); tests/models/test_export_setpred.py
# exports both families at two sizes
HEAVY_REPEATS |= {"mask2former_resnet50", "mask2former_swin_tiny", "eomt_vit_small", "eomt_vit_base", "eomt_vit_large"}
TORCH_EXPORT_ONLY = {"fasterrcnn_mobilenetv2_fpn", "mask2former_resnet18_small"}
# deeper or wider variants whose ONNX graph repeats a sibling's op for op (more blocks or channels): they are checked
# through torch.export, their siblings through ONNX as well (segformer_b0-b2, the R-CNNs on resnet50 and resnet18,
# Panoptic FPN on resnet18, hrnet_w18 and hrnet_w48_ocr); their ONNX exports took 41-117 s each, 521 s of CI's test time
TORCH_EXPORT_ONLY |= {"segformer_b3", "segformer_b4", "segformer_b5", "maskrcnn_resnet101_fpn",
                      "fasterrcnn_resnet101_fpn", "panoptic_fpn_resnet50", "hrnet_w32", "hrnet_w48"}


def randomize_bn(model):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def spread_scores(model):
    """Random-init detectors give near-equal scores, so top-K order would hinge on rounding;
    widen the class layers so that the detections kept are well separated. CenterNet's heatmap picks
    peaks by comparing each cell with its neighbours, so near-equal neighbours (1e-7 apart) would make
    the peaks themselves hinge on rounding: both its heatmap convolutions are spread wider."""
    g = torch.Generator().manual_seed(0)
    centernet = hasattr(model, "forward_maps")
    scale = 1.0 if centernet else 0.05
    prefixes = getattr(model, "class_layers", ()) + (("head.heatmap.0",) if centernet else ())
    with torch.no_grad():
        for prefix in prefixes:
            for layer in model.get_submodule(prefix).modules():
                if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
                    layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * scale)
                    if layer.bias is not None:
                        layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
    return model


def export_model(name):
    model = small_model(name)
    return model if get_entry(name).task == "semantic" else spread_scores(model)


def compare(name, outs, ref):
    task = get_entry(name).task
    if task == "semantic":
        # 1e-3 absolute, relative for random-init models whose logits reach 1e4 (HRNet)
        assert (outs[0] - ref[0]).abs().max() < 1e-3 * max(1.0, float(ref[0].abs().max()))
        return
    if task == "universal":  # class and mask logits before the merges
        assert len(outs) == len(ref) == 2
        for a, b in zip(outs, ref):
            assert a.shape == b.shape and (a - b).abs().max() < 1e-3 * max(1.0, float(b.abs().max()))
        return
    n = ref[-1]
    assert torch.equal(outs[-1].long(), n.long())
    if task == "panoptic":  # segments, labels, scores, areas: the same segments
        differ = int((outs[0] != ref[0]).sum())  # a mask probability at 0.5 may round the other way
        assert differ <= 0.01 * ref[0].numel(), f"{differ} pixels differ"
        assert torch.equal(outs[1], ref[1])
        assert (outs[2] - ref[2]).abs().max() < 1e-3
        assert int((outs[3] - ref[3]).abs().sum()) <= 2 * differ  # a moved pixel changes two areas
        return
    for i in range(len(n)):  # kept detections only: boxes and scores within 1e-3
        k = int(n[i])
        if k == 0:
            continue
        s_out, s_ref = outs[1][i, :k].float(), ref[1][i, :k].float()
        b_out, b_ref = outs[0][i, :k].float(), ref[0][i, :k].float()
        assert (s_out.sort().values - s_ref.sort().values).abs().max() < 1e-3
        # every eager detection is in the export's output with the same box, except that
        # detections with exactly tied scores may be exchanged (random weights make ties)
        same_score = (s_ref[:, None] - s_out[None, :]).abs() < 1e-4  # (k, k)
        same_box = (b_ref[:, None, :] - b_out[None, :, :]).abs().amax(-1) < 1e-3
        found = (same_score & same_box).any(1)
        tied = ((s_ref[:, None] - s_ref[None, :]).abs() < 1e-4).sum(1) > 1
        assert bool((found | tied).all()), f"{int((~found & ~tied).sum())} detections differ"
        assert bool(found.any())


@pytest.mark.parametrize("name", [n for n in ALL if n in TORCH_EXPORT_ONLY or n not in HEAVY_REPEATS])
def test_torch_export_matches_eager(name):
    model = export_model(name)
    x = torch.rand(1, 3, 96, 128)
    ep = ex.export_program(model, x, max_detections=20)
    with torch.no_grad():
        out = ep.module()(x)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    compare(name, outs, ex.eager_outputs(model, x, max_detections=20))


@pytest.mark.parametrize("name", [n for n in ALL if n not in HEAVY_REPEATS | TORCH_EXPORT_ONLY])
def test_onnx_matches_eager(name, tmp_path):
    pytest.importorskip("onnx", reason="needs the export extra: pip install 'segzoo[export]'")
    pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'segzoo[export]'")
    model = export_model(name)
    x = torch.rand(1, 3, 96, 128)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.export_onnx(model, path, x, max_detections=20)
    compare(name, ex.run_onnx(path, x), ex.eager_outputs(model, x, max_detections=20))
    if name.startswith(("maskrcnn_", "fasterrcnn_")):  # NMS output sizes are not baked into the graph
        other = torch.rand(1, 3, 96, 128) * 0.5
        compare(name, ex.run_onnx(path, other), ex.eager_outputs(model, other, max_detections=20))


@pytest.mark.parametrize("name", segzoo.list_models(task="semantic"))
def test_compile_fullgraph(name):
    torch._dynamo.reset()  # every semantic model shares SegmentationModel.forward: avoid the recompile limit
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
        ref = model(x)
        assert (fused(x) - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))
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
