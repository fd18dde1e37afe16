"""DeepLab's exact inference rewrites (fold_for_inference, applied by segzoo.optimize): the ResNet body on
oneDNN's blocked tensors, ASPP's pooling branch as a per-image projection bias, and the dense atrous
branches as the taps that reach the map. Each equals the module's own eval forward within float rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import segzoo
from segzoo import export as ex
from segzoo.fuse import fuse
from segzoo.layers import ASPP, aspp
from segzoo.layers.aspp import AtrousTaps
from segzoo.layers.blocked import blocked_body
from segzoo.models.deeplab import BlockedBody
from tests.conftest import build_small
from tests.test_export import randomize_bn

DEEPLABS = segzoo.list_models("deeplab*")
SIZES = [(64, 80), (97, 131), (129, 65)]  # non-square, odd; at output stride 8 the 13 x 17 map puts taps outside


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 1e-5 * max(1.0, float(ref.abs().max())), float((out - ref).abs().max())


def _model(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomize_bn(build_small(name, num_classes=3, **kwargs))


def test_every_deeplab_is_covered():
    assert {"deeplabv3_resnet50", "deeplabv3plus_resnet50", "deeplabv3_mobilenetv3_large"} <= set(DEEPLABS)


@pytest.mark.parametrize("name", DEEPLABS)
def test_optimized_equals_eval_forward(name):
    model = _model(name)
    fast = segzoo.optimize(model)
    assert fast.choices.rewritten >= 1  # every DeepLab has an ASPP
    for h, w in SIZES:
        x = torch.rand(2 if h == 97 else 1, 3, h, w)
        with torch.no_grad():
            ref = model(x)
        _close(fast(x), ref)


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3plus_resnet50"])
def test_resnet_bodies_run_blocked(name, monkeypatch):
    model = _model(name)
    fast = segzoo.optimize(model)
    plus = "plus" in name
    assert fast.model.blocked and fast.choices.rewritten == 2 + plus  # the body, the ASPP (and V3+'s decoder)
    seen = []
    fast.model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_mkldnn))
    if plus:  # the stride-4 blocks run blocked too
        fast.model.decoder.fuse.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_mkldnn))
    x = torch.rand(1, 3, 97, 131)
    with torch.no_grad():
        ref = model(x)
    _close(fast(x), ref)
    assert seen == [True] * (1 + plus)
    # with autograd on (blocked tensors have none) the same copy runs dense, with the same numbers
    _close(fast.model(x), ref)
    assert seen == [True] * (1 + plus) + [False] * (1 + plus)


def test_plain_model_is_unchanged_and_training_folds_nothing():
    model = _model("deeplabv3_resnet50")
    assert not model.blocked and model.classifier[0].project_spatial is None
    assert not any(isinstance(m, AtrousTaps) for m in model.modules())
    assert not _model("deeplabv3plus_resnet50").decoder.blocked
    model.train()
    assert not model.fold_for_inference() and not model.classifier[0].fold_for_inference()
    assert not model.blocked and model.classifier[0].project_spatial is None
    # unfolded BatchNorm: the ASPP keeps its form
    model.eval()
    assert not model.classifier[0].fold_for_inference()


def test_other_bodies_keep_the_dense_path():
    assert not blocked_body(_model("deeplabv3_mobilenetv3_large").backbone.body)
    assert not blocked_body(_model("deeplabv3plus_resnet50", backbone="convnext_atto").backbone.body)
    assert blocked_body(fuse(_model("deeplabv3plus_resnet50")).backbone.body)
    assert not blocked_body(_model("deeplabv3plus_resnet50").backbone.body)  # BatchNorm not folded yet
    plus = _model("deeplabv3plus_resnet50")
    assert not plus.decoder.fold_for_inference() and not plus.decoder.blocked
    assert fuse(plus).decoder.fold_for_inference()


def _flops(model: nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


def test_rewrites_cut_the_work(monkeypatch):
    """Without the rewrites (fold_for_inference disabled) the optimized DeepLabV3 does the padded taps'
    work and convolves the upsampled pooling branch; with them, less."""
    model = _model("deeplabv3_resnet50")
    x = torch.rand(1, 3, 97, 131)  # a 13 x 17 map at output stride 8: the rate-24 and rate-36 taps read padding
    fast = segzoo.optimize(model, prepack=False)  # aten convolutions, which the counter counts
    monkeypatch.setattr(ASPP, "fold_for_inference", lambda self: False)
    monkeypatch.setattr(BlockedBody, "fold_for_inference", lambda self: False)
    plain = segzoo.optimize(model, prepack=False)
    assert fast.choices.rewritten == 2 and plain.choices.rewritten == 0
    with torch.no_grad():
        _close(fast(x), plain(x))
    assert _flops(fast, x) < 0.85 * _flops(plain, x)


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("hw", [(13, 17), (5, 40), (32, 32), (1, 1)])
def test_atrous_taps_equal_the_convolution(hw, groups, monkeypatch):
    torch.manual_seed(0)
    for d in (1, 6, 12, 18):
        conv = nn.Conv2d(8, 12, 3, padding=d, dilation=d, groups=groups, bias=d % 2 == 0).eval()
        taps = AtrousTaps(conv)
        x = torch.randn(2, 8, *hw)
        monkeypatch.setattr(aspp, "TAPS_BELOW", 1.01)  # always the taps
        with torch.no_grad():
            _close(taps(x), conv(x))
        monkeypatch.setattr(aspp, "TAPS_BELOW", 0.0)  # always the convolution
        with torch.no_grad():
            _close(taps(x), conv(x))


def test_atrous_taps_work():
    conv = nn.Conv2d(4, 4, 3, padding=36, dilation=36)
    assert AtrousTaps(conv).work(32, 32) == pytest.approx(1 / 9)  # only the centre reaches the map
    assert AtrousTaps(nn.Conv2d(4, 4, 3, padding=24, dilation=24)).work(32, 32) == pytest.approx((1.5 / 3) ** 2)
    assert AtrousTaps(nn.Conv2d(4, 4, 3, padding=1)).work(200, 200) > 0.98
    with pytest.raises(ValueError, match="stride-1"):
        AtrousTaps(nn.Conv2d(4, 4, 3, stride=2, padding=1))


@pytest.mark.parametrize("name,prepack", [("deeplabv3_resnet50", "auto"), ("deeplabv3plus_resnet50", False)])
def test_exported_optimized_model_matches(name, prepack):
    """Exporting runs the original forward (no blocked tensors, no taps) of the rewritten copy."""
    model = _model(name)
    fast = segzoo.optimize(model, prepack=prepack)
    assert fast.choices.rewritten >= 2
    x = torch.rand(1, 3, 96, 128)
    ep = ex.export_program(fast, x)
    with torch.no_grad():
        _close(ep.module()(x), model(x))
