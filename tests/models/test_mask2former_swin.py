"""Mask2Former on transformers' Swin, the layout of the published ``facebook/mask2former-swin-*``
checkpoints: Hugging Face's Mask2FormerForUniversalSegmentation with a small random SwinConfig (random
biases and LayerNorms), mapped by segzoo's converter onto timm's Swin, gives the same body maps and the
same class and mask logits of every decoder layer (<= 1e-4, float32, eval) at sizes whose stages are no
whole number of windows; every key maps 1:1, from the model and from its saved (published-layout) file."""

from __future__ import annotations

import pytest
import torch
from timm.models.swin_transformer import SwinTransformerBlock

import segzoo
from segzoo.backbones.swin import PadFirstSwinBlock
from segzoo.checkpoint import read_state_dict
from segzoo.convert import from_huggingface
from segzoo.models.mask2former import Mask2Former, hf_build_kwargs, map_hf_state_dict
from tests.models.hf_reference import randomise_norms

transformers = pytest.importorskip("transformers")
SIZES = [(96, 128), (64, 160)]  # stage 1 at 24 x 32 and 16 x 40: padded to 7 x 7 windows


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    swin = transformers.SwinConfig(embed_dim=32, depths=[1, 1, 2, 2], num_heads=[1, 2, 2, 4], window_size=7,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = transformers.Mask2FormerConfig(
        backbone_config=swin, num_labels=5, feature_size=64, mask_feature_size=64, hidden_dim=64,
        encoder_feedforward_dim=128, encoder_layers=2, decoder_layers=3, num_attention_heads=4, dim_feedforward=128,
        num_queries=7)
    ref = randomise_norms(transformers.Mask2FormerForUniversalSegmentation(cfg)).eval()
    with torch.no_grad():  # relative position tables away from their near-zero initialisation
        for name, p in ref.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.5)
    folder = tmp_path_factory.mktemp("m2f_swin")
    ref.save_pretrained(folder)  # the published names (attention.self.query, encoder.layers...)
    ours = Mask2Former(**hf_build_kwargs(cfg)).eval()
    ours.load_state_dict(map_hf_state_dict(ref.state_dict()), strict=True)
    return ref, ours, read_state_dict(folder / "model.safetensors")


def _body_maps(model: Mask2Former, x: torch.Tensor) -> list[torch.Tensor]:
    """The normed body maps that reach the pixel decoder."""
    seen = []
    handle = model.pixel_decoder.register_forward_pre_hook(lambda _, args: seen.append(list(args[0])))
    try:
        model.forward_logits(x)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("which", ["state_dict", "published file"])
def test_every_key_maps_one_to_one(pair, which):
    ref, ours, published = pair
    state = ref.state_dict() if which == "state_dict" else published
    mapped = map_hf_state_dict(state)
    own = ours.state_dict()
    assert set(mapped) == set(own) and all(mapped[k].shape == own[k].shape for k in own)
    unused = ("criterion.", "model.pixel_level_module.encoder.layernorm.",  # SwinModel's final norm: not used
              "model.pixel_level_module.encoder.swin.layernorm.")
    kept = [k for k in state if not k.startswith(unused) and not k.endswith("relative_position_index")]
    assert sum(v.numel() for v in mapped.values()) == sum(state[k].numel() for k in kept)
    assert any(".attention.self.query." in k for k in published)  # the published names were read
    with pytest.raises(KeyError, match="not a Swin backbone key"):
        map_hf_state_dict({**state, "model.pixel_level_module.encoder.embeddings.extra.weight": torch.zeros(1)})
    part = {k: v for k, v in state.items() if not k.endswith(("attention.self.key.weight", "attention.k_proj.weight"))}
    with pytest.raises(KeyError, match="lacks the key projection"):
        map_hf_state_dict(part)


@pytest.mark.parametrize("size", SIZES)
def test_body_maps_and_every_layers_logits_equal_hugging_face(pair, size):
    ref, ours, _ = pair
    x = ours.normalize(torch.rand(2, 3, *size))
    with torch.no_grad():
        expected = ref(x, output_auxiliary_logits=True)
        maps = ref.model.pixel_level_module.encoder(x).feature_maps
        got_maps = _body_maps(ours, x)
        got = ours.forward_logits(x)
    for a, b in zip(got_maps, maps):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert expected.masks_queries_logits.std() > 0.01
    torch.testing.assert_close(got[-1][0], expected.class_queries_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got[-1][1], expected.masks_queries_logits, rtol=0, atol=1e-4)
    for (cls, msk), aux in zip(got[:-1], expected.auxiliary_logits):
        torch.testing.assert_close(cls, aux["class_queries_logits"], rtol=0, atol=1e-4)
        torch.testing.assert_close(msk, aux["masks_queries_logits"], rtol=0, atol=1e-4)


def test_timms_own_window_order_would_differ(pair):
    """timm shifts before padding: with its blocks the body maps move away from Hugging Face's."""
    ref, ours, _ = pair
    x = ours.normalize(torch.rand(1, 3, *SIZES[0]))
    blocks = [m for m in ours.modules() if isinstance(m, SwinTransformerBlock)]
    assert blocks and all(type(m) is PadFirstSwinBlock for m in blocks)
    try:
        for m in blocks:
            m.__class__ = SwinTransformerBlock
        with torch.no_grad():
            plain = _body_maps(ours, x)
            maps = ref.model.pixel_level_module.encoder(x).feature_maps
    finally:
        for m in blocks:
            m.__class__ = PadFirstSwinBlock
    assert max((a - b).abs().max() for a, b in zip(plain, maps)) > 1e-2  # the shifted blocks' stages


def test_the_registered_name_builds_the_published_layout(pair):
    """``from_huggingface(file, "mask2former_swin_tiny")`` reads the sizes from the weights; the body's
    and the heads' shapes come as builder arguments (here the small test Swin)."""
    ref, _, published = pair
    swin = dict(hf_build_kwargs(ref.config)["backbone_kwargs"])
    model = from_huggingface(published, "mask2former_swin_tiny", backbone_kwargs=swin, heads=4)
    assert model.num_classes == 5 and len(model.decoder.layers) == 2 and model.decoder.query_feat.num_embeddings == 7
    x = torch.rand(1, 3, *SIZES[1])
    with torch.no_grad():
        expected = ref(model.normalize(x)).masks_queries_logits
        torch.testing.assert_close(model.forward_logits(model.normalize(x))[-1][1], expected, rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="32-channel Swin.*pass the body of its size"):
        from_huggingface(published, "mask2former_swin_tiny")


@pytest.mark.parametrize("size, body, swin", [
    ("small", "swin_small_patch4_window7_224", dict(embed_dim=96, num_heads=[3, 6, 12, 24], window_size=7)),
    ("base", "swin_base_patch4_window12_384", dict(embed_dim=128, num_heads=[4, 8, 16, 32], window_size=12)),
    ("large", "swin_large_patch4_window12_384", dict(embed_dim=192, num_heads=[6, 12, 24, 48], window_size=12)),
])
def test_the_other_published_swin_sizes_map_with_their_body(size, body, swin):
    """The facebook/mask2former-swin-{small,base,large}-* layouts (built on the meta device) map onto
    mask2former_swin_tiny with ``backbone=`` of their size: every key, every shape."""
    from segzoo.models.mask2former import hf_implied_kwargs

    cfg = transformers.Mask2FormerConfig(
        backbone_config=transformers.SwinConfig(depths=[2, 2, 18, 2], out_features=[f"stage{i}" for i in range(1, 5)],
                                                **swin), num_labels=133, num_queries=200 if size == "large" else 100)
    with torch.device("meta"):
        mapped = map_hf_state_dict(transformers.Mask2FormerForUniversalSegmentation(cfg).state_dict())
        model = segzoo.build("mask2former_swin_tiny", num_classes=133, backbone=body, **hf_implied_kwargs(mapped))
    own = {k: v.shape for k, v in model.state_dict().items()}
    assert own == {k: v.shape for k, v in mapped.items()}
