"""segzoo.optimize: the same outputs as eager for every registered model, and the caller's model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segzoo
from segzoo import export as ex
from segzoo.optimize import CHANNELS_LAST, OptimizedModel, optimize, uses_channels_last
from segzoo.registry import get_entry
from tests.conftest import build_small
from tests.models.test_models import _cases  # every registered model; those over 40M parameters marked slow
from tests.test_export import compare, randomize_bn, spread_scores


def _model(name: str) -> torch.nn.Module:
    kwargs = {"num_stuff": 1} if get_entry(name).task == "panoptic" else {}
    model = randomize_bn(build_small(name, num_classes=3, **kwargs))
    return model if get_entry(name).task == "semantic" else spread_scores(model)


@pytest.mark.parametrize("name", _cases())
def test_optimized_matches_eager(name):
    torch.manual_seed(0)
    model = _model(name)
    # channels_last and prepacked convolutions: what every family may get on some device
    fast = optimize(model, channels_last=True, prepack=True)
    assert isinstance(fast, OptimizedModel) and fast.choices.channels_last and fast.choices.prepacked > 0
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fast.choices.fused > 0 or not has_bn, "no conv-bn pair folded"  # ConvNeXt has LayerNorm only
    assert fast.task == model.task and fast.num_classes == model.num_classes  # read through the wrapper
    x = torch.rand(1, 3, 64, 80)
    if model.task == "semantic":
        with torch.no_grad():
            ref = model(x)
        out = fast(x)
        assert out.is_contiguous() and out.dtype == torch.float32
        assert (out - ref).abs().max() < 1e-3 * max(1.0, float(ref.abs().max()))
        return
    # detection, instance, panoptic: the padded outputs agree (ties in random-init scores allowed)
    ref = ex.eager_outputs(model, x, max_detections=20)
    compare(name, ex.eager_outputs(fast, x, max_detections=20), ref)
    out = fast(x)  # the wrapper's own forward: channels_last input, inference mode
    assert isinstance(out, list) and len(out) == 1
    if model.task in ("detection", "instance"):
        assert len(out[0]["scores"]) >= int(ref[-1][0])  # eager keeps up to max_detections, the export 20


def test_callers_model_is_untouched_and_still_trains():
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    fast = optimize(model, channels_last=True, bf16=True)
    assert model.training and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == n_bn
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.is_contiguous() for p in model.parameters())  # not converted to channels_last
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    x = torch.rand(2, 3, 64, 64)
    loss = model(x, torch.randint(0, 3, (2, 64, 64)))["loss"]
    loss.backward()
    assert model.backbone is not fast.model.backbone
    with pytest.raises(ValueError, match="losses with the original model"):
        fast(x, torch.zeros(2, 64, 64, dtype=torch.long))
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_outputs_are_inference_tensors_and_bf16_is_close():
    torch.manual_seed(0)
    model = randomize_bn(build_small("deeplabv3_resnet50", num_classes=3))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    out = optimize(model)(x)
    assert out.is_inference() and not out.requires_grad
    bf = optimize(model, bf16=True)
    assert bf.choices.bf16 and "bf16" in bf.choices.describe()
    low = bf(x)
    assert low.dtype == torch.float32
    agree = (low.argmax(1) == ref.argmax(1)).float().mean()
    assert agree > 0.9, f"bf16 argmax agrees on {agree:.1%} of pixels"
    assert not torch.equal(low, out)  # it did run in bf16


def test_inplace_optimises_the_model_itself():
    model = build_small("unet_resnet18", num_classes=2)
    fast = optimize(model, inplace=True, channels_last=False)
    assert fast.model is model and not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with pytest.raises(TypeError, match="optimized already"):
        optimize(fast)
    with pytest.raises(ValueError, match="channels_last must be"):
        optimize(model, channels_last="yes")


def test_channels_last_choice_follows_the_table(monkeypatch):
    model = build_small("fcn_resnet50", num_classes=2)
    monkeypatch.setitem(CHANNELS_LAST, "cpu", {"*": True, "FCN": False})
    assert not uses_channels_last(model, "cpu") and not optimize(model).choices.channels_last
    monkeypatch.setitem(CHANNELS_LAST, "cpu", {"*": False, "SegmentationModel": True})  # a base class counts
    assert uses_channels_last(model, "cpu") and optimize(model).choices.channels_last
    assert not uses_channels_last(model, "xpu")  # an unmeasured device keeps the default layout
    assert optimize(model, channels_last=False).choices.channels_last is False


def test_compile_option_compiles():
    torch._dynamo.reset()
    model = build_small("unet", num_classes=2, channels=(4, 8, 16, 32, 64))
    fast = optimize(model, compile="eager")
    assert fast.choices.compiled and fast._runner is not fast.model
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), model(x), rtol=1e-4, atol=1e-4)


def test_predict_optimizes_once_and_again_after_the_weights_change():
    from segzoo import inference

    torch.manual_seed(0)
    model = randomize_bn(build_small("fcn_resnet50", num_classes=3))
    image = torch.rand(3, 48, 64)
    fast = segzoo.predict(model, image)
    first = inference._FAST[model][1]
    assert isinstance(first, OptimizedModel)
    segzoo.predict(model, [image, image])
    assert inference._FAST[model][1] is first  # kept while the weights are unchanged
    plain = segzoo.predict(model, image, fast=False)
    torch.testing.assert_close(fast["probs"], plain["probs"], rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.classifier[4].bias.add_(1.0)  # an optimizer step would do the same (in place)
    segzoo.predict(model, image)
    assert inference._FAST[model][1] is not first
    assert inference.fast_model(model, False) is model and inference.fast_model(first) is first
    bf = inference.fast_model(model, {"bf16": True})
    assert bf.choices.bf16 and inference.fast_model(model, {"bf16": True}) is bf


def test_cli_fast_flags():
    import argparse

    from segzoo.cli.common import fast_option

    def opt(no_fast=False, fast=None):
        return fast_option(argparse.Namespace(no_fast=no_fast, fast=fast))

    assert opt() is True and opt(no_fast=True) is False
    assert opt(fast="bf16,compile") == {"bf16": True, "compile": True} and opt(fast="bf16") == {"bf16": True}
    with pytest.raises(ValueError, match="--fast takes"):
        opt(fast="int8")
    with pytest.raises(ValueError, match="contradict"):
        opt(no_fast=True, fast="bf16")


def test_infer_cli_fast_flags(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from segzoo import cli, inference

    model = segzoo.build("unet", num_classes=2, channels=(4, 8, 16, 32, 64))
    segzoo.save(model, tmp_path / "m.safetensors")
    Image.new("RGB", (40, 32), (120, 30, 200)).save(tmp_path / "a.png")
    seen = []
    monkeypatch.setattr(inference, "optimize", lambda m, **kw: seen.append(kw) or optimize(m, **kw))
    args = ["infer", str(tmp_path / "m.safetensors"), str(tmp_path / "a.png"), "--out", str(tmp_path / "o")]
    assert cli.main(args) == 0 and cli.main([*args, "--no-fast"]) == 0 and cli.main([*args, "--fast", "bf16"]) == 0
    assert seen == [{}, {"bf16": True}]  # optimized by default, not with --no-fast, bf16 with --fast bf16
    assert cli.main([*args, "--fast", "int8"]) == 2
    assert "--fast takes bf16, compile" in capsys.readouterr().err


def test_modules_exact_rewrites_are_applied_and_counted():
    from segzoo.optimize import Choices

    class Doubler(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.rewritten = False

        def fold_for_inference(self) -> bool:
            self.rewritten = True
            return True

        def forward(self, x):
            return self.conv(x)

    class Plain(nn.Module):
        def fold_for_inference(self) -> bool:
            return False  # not applicable: not counted

        def forward(self, x):
            return x

    model = nn.Sequential(Doubler(), Plain(), Doubler())
    fast = segzoo.optimize(model, torch.randn(1, 3, 8, 8), channels_last=False, prepack=False)
    assert fast.choices.rewritten == 2 and "2 modules rewritten" in fast.choices.describe()
    assert all(m.rewritten for m in fast.model if isinstance(m, Doubler))
    assert not any(m.rewritten for m in model if isinstance(m, Doubler))  # the caller's model is untouched
    unfused = segzoo.optimize(model, torch.randn(1, 3, 8, 8), fuse=False, channels_last=False, prepack=False)
    assert unfused.choices.rewritten == 0  # fuse=False keeps the module's own forward
    assert Choices(0, False, False, False).rewritten == 0
