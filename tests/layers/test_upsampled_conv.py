"""The convolution over upsampled maps computed on the small maps equals the convolution it replaces, with
either way of spreading a small map (interpolation matrices or separable resizing), in any layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.upsampled_conv import SPREADS, UpsampledConcatConv, conv_norm_affine


def _reference(weight, bias, x0, smalls, dilation=(1, 1), align_corners=False):
    up = [F.interpolate(x, size=x0.shape[-2:], mode="bilinear", align_corners=align_corners) for x in smalls]
    pad = tuple(d * (k - 1) // 2 for k, d in zip(weight.shape[-2:], dilation))
    return F.conv2d(torch.cat([x0, *up], 1), weight, bias, padding=pad, dilation=dilation)


SHAPES = [((16, 16), [(8, 8), (4, 4), (1, 1)]),  # integer factors, a 1x1 bin
          ((15, 17), [(7, 9), (3, 2)]),  # odd, non-integer factors
          ((5, 6), [(2, 3), (6, 7)])]  # one "small" map larger than the output


@pytest.mark.parametrize("spread", SPREADS)
@pytest.mark.parametrize("kernel, dilation", [((1, 1), 1), ((3, 3), 1), ((5, 5), 1), ((3, 3), 2), ((3, 1), 1),
                                              ((1, 5), (1, 2))])
@pytest.mark.parametrize("size, small", SHAPES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_equals_the_convolution_over_the_upsampled_concatenation(spread, kernel, dilation, size, small,
                                                                 align_corners):
    g = torch.Generator().manual_seed(sum(kernel))
    channels = [4, 3, 5, 2][: 1 + len(small)]
    dilation = (dilation, dilation) if isinstance(dilation, int) else dilation
    weight, bias = torch.randn(6, sum(channels), *kernel, generator=g), torch.randn(6, generator=g)
    module = UpsampledConcatConv(weight, bias, channels, dilation=dilation, align_corners=align_corners,
                                 spread=[spread] * len(small))
    for batch in (1, 2):
        x0 = torch.randn(batch, channels[0], *size, generator=g)
        smalls = [torch.randn(batch, c, *s, generator=g) for c, s in zip(channels[1:], small)]
        ref = _reference(weight, bias, x0, smalls, dilation, align_corners)
        torch.testing.assert_close(module(x0, smalls), ref, rtol=1e-5, atol=1e-4)
        cl = [t.contiguous(memory_format=torch.channels_last) for t in [x0, *smalls]]
        torch.testing.assert_close(module(cl[0], cl[1:]), ref, rtol=1e-5, atol=1e-4)
        cl_module = UpsampledConcatConv(weight, bias, channels, dilation=dilation, align_corners=align_corners,
                                        spread=[spread] * len(small)).to(memory_format=torch.channels_last)
        out = cl_module(cl[0], cl[1:])  # channels_last convolution output: the NHWC products
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)


def test_mixed_spreads_and_no_bias():
    g = torch.Generator().manual_seed(0)
    channels = [3, 4, 2, 5]
    weight = torch.randn(7, sum(channels), 3, 3, generator=g)
    x0 = torch.randn(2, 3, 13, 11, generator=g)
    smalls = [torch.randn(2, c, *s, generator=g) for c, s in zip(channels[1:], [(1, 1), (7, 6), (3, 3)])]
    module = UpsampledConcatConv(weight, None, channels, spread=["matrix", "resize", "matrix"])
    assert module.first.bias is None and module.spread == ("matrix", "resize", "matrix")
    torch.testing.assert_close(module(x0, smalls), _reference(weight, None, x0, smalls), rtol=1e-5, atol=1e-4)


def test_auto_spreads_small_maps_by_matrices_and_resizes_large_ones(monkeypatch):
    g = torch.Generator().manual_seed(0)
    channels = [3, 4, 2]
    weight, bias = torch.randn(5, sum(channels), 3, 3, generator=g), torch.randn(5, generator=g)
    module = UpsampledConcatConv(weight, bias, channels, spread=["auto", "auto"])
    x0 = torch.randn(2, 3, 77, 70, generator=g)
    smalls = [torch.randn(2, 4, 33, 20, generator=g), torch.randn(2, 2, 9, 32, generator=g)]  # over, at the limit
    used = []
    for name in ("_resize_add", "_matrix_terms"):
        real = getattr(UpsampledConcatConv, name)
        monkeypatch.setattr(UpsampledConcatConv, name,
                            lambda self, *a, _real=real, _name=name: used.append(_name) or _real(self, *a))
    torch.testing.assert_close(module(x0, smalls), _reference(weight, bias, x0, smalls), rtol=1e-5, atol=1e-4)
    assert used == ["_resize_add", "_matrix_terms"]


def test_float64_weights_give_a_float32_module():
    weight, bias = torch.randn(2, 5, 3, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    module = UpsampledConcatConv(weight, bias, [3, 2], spread=["matrix"])
    assert module.first.weight.dtype == torch.float32 and module.taps0.dtype == torch.float32
    assert not any(p.requires_grad for p in module.parameters())


def test_refuses_even_kernels_wrong_channels_and_spreads():
    with pytest.raises(ValueError, match="odd kernel"):
        UpsampledConcatConv(torch.randn(2, 6, 2, 2), torch.zeros(2), [3, 3])
    with pytest.raises(ValueError, match="odd kernel"):
        UpsampledConcatConv(torch.randn(2, 6, 3, 3), torch.zeros(2), [3, 4])
    with pytest.raises(ValueError, match="spread"):
        UpsampledConcatConv(torch.randn(2, 6, 3, 3), torch.zeros(2), [3, 3], spread=["bicubic"])
    with pytest.raises(ValueError, match="spread"):
        UpsampledConcatConv(torch.randn(2, 6, 3, 3), torch.zeros(2), [3, 3], spread=["matrix", "matrix"])
    with pytest.raises(ValueError, match="small maps"):
        UpsampledConcatConv(torch.randn(2, 6, 3, 3), torch.zeros(2), [3, 3])(torch.randn(1, 3, 4, 4), [])


def test_conv_norm_affine_folds_eval_batchnorm():
    conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    nn.init.normal_(bn.weight)
    nn.init.normal_(bn.bias)
    weight, bias = conv_norm_affine(conv, bn)
    x = torch.randn(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(F.conv2d(x, weight.float(), bias.float(), padding=1), bn(conv(x)))
    assert conv_norm_affine(conv, nn.GroupNorm(2, 4)) is None
    assert conv_norm_affine(conv, bn.train()) is None
