"""The convolution over upsampled maps computed on the small maps equals the convolution it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segzoo.layers.upsampled_conv import UpsampledConcatConv, conv_norm_affine


def _reference(weight, bias, x0, smalls):
    up = [F.interpolate(x, size=x0.shape[-2:], mode="bilinear", align_corners=False) for x in smalls]
    return F.conv2d(torch.cat([x0, *up], 1), weight, bias, padding=weight.shape[-1] // 2)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("size, small", [((16, 16), [(8, 8), (4, 4), (1, 1)]),  # integer factors, a 1x1 bin
                                         ((15, 17), [(7, 9), (3, 2)]),  # odd, non-integer factors
                                         ((5, 6), [(2, 3), (6, 7)])])  # one "small" map larger than the output
def test_equals_the_convolution_over_the_upsampled_concatenation(k, size, small):
    g = torch.Generator().manual_seed(k)
    channels = [4, 3, 5, 2][: 1 + len(small)]
    weight, bias = torch.randn(6, sum(channels), k, k, generator=g), torch.randn(6, generator=g)
    x0 = torch.randn(2, channels[0], *size, generator=g)
    smalls = [torch.randn(2, c, *s, generator=g) for c, s in zip(channels[1:], small)]
    ref = _reference(weight, bias, x0, smalls)
    out = UpsampledConcatConv(weight, bias, channels)(x0, smalls)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in [x0, *smalls]]
    torch.testing.assert_close(UpsampledConcatConv(weight, bias, channels)(cl[0], cl[1:]), ref, rtol=1e-5, atol=1e-4)


def test_refuses_even_kernels_and_wrong_channels():
    with pytest.raises(ValueError, match="square odd kernel"):
        UpsampledConcatConv(torch.randn(2, 6, 2, 2), torch.zeros(2), [3, 3])
    with pytest.raises(ValueError, match="square odd kernel"):
        UpsampledConcatConv(torch.randn(2, 6, 3, 3), torch.zeros(2), [3, 4])
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
