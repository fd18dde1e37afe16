"""timm's Swin with the Swin segmentation code's window order (``segzoo.backbones.swin``) equals Hugging
Face's ``SwinBackbone`` (the body of the published Mask2Former and UPerNet-Swin files) at input sizes
whose stages are no whole number of windows; timm's own order does not. Random weights and LayerNorms,
mapped with the Hugging Face Swin key map."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

import segzoo
from segzoo.backbones import TimmBackbone
from segzoo.backbones.swin import PadFirstSwinBlock, pad_before_shift
from segzoo.models.upernet import hf_swin_key
from tests.models.hf_reference import randomise_norms

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4], window_size=7,
                                  out_features=["stage1", "stage2", "stage3", "stage4"])
    ref = randomise_norms(transformers.SwinBackbone(cfg)).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.5)
    ours = TimmBackbone("swin_tiny_patch4_window7_224", out_indices=(-4, -3, -2, -1), dynamic_img_size=True,
                        always_partition=True, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
    state, qkv, norms = {}, {}, {}
    for k, v in ref.state_dict().items():
        if k.startswith("hidden_states_norms."):
            norms[k[len("hidden_states_norms."):]] = v
            continue
        name, slot = hf_swin_key(k.removeprefix("swin."))
        assert name is not None, k
        if name == "":
            continue
        name = name.removeprefix("backbone.")
        if slot is None:
            state[name] = v
        else:
            qkv.setdefault(name, [None] * 3)[slot] = v
    state.update({k: torch.cat(parts) for k, parts in qkv.items()})
    ours.load_state_dict(state, strict=True)
    return ref, ours.eval(), norms


def _ours(ours, norms, x):
    with torch.no_grad():
        out = []
        for i, (f, c) in enumerate(zip(ours(x), ours.channels)):
            f = f if f.shape[-1] == c and f.shape[1] != c else f.permute(0, 2, 3, 1)  # (B, h, w, C)
            w, b = norms[f"stage{i + 1}.weight"], norms[f"stage{i + 1}.bias"]
            out.append(torch.nn.functional.layer_norm(f, (c,), w, b).permute(0, 3, 1, 2))
        return out


@pytest.mark.parametrize("size", [(96, 128), (64, 160), (224, 224)])
def test_pad_first_blocks_equal_hugging_faces_swin(pair, size):
    ref, ours, norms = pair
    pad_before_shift(ours)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = ref(x).feature_maps
    for got, exp in zip(_ours(ours, norms, x), expected):
        torch.testing.assert_close(got, exp, rtol=0, atol=1e-4)


def test_timms_order_differs_off_the_window_grid(pair):
    ref, ours, norms = pair
    blocks = [m for m in ours.modules() if isinstance(m, SwinTransformerBlock)]
    x = torch.randn(1, 3, 96, 128)
    try:
        for m in blocks:
            m.__class__ = SwinTransformerBlock
        got = _ours(ours, norms, x)
    finally:
        pad_before_shift(ours)
    with torch.no_grad():
        expected = ref(x).feature_maps
    assert max((a - b).abs().max() for a, b in zip(got, expected)) > 1e-2


def test_the_swin_models_use_the_pad_first_order():
    with torch.device("meta"):
        for name in ("upernet_swin_tiny", "mask2former_swin_tiny"):
            blocks = [m for m in segzoo.build(name, num_classes=3).modules() if isinstance(m, SwinTransformerBlock)]
            assert blocks and all(type(m) is PadFirstSwinBlock for m in blocks), name
    assert pad_before_shift(torch.nn.Linear(2, 2)) == 0
