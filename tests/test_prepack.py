"""segzoo.prepack: oneDNN-packed convolutions compute what nn.Conv2d computes, and optimize picks them by table."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segzoo
from segzoo.optimize import optimize, uses_prepack
from segzoo.prepack import PrepackedConv2d, eligible, prepack

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this PyTorch has no oneDNN")


@pytest.mark.parametrize("kw", [
    dict(kernel_size=3, padding=1),
    dict(kernel_size=3, stride=2, padding=1, bias=False),
    dict(kernel_size=3, padding=4, dilation=4),
    dict(kernel_size=1),
    dict(kernel_size=3, padding=1, groups=8),  # depthwise-like grouped
    dict(kernel_size=(1, 5), padding=(0, 2)),
])
def test_prepacked_conv_equals_conv2d(kw):
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, **kw).eval()
    packed = PrepackedConv2d(conv)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 8, 23, 31).contiguous(memory_format=layout)
        with torch.inference_mode():
            assert torch.allclose(packed(x), conv(x), atol=1e-5, rtol=1e-5)
    assert packed.weight is conv.weight  # code that reads .weight sees the parameter


def test_prepack_keeps_the_state_dict_and_refuses_other_dtypes():
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, padding="same"),
                        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    keys = list(seq.state_dict())
    assert prepack(seq) == 1  # "same" padding and reflect padding keep nn.Conv2d
    assert isinstance(seq[0], PrepackedConv2d) and type(seq[2]) is nn.Conv2d and type(seq[3]) is nn.Conv2d
    assert list(seq.state_dict()) == keys
    with pytest.raises(RuntimeError, match="prepack=False"):
        seq[0](torch.randn(1, 3, 8, 8, dtype=torch.bfloat16))
    assert not eligible(nn.Conv2d(3, 4, 3).half())


def test_optimize_takes_prepack_from_the_table():
    fcn = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18").eval()
    unet = segzoo.build("unet_resnet34", num_classes=3, backbone="resnet18").eval()
    assert uses_prepack(fcn, "cpu") and not uses_prepack(unet, "cpu") and not uses_prepack(fcn, "cuda")
    fast = optimize(fcn)
    assert fast.choices.prepacked > 0 and "prepacked" in fast.choices.describe()
    assert optimize(unet).choices.prepacked == 0
    assert optimize(fcn, bf16=True).choices.prepacked == 0  # autocast and compile handle weights themselves
    assert optimize(fcn, prepack=False).choices.prepacked == 0
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = fcn(x)
    assert (fast(x) - ref).abs().max() < 1e-4
    with pytest.raises(ValueError, match="prepack=True needs"):
        optimize(fcn, prepack=True, bf16=True)
    with pytest.raises(ValueError, match="prepack must be"):
        optimize(fcn, prepack="yes")
