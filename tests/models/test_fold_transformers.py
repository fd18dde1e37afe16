"""The exact inference rewrites of SegFormer, UPerNet and Mask2Former (``fold_for_inference``, applied by
``segzoo.optimize``) give the outputs of the models' own eval forward, at even and odd sizes, with random
BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import segzoo
from segzoo.layers.deform_attn import MSDeformAttn
from segzoo.layers.upsampled_conv import UpsampledConcatConv
from segzoo.models.segformer import SegFormer, SegFormerHead
from segzoo.models.upernet import UPerHead, UPerNet

SIZES = [(64, 64), (97, 75)]


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
    for size in SIZES:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            ref = model(x)
        out = fast(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * max(1.0, float(ref.abs().max())))


@pytest.mark.parametrize("backbone", ["mit_b0", "convnext_atto"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_segformer_head_folded_into_one_conv_per_map(backbone, channels_last):
    torch.manual_seed(0)
    model = _randomize(SegFormer(num_classes=5, backbone=backbone, embed_dim=32))
    _check(model, SegFormerHead, channels_last)
    fast = segzoo.optimize(model)
    head = fast.model.decode_head
    assert isinstance(head.folded, UpsampledConcatConv) and head.folded.first.in_channels == head.proj[0].in_channels


@pytest.mark.parametrize("backbone, eps", [("convnext_atto", 1e-6), ("resnet18", None)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_upernet_bottlenecks_on_the_small_maps(backbone, eps, channels_last):
    torch.manual_seed(0)
    model = _randomize(UPerNet(num_classes=5, backbone=backbone, channels=32, out_norm_eps=eps))
    _check(model, UPerHead, channels_last)


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


@pytest.mark.slow
def test_mask2former_gathers_and_matches_its_eval_forward():
    torch.manual_seed(0)
    model = _randomize(segzoo.build("mask2former_resnet18_small", num_classes=4))
    exp = model.exportable()
    fast = segzoo.optimize(exp)
    attns = [m for m in fast.modules() if isinstance(m, MSDeformAttn)]
    assert attns and all(a.gather for a in attns)
    for size in SIZES:
        x = torch.rand(1, 3, *size)
        with torch.no_grad():
            cls, masks = exp(x)
        cls2, masks2 = fast(x)
        torch.testing.assert_close(cls2, cls, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(masks2, masks, rtol=1e-4, atol=1e-3)
