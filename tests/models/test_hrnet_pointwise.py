"""HRNet's inference rewrite: every plain 1x1 convolution on oneDNN (OneDNNPointwiseConv2d), outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segzoo
from segzoo.layers.conv import OneDNNPointwiseConv2d
from tests.test_export import randomize_bn

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-7


@pytest.mark.parametrize("name, kwargs", [
    ("hrnet_w18_small", {}),
    ("hrnet_w48_ocr", {"width": 18, "stage_modules": (1, 1, 1), "mid_channels": 64, "key_channels": 32}),
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_optimized_hrnet_runs_its_pointwise_convs_on_onednn_with_the_same_outputs(name, kwargs, channels_last):
    torch.manual_seed(0)
    model = randomize_bn(segzoo.build(name, num_classes=5, **kwargs)).eval()
    fast = segzoo.optimize(model, channels_last=channels_last)
    swapped = [m for m in fast.modules() if isinstance(m, OneDNNPointwiseConv2d)]
    assert fast.choices.rewritten >= 1 and len(swapped) > 10
    assert not any(isinstance(m, OneDNNPointwiseConv2d) for m in model.modules())  # the caller's model untouched
    assert all(m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 for m in swapped)
    for size in [(64, 64), (77, 101)]:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            ref = model(x)
        _close(fast(x), ref)


def test_pointwise_conv_matches_conv2d_and_keeps_autograd_off_onednn():
    torch.manual_seed(0)
    conv = nn.Conv2d(48, 32, 1)
    ref_conv = nn.Conv2d(48, 32, 1)
    ref_conv.load_state_dict(conv.state_dict())
    assert OneDNNPointwiseConv2d.eligible(conv)
    conv.__class__ = OneDNNPointwiseConv2d
    assert list(conv.state_dict()) == list(ref_conv.state_dict())
    x = torch.randn(2, 48, 13, 9)
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            out = conv(inp)
            torch.testing.assert_close(out, ref_conv(inp), rtol=1e-5, atol=1e-5)
            assert out.is_contiguous(memory_format=torch.channels_last) == inp.is_contiguous(
                memory_format=torch.channels_last) or inp.is_contiguous()
    conv(x).sum().backward()  # gradients on: nn.Conv2d's own forward, so autograd works
    assert conv.weight.grad is not None
    for other in (nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1, stride=2), nn.Conv2d(8, 8, 1, groups=2),
                  nn.Conv2d(8, 8, 1, padding_mode="reflect", padding=1)):
        assert not OneDNNPointwiseConv2d.eligible(other)
