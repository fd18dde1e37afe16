"""The gather-based deformable-attention sampling (the inference copy's) equals grid_sample's and Hugging Face's."""

from __future__ import annotations

import pytest
import torch

from segzoo.layers.deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_gather

SHAPES = [(3, 5), (6, 7), (13, 11)]  # odd, non-square levels


def _inputs(b=2, heads=4, d=8, points=3, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in SHAPES)
    q = 17
    value = torch.randn(b, s, heads, d, generator=g)
    # locations around [0, 1] and past it (corners outside every border), some exactly on pixel centres
    loc = torch.rand(b, q, heads, len(SHAPES), points, 2, generator=g) * (1 + 2 * spread) - spread
    loc[:, 0, :, :, 0] = torch.tensor([[(2 + 0.5) / w, (1 + 0.5) / h] for h, w in SHAPES])
    weights = torch.rand(b, q, heads, len(SHAPES), points, generator=g).softmax(-1)
    return value, loc, weights


@pytest.mark.parametrize("seed", [0, 1])
def test_gather_equals_grid_sample(seed):
    value, loc, weights = _inputs(seed=seed)
    ref = ms_deform_attn(value, SHAPES, loc, weights)
    out = ms_deform_attn_gather(value, SHAPES, loc, weights)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gather_equals_hugging_face():
    hf = pytest.importorskip("transformers.models.mask2former.modeling_mask2former")
    value, loc, weights = _inputs(b=1, heads=8, d=4, points=4, seed=2, spread=0.1)
    ref = hf.multi_scale_deformable_attention(value, SHAPES, loc, weights)
    torch.testing.assert_close(ms_deform_attn_gather(value, SHAPES, loc, weights), ref, rtol=1e-5, atol=1e-5)


def test_samples_far_outside_give_zero():
    value, loc, weights = _inputs()
    loc = loc.abs() + 1.5  # every sample beyond the right and bottom borders
    assert ms_deform_attn_gather(value, SHAPES, loc, weights).abs().max() == 0


def test_module_uses_gather_in_eval_after_folding_only():
    torch.manual_seed(0)
    attn = MSDeformAttn(dim=32, heads=4, levels=len(SHAPES), points=3).eval()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight)
    s = sum(h * w for h, w in SHAPES)
    query, value = torch.randn(2, 9, 32), torch.randn(2, s, 32)
    ref_pts = torch.rand(2, 9, len(SHAPES), 2)
    with torch.no_grad():
        ref = attn(query, ref_pts, value, SHAPES)
        assert attn.fold_for_inference() and attn.gather
        calls = []
        import segzoo.layers.deform_attn as mod
        real = mod.ms_deform_attn_gather
        mod.ms_deform_attn_gather = lambda *a: calls.append(1) or real(*a)
        try:
            out = attn(query, ref_pts, value, SHAPES)
            attn.train()
            attn(query, ref_pts, value, SHAPES)  # training keeps grid_sample
        finally:
            mod.ms_deform_attn_gather = real
    assert calls == [1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("b,q", [(0, 5), (2, 0)])
def test_no_image_or_no_query_gives_the_empty_output_of_the_grid_sample_path(b, q):
    shapes = [(4, 4), (2, 2)]
    value = torch.randn(b, 20, 2, 8, requires_grad=True)
    locations, weights = torch.rand(b, q, 2, 2, 3, 2), torch.rand(b, q, 2, 2, 3)
    out = ms_deform_attn_gather(value, shapes, locations, weights)
    assert out.shape == ms_deform_attn(value, shapes, locations, weights).shape == (b, q, 16)
    out.sum().backward()
    assert value.grad.shape == value.shape and not value.grad.any()
