"""PSPNet's inference rewrite (PSPHead.fold_for_inference -> PyramidPoolingConv, the pyramid pooling over
segzoo.layers.upsampled_conv.UpsampledConcatConv): the bottleneck conv's pooled share computed on the pooled
grids equals the eval forward, and its FLOPs are gone."""

from __future__ import annotations

import copy
import importlib.util
import warnings

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import segzoo
from segzoo import export as ex
from segzoo.layers import ConvNormAct, PyramidPooling
from segzoo.layers.ppm import PyramidPoolingConv
from segzoo.layers.upsampled_conv import UpsampledConcatConv
from segzoo.models.pspnet import PSPHead
from tests.conftest import build_small
from tests.test_export import randomize_bn

# odd, non-square, smaller than the largest bin, not multiples of any bin
SIZES = [(1, 1), (2, 3), (5, 13), (6, 6), (7, 9), (11, 17), (25, 14)]


def _close(out, ref, tol=1e-5):
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= tol * max(1.0, float(ref.abs().max()))


def _head(in_channels=64, channels=32, **kwargs):
    torch.manual_seed(0)
    return randomize_bn(PSPHead(in_channels, 5, channels=channels, **kwargs)).eval()


def _flops(module, x):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("hw", SIZES)
def test_folded_head_equals_its_eval_forward(hw):
    head = _head()
    folded = copy.deepcopy(head)
    assert folded.fold_for_inference() and not folded.fold_for_inference()  # applies once
    assert isinstance(folded[0], PyramidPoolingConv) and isinstance(folded[1][0], nn.Identity)
    assert isinstance(folded[0].conv, UpsampledConcatConv) and set(folded[0].conv.spread) == {"matrix"}
    assert isinstance(folded[1][1], nn.BatchNorm2d)  # BN not folded yet: it stays after the fused conv
    for batch in (1, 2):
        x = torch.randn(batch, 64, *hw)
        with torch.no_grad():
            ref = head(x)
            _close(folded(x), ref)
            _close(folded(x.contiguous(memory_format=torch.channels_last)), ref)  # channels_last input


def test_other_bins_kernels_and_dilations():
    torch.manual_seed(0)
    ppm = randomize_bn(PyramidPooling(24, bins=(1, 4, 5), channels=8)).eval()
    for k, d in [(1, 1), (3, 2), (5, 1), ((3, 1), 1), ((1, 3), (1, 2))]:
        kh, kw = (k, k) if isinstance(k, int) else k
        dh, dw = (d, d) if isinstance(d, int) else d
        conv = nn.Conv2d(ppm.out_channels, 16, k, padding=(dh * (kh - 1) // 2, dw * (kw - 1) // 2), dilation=d)
        fused = PyramidPoolingConv(ppm, conv).eval()
        for hw in [(9, 7), (4, 13)]:
            for batch in (1, 2):
                x = torch.randn(batch, 24, *hw)
                with torch.no_grad():
                    ref = conv(ppm(x))
                    _close(fused(x), ref)
                    _close(fused(x.contiguous(memory_format=torch.channels_last)), ref)


@pytest.mark.parametrize("channels_last", [False, True])
def test_batchnorm_folded_in_as_upernet_does(channels_last):
    """With ``norm`` (UPerNet's bottleneck), the eval BatchNorm after the conv is folded into the module,
    also with the module and input in channels_last (UPerNet's optimized layout: the NHWC products)."""
    torch.manual_seed(0)
    ppm = randomize_bn(PyramidPooling(24, channels=8)).eval()
    block = randomize_bn(ConvNormAct(ppm.out_channels, 16, 3)).eval()
    fused = PyramidPoolingConv(ppm, block[0], block[1]).eval()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    fused = fused.to(memory_format=layout)
    for hw in [(8, 8), (5, 11)]:
        for batch in (1, 2):
            x = torch.randn(batch, 24, *hw)
            with torch.no_grad():
                _close(fused(x.contiguous(memory_format=layout)), block[1](block[0](ppm(x))))
    with pytest.raises(ValueError, match="folds an eval BatchNorm2d"):
        PyramidPoolingConv(ppm, block[0], nn.GroupNorm(2, 16))


def test_rewrite_refuses_convs_it_cannot_express():
    ppm = PyramidPooling(16, bins=(1, 2))
    for conv in [nn.Conv2d(ppm.out_channels, 8, 3, stride=2, padding=1), nn.Conv2d(ppm.out_channels, 8, 3),
                 nn.Conv2d(ppm.out_channels, 8, 3, padding=1, groups=2), nn.Conv2d(16, 8, 3, padding=1)]:
        with pytest.raises(ValueError, match="PyramidPoolingConv takes"):
            PyramidPoolingConv(ppm, conv)


def test_optimized_head_equals_eager_in_every_layout():
    head = _head()
    x = torch.randn(1, 64, 11, 17)
    with torch.no_grad():
        ref = head(x)
    for options in [{"channels_last": False, "prepack": False}, {"channels_last": True, "prepack": True},
                    {"bf16": True}]:
        fast = segzoo.optimize(head, torch.randn(1, 64, 8, 8), **options)
        assert fast.choices.rewritten == 1 and isinstance(fast.model[0], PyramidPoolingConv)
        _close(fast(x), ref, 3e-2 if options.get("bf16") else 1e-5)


@pytest.mark.parametrize("name", segzoo.list_models("pspnet*"))
def test_every_pspnet_optimized_equals_eager(name):
    torch.manual_seed(0)
    model = randomize_bn(build_small(name, num_classes=3))
    fast = segzoo.optimize(model)  # the shipped choices (contiguous, prepacked on the CPU)
    assert fast.choices.rewritten == 1 and isinstance(fast.model.classifier[0], PyramidPoolingConv)
    assert isinstance(model.classifier[0], PyramidPooling)  # the caller's model keeps its forward
    for shape in [(1, 3, 72, 100), (2, 3, 57, 41)]:
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = model(x)
        _close(fast(x), ref, 1e-4)
        _close(fast(x.contiguous(memory_format=torch.channels_last)), ref, 1e-4)


def test_optimized_flops_drop_by_the_pooled_share_of_the_bottleneck():
    torch.manual_seed(0)
    model = randomize_bn(build_small("pspnet_resnet50", num_classes=3))
    fast = segzoo.optimize(model, channels_last=False, prepack=False)  # prepacked convs are not counted
    x = torch.rand(1, 3, 96, 80)
    feat = model.backbone.head_maps(model.backbone(x))[-1]
    h, w = feat.shape[-2:]
    head = model.classifier
    conv, ppm = head[1][0], head[0]
    bins, width, out = ppm.bins, ppm.stages[0][1].out_channels, conv.out_channels
    removed = 2 * h * w * out * 9 * width * len(bins)  # the 3x3 conv's share over the upsampled maps
    c, pooled = ppm.stages[0][1].in_channels, sum(bins)
    added = 2 * c * (h * w * pooled + pooled * h * pooled)  # all bins' average pooling as two matrix products
    added += sum(2 * out * 9 * width * b * b  # the taps on each b x b grid
                + 2 * out * h * (3 * b) * (3 * b)  # spread over the rows
                for b in bins) + 2 * out * h * w * 3 * sum(bins)  # and over the columns, all bins at once
    ref, opt = _flops(model, x), _flops(fast, x)
    assert fast.choices.rewritten == 1
    assert ref - opt == removed - added > 0.85 * removed, (ref, opt, removed, added)


@pytest.mark.slow  # export and its ONNX translation: about 30 s on one core
def test_optimized_pspnet_exports_with_dynamic_sizes(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_small("pspnet_resnet50", num_classes=3))
    fast = segzoo.optimize(model, prepack=False)  # the rewrite with plain convolutions
    assert fast.choices.rewritten == 1
    program = ex.export_program(fast, torch.rand(1, 3, 64, 96), dynamic=True)
    inputs = [torch.rand(*shape) for shape in [(2, 3, 72, 100), (1, 3, 96, 64)]]
    with torch.no_grad():
        refs = [model(x) for x in inputs]
    for x, ref in zip(inputs, refs):
        _close(program.module()(x), ref, 1e-4)
    if not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
        return
    path = tmp_path / "pspnet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.export_onnx(program, path)
    for x, ref in zip(inputs, refs):
        (out,) = ex.run_onnx(path, x)
        _close(torch.as_tensor(out), ref, 1e-4)
