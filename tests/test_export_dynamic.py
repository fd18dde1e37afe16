"""Dynamic export: one torch.export program / one ONNX file per semantic family runs at several
batch sizes and input sizes and matches eager outputs."""

import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo import export as ex
from segzoo.layers.ppm import adaptive_avg_pool
from tests.conftest import build_small

# one small model per semantic family; sizes that are not multiples of the output stride
FAMILIES = {
    "unet_resnet18": {},
    "fcn_resnet50": {},
    "deeplabv3_resnet50": {},
    "deeplabv3plus_resnet50": {},
    "pspnet_resnet50": {},
    "hrnet_w18_small": {},
    "segformer_b0": {},
    "upernet_resnet50": {},  # build_small: on a ResNet-18
}
SIZES = [(2, 3, 72, 100), (1, 3, 96, 64)]
needs_onnx = pytest.mark.skipif(
    not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")),
    reason="needs the export extra: pip install 'segzoo[export]'",
)


def _model(name, **kwargs):
    torch.manual_seed(0)
    return build_small(name, num_classes=3, **kwargs)


def _close(out, ref):
    assert out.shape == ref.shape
    assert (out - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))


@pytest.mark.parametrize("name", list(FAMILIES))
def test_one_exported_program_and_onnx_file_run_at_any_size(name, tmp_path):
    model = _model(name, **FAMILIES[name])
    program = ex.export_program(model, torch.rand(1, 3, 64, 96), dynamic=True)
    inputs = [torch.rand(*shape) for shape in SIZES]
    with torch.no_grad():
        refs = [model(x) for x in inputs]
        for x, ref in zip(inputs, refs):
            _close(program.module()(x), ref)
    if not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
        return
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.export_onnx(program, path)  # the same program, translated: one file for every size
    for x, ref in zip(inputs, refs):
        (out,) = ex.run_onnx(path, x)
        _close(out, ref)


@needs_onnx
def test_export_onnx_dynamic_from_the_model(tmp_path):
    model = _model("unet", channels=[8, 16, 32])
    path = tmp_path / "unet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.export_onnx(model, path, torch.rand(1, 3, 64, 96), dynamic=True)
    for shape in SIZES:
        x = torch.rand(*shape)
        (out,) = ex.run_onnx(path, x)
        with torch.no_grad():
            _close(out, model(x))
    with pytest.raises(ValueError, match="dynamo"):
        ex.export_onnx(model, tmp_path / "old.onnx", dynamo=False, dynamic=True)


def test_matrix_adaptive_pooling_equals_torch():
    g = torch.Generator().manual_seed(0)
    for h, w in [(7, 9), (13, 5), (3, 3), (64, 96)]:
        x = torch.randn(2, 3, h, w, generator=g)
        for bins in (1, 2, 3, 6):
            torch.testing.assert_close(adaptive_avg_pool(x, bins), F.adaptive_avg_pool2d(x, bins))


def test_dynamic_export_refuses_detection_models_and_tiny_examples():
    semantic = segzoo.build("unet", num_classes=2, channels=[8, 16])
    with pytest.raises(ValueError, match="within"):
        ex.export_program(semantic, torch.rand(1, 3, 32, 32), dynamic=True)
    with torch.device("meta"):
        detector = segzoo.build("centernet_resnet18", num_classes=2)
    with pytest.raises(ValueError, match="semantic models"):
        ex.dynamic_shapes(detector, torch.rand(1, 3, 128, 128))


@pytest.mark.parametrize("fmt", ["exported-program", pytest.param("onnx", marks=needs_onnx)])
def test_export_cli_dynamic_file_runs_at_two_sizes(fmt, tmp_path, capsys):
    import runpy
    from pathlib import Path

    model = _model("unet", channels=[8, 16, 32])
    ckpt = tmp_path / "unet.safetensors"
    segzoo.save(model, ckpt)
    out = tmp_path / ("unet.onnx" if fmt == "onnx" else "unet.pt2")
    main = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "export.py"), run_name="x")["main"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([str(ckpt), "--format", fmt, "--out", str(out), "--dynamic", "--height", "96",
                     "--width", "128"]) == 0
    assert "dynamic" in capsys.readouterr().out
    for shape in SIZES:  # one file, two batch sizes and input sizes, neither the traced one
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = model(x)
        out_t = ex.run_onnx(out, x)[0] if fmt == "onnx" else torch.export.load(out).module()(x)
        _close(out_t, ref)


def test_export_cli_dynamic_refuses_detection_models(tmp_path, capsys):
    from segzoo.cli import main

    assert main(["export", "centernet_resnet18", "--out", str(tmp_path / "c.onnx"), "--dynamic"]) == 2
    assert "semantic models" in capsys.readouterr().err
