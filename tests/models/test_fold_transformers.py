"""The exact inference rewrites of SegFormer, UPerNet and Mask2Former (``fold_for_inference``, applied by
``segzoo.optimize``) give the outputs of the models' own eval forward, at even and odd sizes, batch 1 and 2,
contiguous and channels_last inputs, with random BatchNorm statistics."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch
from torch import nn

import segzoo
from segzoo import export as ex
from segzoo.layers.deform_attn import MSDeformAttn
from segzoo.layers.ppm import PyramidPoolingConv
from segzoo.layers.upsampled_conv import UpsampledConcatConv
from segzoo.models.segformer import SegFormer, SegFormerHead
from segzoo.models.upernet import UPerHead, UPerNet
from tests.conftest import build_small

SIZES = [(64, 64), (97, 75), (33, 47)]


def _randomize(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _check(model: nn.Module, head_type: type, channels_last: bool) -> None:
    fast = segzoo.optimize(model, channels_last=channels_last)
    heads = [m for m in fast.modules() if isinstance(m, head_type)]
    assert fast.choices.rewritten >= 1 and heads and all(isinstance(h.folded, nn.Module) for h in heads)
    for size, batch in zip(SIZES, (1, 2, 1)):
        x = torch.rand(batch, 3, *size)
        with torch.no_grad():
            ref = model(x)
        tol = {"rtol": 1e-4, "atol": 1e-4 * max(1.0, float(ref.abs().max()))}
        out = fast(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, **tol)
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), ref, **tol)


@pytest.mark.parametrize("backbone", ["mit_b0", "convnext_atto"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_segformer_head_folded_into_one_conv_per_map(backbone, channels_last):
    torch.manual_seed(0)
    model = _randomize(SegFormer(num_classes=5, backbone=backbone, embed_dim=32))
    _check(model, SegFormerHead, channels_last)
    fast = segzoo.optimize(model)
    head = fast.model.decode_head
    assert isinstance(head.folded, UpsampledConcatConv) and head.folded.first.in_channels == head.proj[0].in_channels
    assert head.folded.spread == ("auto",) * 3  # small maps by matrices, large ones resized


@pytest.mark.parametrize("backbone, eps", [("convnext_atto", 1e-6), ("resnet18", None)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upernet_bottlenecks_on_the_small_maps(backbone, eps, channels_last):
    torch.manual_seed(0)
    model = _randomize(UPerNet(num_classes=5, backbone=backbone, channels=32, out_norm_eps=eps))
    _check(model, UPerHead, channels_last)
    folded = segzoo.optimize(model, channels_last=channels_last).model.decode_head.folded
    # the pyramid-pooling bottleneck is PSPNet's module (the bins spread by matrices), the fuse conv resizes
    assert isinstance(folded["bottleneck"], PyramidPoolingConv) and folded["bottleneck"].conv.spread == ("matrix",) * 4
    assert isinstance(folded["fpn_bottleneck"], UpsampledConcatConv)
    assert folded["fpn_bottleneck"].spread == ("resize",) * 3


def test_folded_heads_train_as_before():
    """fold_for_inference on a model in train mode leaves its training forward alone."""
    torch.manual_seed(0)
    model = _randomize(UPerNet(num_classes=5, backbone="resnet18", channels=32, out_norm_eps=None))
    head = model.decode_head
    x = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip(model.backbone.channels, (4, 8, 16, 32))]
    with torch.no_grad():
        ref = head(x)
        assert head.fold_for_inference()
        torch.testing.assert_close(head(x), ref, rtol=1e-4, atol=1e-4)
        head.train()
        torch.manual_seed(1)
        a = head(x)
        head.folded = None
        torch.manual_seed(1)
        torch.testing.assert_close(a, head(x))  # the original layers (dropout and all) in training


def _count_calls(monkeypatch, cls: type, name: str) -> list:
    calls = []
    real = getattr(cls, name)

    def counted(self, *args, **kwargs):
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mask2former_resnet18_small", "eomt_vit_tiny_test"])
def test_set_models_gather_predict_once_and_match_their_eval_forward(name, monkeypatch):
    """Mask2Former samples by gathering and both models compute only the final full-size prediction
    (the intermediate ones, for the attention masks, on the small grids); the outputs stay those of eval."""
    from segzoo.models.eomt import EoMT
    from segzoo.models.mask2former import MaskedAttentionDecoder

    torch.manual_seed(0)
    model = _randomize(segzoo.build(name, num_classes=4))
    if isinstance(model, EoMT):
        model.attn_mask_probs.fill_(1.0)  # the masked blocks run at inference (as the HF-mapped weights)
    exp = model.exportable()
    fast = segzoo.optimize(exp)
    attns = [m for m in fast.modules() if isinstance(m, MSDeformAttn)]
    assert all(a.gather for a in attns) and (attns or isinstance(model, EoMT))
    owner = EoMT if isinstance(model, EoMT) else MaskedAttentionDecoder
    for size in SIZES:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            cls, masks = exp(x)
        calls = _count_calls(monkeypatch, owner, "predict")
        cls2, masks2 = fast(x)
        monkeypatch.undo()
        assert len(calls) == 1  # the final prediction only
        torch.testing.assert_close(cls2, cls, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(masks2, masks, rtol=1e-4, atol=1e-3)


@pytest.mark.slow  # export and its ONNX translation: about 20-40 s each on one core
@pytest.mark.parametrize("name", ["segformer_b0", "upernet_resnet50"])
def test_optimized_heads_export_with_dynamic_sizes(name, tmp_path):
    """The folded heads (UpsampledConcatConv's matrix and resize spreads) export with dynamic sizes, and ONNX.
    (Before the bottleneck spread its bins by matrices, the optimized UPerNet's export failed: the resized
    stride-32 map's shifts put a guard on its size.)"""
    torch.manual_seed(0)
    model = _randomize(build_small(name, num_classes=3))
    fast = segzoo.optimize(model, prepack=False)
    assert fast.choices.rewritten >= 1
    program = ex.export_program(fast, torch.rand(1, 3, 64, 96), dynamic=True)
    inputs = [torch.rand(*shape) for shape in [(2, 3, 72, 100), (1, 3, 96, 64)]]
    with torch.no_grad():
        refs = [model(x) for x in inputs]
    tol = {"rtol": 1e-4, "atol": 1e-4}
    for x, ref in zip(inputs, refs):
        torch.testing.assert_close(program.module()(x), ref, **tol)
    if not (importlib.util.find_spec("onnx") and importlib.util.find_spec("onnxruntime")):
        return
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ex.export_onnx(program, path)
    for x, ref in zip(inputs, refs):
        (out,) = ex.run_onnx(path, x)
        torch.testing.assert_close(torch.as_tensor(out), ref, **tol)
