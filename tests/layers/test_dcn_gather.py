"""The CPU gather path of the DCNv2 layer against torchvision's kernel and the grid_sample path."""

import pytest
import torch
from torch import nn
from torchvision.ops import deform_conv2d

import segzoo.layers.dcn as dcn
from segzoo.layers.dcn import ModulatedDeformConv2d, deform_conv2d_by_gather, deform_conv2d_by_sampling


def _inputs(n, c, h, w, out, groups, stride, padding, dilation, spread, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ho = (h + 2 * padding - 2 * dilation - 1) // stride + 1
    wo = (w + 2 * padding - 2 * dilation - 1) // stride + 1
    x = torch.randn(n, c, h, w, generator=g, dtype=dtype)
    offset = torch.randn(n, 2 * groups * 9, ho, wo, generator=g, dtype=dtype) * spread
    mask = torch.rand(n, groups * 9, ho, wo, generator=g, dtype=dtype)
    weight = torch.randn(out, c, 3, 3, generator=g, dtype=dtype) / (3 * c ** 0.5)
    bias = torch.randn(out, generator=g, dtype=dtype)
    return x, offset, mask, weight, bias


CASES = [  # n, c, h, w, out, deformable groups, stride, padding, dilation, offset spread (pixels)
    (1, 5, 9, 11, 4, 1, 1, 1, 1, 2.0),
    (3, 6, 7, 5, 4, 3, 1, 1, 1, 3.0),  # batch 3, deformable groups
    (3, 8, 13, 10, 6, 2, 2, 1, 1, 1.5),  # stride 2, odd sizes
    (1, 5, 9, 11, 7, 1, 1, 2, 2, 2.5),  # dilation 2
    (1, 4, 6, 6, 3, 1, 1, 1, 1, 20.0),  # most samples far outside the image
    (1, 3, 1, 1, 2, 1, 1, 1, 1, 0.7),  # a one-pixel image
    (1, 64, 24, 40, 64, 1, 1, 1, 1, 2.0),  # neck width, several bands
]


@pytest.mark.parametrize("case", CASES)
def test_gather_equals_torchvision_and_grid_sample(case, monkeypatch):
    *shape, stride, padding, dilation, spread = case
    x, offset, mask, weight, bias = _inputs(*shape, stride, padding, dilation, spread)
    kw = dict(stride=(stride, stride), padding=(padding, padding), dilation=(dilation, dilation))
    monkeypatch.setattr(dcn, "_BAND_BYTES", 20_000)  # several bands even on small inputs
    monkeypatch.setattr(dcn, "_BAND_MIN_PIXELS", 0)
    out = deform_conv2d_by_gather(x, offset, mask, weight, bias, **kw)
    tv = deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    old = deform_conv2d_by_sampling(x, offset, mask, weight, bias, **kw)
    assert out.shape == tv.shape
    assert (out - tv).abs().max() < 1e-5 and (out - old).abs().max() < 1e-5


def test_samples_on_the_border_and_outside_count_as_zero():
    x = torch.randn(1, 2, 4, 5)
    weight, bias = torch.zeros(1, 2, 3, 3), torch.zeros(1)
    weight[0, :, 1, 1] = 1.0  # the centre tap alone: the output is the sample itself
    offset = torch.zeros(1, 18, 4, 5)
    mask = torch.ones(1, 9, 4, 5)
    # centre tap of pixel (0, 0) pushed to y = -1 (zero), (0, 1) to y = -0.5 (half of row 0),
    # (1, 0) to x = 5 - 1 + 0.5 = 4.5 beyond the last column (half), (1, 1) to y = 4 (zero)
    offset[0, 8, 0, 0], offset[0, 8, 0, 1] = -1.0, -0.5
    offset[0, 9, 1, 0], offset[0, 8, 1, 1] = 4.5, 3.0
    out = deform_conv2d_by_gather(x, offset, mask, weight, bias)
    tv = deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask)
    assert torch.allclose(out, tv, atol=1e-6)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 1, 1] == 0
    assert torch.allclose(out[0, 0, 0, 1], 0.5 * x[0, :, 0, 1].sum())
    assert torch.allclose(out[0, 0, 1, 0], 0.5 * x[0, :, 1, 4].sum())


@pytest.mark.parametrize("n,c,groups,fast", [(1, 2, 1, False), (2, 4, 2, True)])
def test_gradients_by_gradcheck(n, c, groups, fast):
    inputs = _inputs(n, c, 2, 3, 2, groups, 1, 1, 1, 1.5, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in inputs)  # input, offset, mask, weight, bias
    assert torch.autograd.gradcheck(lambda *a: deform_conv2d_by_gather(*a), inputs, fast_mode=fast)


@pytest.mark.parametrize("stride,groups", [(1, 1), (2, 2)])
def test_gradients_equal_torchvision(stride, groups):
    x, offset, mask, weight, bias = (t.requires_grad_() for t in _inputs(3, 4, 9, 7, 5, groups, stride, 1, 1, 2.0,
                                                                            dtype=torch.float64))
    kw = dict(stride=(stride, stride), padding=(1, 1))
    out = deform_conv2d_by_gather(x, offset, mask, weight, bias, **kw)
    grad_out = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, offset, mask, weight, bias), grad_out)
    ref = deform_conv2d(x, offset, weight, bias, mask=mask, **kw)
    theirs = torch.autograd.grad(ref, (x, offset, mask, weight, bias), grad_out)
    for a, b in zip(ours, theirs):
        assert (a - b).abs().max() < 1e-10


def test_layer_runs_the_gather_path_on_cpu_and_grid_sample_in_onnx_export(monkeypatch):
    layer = ModulatedDeformConv2d(4, 6)
    nn.init.normal_(layer.conv_offset_mask.weight, std=0.3)
    x = torch.randn(2, 4, 7, 9)
    expected = deform_conv2d(x, *layer.offsets_and_mask(x)[:1], layer.weight, layer.bias, padding=(1, 1),
                             mask=layer.offsets_and_mask(x)[1])
    calls = []
    for name in ("deform_conv2d_by_gather", "deform_conv2d_by_sampling"):
        real = getattr(dcn, name)
        monkeypatch.setattr(dcn, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    assert torch.allclose(layer(x), expected, atol=1e-5) and calls == ["deform_conv2d_by_gather"]
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    assert torch.allclose(layer(x), expected, atol=1e-5) and calls[-1] == "deform_conv2d_by_sampling"


def test_channels_last_input_and_output_layout():
    x, offset, mask, weight, bias = _inputs(2, 6, 8, 8, 5, 1, 1, 1, 1, 1.0)
    out = deform_conv2d_by_gather(x.contiguous(memory_format=torch.channels_last), offset, mask, weight, bias)
    assert torch.allclose(out, deform_conv2d(x, offset, weight, bias, padding=(1, 1), mask=mask), atol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)  # the convolution's own layout, not copied


def test_compiles_without_graph_breaks():
    torch._dynamo.reset()
    layer = ModulatedDeformConv2d(4, 5).eval()
    nn.init.normal_(layer.conv_offset_mask.weight, std=0.3)
    x = torch.randn(2, 4, 6, 7)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # no strided out= writes when traced
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.parametrize("rows,width,row_bytes", [(128, 128, 2304), (16, 16, 18432), (32, 32, 9216), (1, 1, 4),
                                                   (257, 3, 100_000), (7, 1000, 36), (10, 1, 1 << 21)])
def test_bands_cover_the_rows_in_as_many_bands_as_asked_of_equal_heights(rows, width, row_bytes):
    asked = max(1, dcn._BAND_BYTES // (row_bytes * width), -(-dcn._BAND_MIN_PIXELS // width))
    starts = dcn._band_starts(rows, width, row_bytes)
    heights = [b - a for a, b in zip(starts, starts[1:])]
    assert starts[0] == 0 and starts[-1] == rows and min(heights) >= 1
    assert len(heights) == -(-rows // asked)  # as many bands as the byte budget and the pixel floor ask
    assert max(heights) - min(heights) <= 1 and max(heights) <= asked


@pytest.mark.parametrize("grad", [False, True])
def test_an_empty_batch_gives_an_empty_output_as_torchvision(grad):
    layer = ModulatedDeformConv2d(4, 5, 3)
    x = torch.randn(0, 4, 8, 8, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = layer(x)
    offset, mask = torch.zeros(0, 18, 8, 8), torch.zeros(0, 9, 8, 8)
    assert out.shape == deform_conv2d(x, offset, layer.weight, layer.bias, padding=1, mask=mask).shape == (0, 5, 8, 8)
    if grad:
        out.sum().backward()
        assert x.grad.shape == x.shape and layer.weight.grad.abs().sum() == 0
