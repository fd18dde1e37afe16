"""``weights=TAG`` for the published Mask2Former and EoMT checkpoints (``facebook/mask2former-swin-*``,
``tue-mps/*eomt*``): read offline from a pre-filled Hugging Face hub cache, exactly like the SegFormer
rows; sockets are blocked. The files are random-weight models of the published architectures saved by
transformers (the published names), and for EoMT also the official code's ``pytorch_model.bin`` layout;
the converted models give Hugging Face's logits (<= 1e-4)."""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.hub.published import COCO_PANOPTIC, get_weights, list_weights
from segzoo.models.eomt import map_hf_state_dict as map_eomt
from tests.hub.test_weights_hub import empty_caches
from tests.hub.test_weights_timm import no_network  # noqa: F401 (a fixture)
from tests.models.hf_reference import randomise_norms
from tests.models.test_hf_weights import _prefill

transformers = pytest.importorskip("transformers")
M2F_REPO = "facebook/mask2former-swin-tiny-coco-panoptic"
EOMT_REPO = "tue-mps/coco_panoptic_eomt_small_640_2x"


@pytest.fixture
def env(tmp_path, monkeypatch, no_network):  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return empty_caches(tmp_path, monkeypatch)


def test_rows_name_their_repository_metrics_and_licence():
    e = get_weights("mask2former_swin_tiny.coco_panoptic")
    assert e.source == "huggingface" and e.hf_repo == M2F_REPO and e.classes == COCO_PANOPTIC
    assert e.metrics == (("pq", 53.2), ("mask_map", 43.3), ("miou", 63.2))
    assert dict(e.convert_kwargs) == {"num_stuff": 53}
    assert "CC BY-NC 4.0" in e.licence and "non-commercial" in e.licence
    assert get_weights("mask2former_swin_tiny.ade").hf_repo == "facebook/mask2former-swin-tiny-ade-semantic"
    eomt = get_weights("eomt_vit_large.ade")
    assert eomt.hf_repo == "tue-mps/ade20k_semantic_eomt_large_512" and eomt.metrics == (("miou", 58.4),)
    assert eomt.licence.startswith("MIT") and "Apache-2.0" in eomt.licence
    assert len(list_weights("mask2former_swin_*")) == 4 and len(list_weights("eomt_vit_*")) == 8


def test_weights_list_shows_them(capsys):
    from segzoo.hub.weights import list_command

    assert list_command("*") == 0
    out = capsys.readouterr().out
    assert "mask2former_swin_tiny.coco_panoptic" in out and "pq 53.2, mask_map 43.3, miou 63.2" in out
    assert "eomt_vit_large.ade" in out and "miou 58.4" in out


@pytest.mark.slow  # a 47M-parameter Swin-T Mask2Former, built twice (25-30 s on one busy core)
def test_mask2former_tag_is_read_from_the_hub_cache_offline(env):
    torch.manual_seed(0)
    swin = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                   out_features=["stage1", "stage2", "stage3", "stage4"])
    ref = randomise_norms(transformers.Mask2FormerForUniversalSegmentation(
        transformers.Mask2FormerConfig(backbone_config=swin, num_labels=133))).eval()  # the published sizes
    ref.save_pretrained(env / "saved")
    _prefill(env / "hf", M2F_REPO, "model.safetensors", env / "saved" / "model.safetensors")
    model = segzoo.build("mask2former_swin_tiny", weights="coco_panoptic").eval()
    assert model.classes == list(COCO_PANOPTIC) and model.num_stuff == 53 and model.num_things == 80
    x = torch.rand(1, 3, 96, 160)
    with torch.no_grad():
        expected = ref(model.normalize(x))
        cls, msk = model.forward_logits(model.normalize(x))[-1]
    torch.testing.assert_close(cls, expected.class_queries_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(msk, expected.masks_queries_logits, rtol=0, atol=1e-4)
    assert segzoo.build("mask2former_swin_tiny", weights="coco_panoptic").spec == model.spec  # segzoo's cache now


def _official_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """segzoo's EoMT weights under the official code's names (its ``pytorch_model.bin`` files)."""
    names = {"up": "conv1", "dw": "conv2", "norm": "norm"}
    out = {"network.encoder.pixel_mean": torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
           "network.encoder.pixel_std": torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
           "criterion.empty_weight": torch.ones(134)}
    for k, v in state.items():
        if k.startswith("vit."):
            out["network.encoder.backbone." + k[4:]] = v
        elif k.startswith("query."):
            out["network.q." + k[6:]] = v
        elif k.startswith("upscale."):
            _, i, name, rest = k.split(".", 3)
            out[f"network.upscale.{i}.{names[name]}.{rest}"] = v
        else:
            out["network." + k] = v
    return out


# about 18 s each on a busy core; the Hugging Face layout's mapping is also covered fast by test_eomt.py
@pytest.mark.parametrize("layout", [pytest.param("hugging face", marks=pytest.mark.slow), "official"])
def test_eomt_tag_is_read_from_the_hub_cache_offline(env, layout):
    torch.manual_seed(0)
    cfg = transformers.EomtConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, num_blocks=3,
                                  num_labels=133, image_size=320)  # EoMT-S; the published file has 640
    ref = transformers.EomtForUniversalSegmentation(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():  # away from the constant initialisations (zero registers, equal layer scales)
            p.add_(0.02 * torch.randn_like(p))
        ref.attn_mask_probs.zero_()  # a finished model: the masks annealed away
    if layout == "official":
        torch.save(_official_layout(map_eomt(ref.state_dict())), env / "pytorch_model.bin")
        _prefill(env / "hf", EOMT_REPO, "pytorch_model.bin", env / "pytorch_model.bin")
    else:
        ref.save_pretrained(env / "saved")
        _prefill(env / "hf", EOMT_REPO, "model.safetensors", env / "saved" / "model.safetensors")
    model = segzoo.build("eomt_vit_small", weights="coco_panoptic").eval()
    assert model.classes == list(COCO_PANOPTIC) and model.num_stuff == 53
    assert model.num_blocks == 3 and model.patch_size == 16 and model.vit.pos_embed.shape[1] == 20 * 20
    x = torch.rand(1, 3, 320, 320)  # the size of the position table, which Hugging Face's model needs
    with torch.no_grad():
        expected = ref(model.normalize(x))
        cls, msk = model.forward_logits(model.normalize(x))[-1]
    torch.testing.assert_close(cls, expected.class_queries_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(msk, expected.masks_queries_logits, rtol=0, atol=1e-4)


def test_official_layout_refuses_other_statistics_and_foreign_keys():
    from segzoo.models.eomt import EoMT

    ours = EoMT(num_classes=3, backbone="vit_small_patch14_reg4_dinov2", img_size=64, num_queries=4, num_blocks=1,
                backbone_kwargs=dict(embed_dim=32, depth=2, num_heads=2))
    official = _official_layout(ours.state_dict())
    mapped = map_eomt(official)
    own = ours.state_dict()
    assert set(mapped) == set(own) and all(torch.equal(mapped[k], v) for k, v in own.items())
    with pytest.raises(ValueError, match="not ImageNet's"):
        map_eomt({**official, "network.encoder.pixel_mean": torch.zeros(1, 3, 1, 1)})
    with pytest.raises(KeyError, match="network.extra"):
        map_eomt({**official, "network.extra.weight": torch.zeros(1)})
