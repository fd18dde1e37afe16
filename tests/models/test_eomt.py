"""EoMT equals Hugging Face's EomtForUniversalSegmentation (random weights, a small config, mapped
by segzoo's converter): class and mask logits of every block with queries, with and without masked
attention, and the training loss; plus the annealing schedule and segzoo's forward contract."""

from __future__ import annotations

import pytest
import torch

from segzoo.models.eomt import EoMT, eomt_vit_tiny_test, hf_build_kwargs, map_hf_state_dict, mask_annealing
from tests.models.set_models import check_mixed_sizes_and_backward

transformers = pytest.importorskip("transformers")
pytest.importorskip("scipy")


def _pair(registers=4, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.EomtConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, image_size=64,
                                  patch_size=16, num_queries=8, num_blocks=2, num_register_tokens=registers,
                                  num_labels=5, train_num_points=256, layerscale_value=0.5)
    ref = transformers.EomtForUniversalSegmentation(cfg).eval()
    with torch.no_grad():  # away from the constant initialisations (zero registers, equal layer scales)
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours = EoMT(**hf_build_kwargs(cfg)).eval()
    ours.load_state_dict(map_hf_state_dict(ref.state_dict()), strict=True)
    return ref, ours


@pytest.fixture(scope="module", params=[4, 0], ids=["registers", "no-registers"])
def pair(request):
    return _pair(request.param)


def test_the_converter_maps_every_key_one_to_one(pair):
    ref, ours = pair
    mapped = map_hf_state_dict(ref.state_dict())
    assert set(mapped) == set(ours.state_dict())
    skip = ("criterion.", "embeddings.position_ids")
    assert sum(v.numel() for v in mapped.values()) == sum(
        v.numel() for k, v in ref.state_dict().items() if not k.startswith(skip))


def test_logits_equal_hugging_face_with_masked_attention(pair):
    ref, ours = pair
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(ours.normalize(x), output_hidden_states=True)
        got = ours.forward_logits(ours.normalize(x))
    assert len(got) == 3  # one prediction before each of the 2 query blocks + the final one
    torch.testing.assert_close(got[-1][0], expected.class_queries_logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(got[-1][1], expected.masks_queries_logits, rtol=0, atol=1e-4)
    assert got[-1][1].shape == (2, 8, 16, 16) and got[-1][0].shape == (2, 8, 6)
    # the mask is active: with it switched off the logits change
    plain = ours.forward_logits(ours.normalize(x), probs=[0.0, 0.0])
    assert len(plain) == 1 and (plain[-1][1] - got[-1][1]).abs().max() > 1e-3


def test_logits_equal_hugging_face_after_annealing(pair):
    ref, ours = pair
    x = torch.rand(1, 3, 64, 64)
    ref.attn_mask_probs.zero_()
    ours.load_state_dict(map_hf_state_dict(ref.state_dict()))
    try:
        with torch.no_grad():
            expected = ref(ours.normalize(x))
            got = ours.forward_logits(ours.normalize(x))
        assert len(got) == 1  # a finished model is a plain ViT: no intermediate predictions
        torch.testing.assert_close(got[-1][0], expected.class_queries_logits, rtol=0, atol=1e-4)
        torch.testing.assert_close(got[-1][1], expected.masks_queries_logits, rtol=0, atol=1e-4)
    finally:
        ref.attn_mask_probs.fill_(1.0)
        ours.attn_mask_probs.fill_(1.0)


def test_the_training_loss_equals_hugging_face(pair):
    ref, ours = pair
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 64, 64, generator=g)
    targets = [{"labels": torch.tensor([1, 4, 0]), "masks": (torch.rand(3, 64, 64, generator=g) > 0.5).float()},
               {"labels": torch.tensor([2]), "masks": (torch.rand(1, 64, 64, generator=g) > 0.3).float()}]
    ref.train()
    ours.train()
    try:
        torch.manual_seed(7)
        expected = ref(ours.normalize(x), mask_labels=[t["masks"] for t in targets],
                       class_labels=[t["labels"] for t in targets])
        torch.manual_seed(7)
        got = ours(x, targets)
    finally:
        ref.eval()
        ours.eval()
    torch.testing.assert_close(got["loss"], expected.loss, rtol=1e-5, atol=1e-4)
    assert len(got) == 1 + 3 * 3  # deep supervision over the 3 predictions


def test_mask_annealing_schedule():
    assert mask_annealing(0, 10, 20) == 1.0 and mask_annealing(20, 10, 20) == 0.0
    assert mask_annealing(15, 10, 20) == pytest.approx(0.5 ** 0.9)
    m = eomt_vit_tiny_test(num_classes=3, anneal_steps=[(0, 10), (10, 20)])
    assert m.anneal(5) == [pytest.approx(0.5 ** 0.9), 1.0]
    assert m.attn_mask_probs.tolist() == pytest.approx([0.5 ** 0.9, 1.0])
    assert m.anneal(25) == [0.0, 0.0]
    with pytest.raises(ValueError, match="end > start"):
        mask_annealing(0, 5, 5)
    with pytest.raises(ValueError, match="windows"):
        eomt_vit_tiny_test(num_classes=3).anneal(1)


@pytest.mark.parametrize("size", [(64, 64), (70, 90)])
def test_one_forward_gives_semantic_instance_and_panoptic(size):
    torch.manual_seed(0)
    m = eomt_vit_tiny_test(num_classes=4, num_stuff=2, score_thresh=0.2, overlap_thresh=0.5).eval()
    h, w = size
    with torch.no_grad():
        out = m(torch.rand(2, 3, h, w))
    assert len(out) == 2
    for r in out:
        assert r["sem_seg"].shape == (4, h, w)
        k = len(r["labels"])
        assert r["masks"].shape == (k, h, w) and r["boxes"].shape == (k, 4)
        assert bool((r["labels"] < 2).all())
        assert r["segments"].shape == (h, w) and r["segments"].dtype == torch.int32


def test_images_of_different_sizes_and_backward():
    torch.manual_seed(0)
    m = eomt_vit_tiny_test(num_classes=3, num_points=64, anneal_steps=[(0, 4), (0, 4)])
    m.anneal(2)  # half-way: masks drawn per query
    check_mixed_sizes_and_backward(m)


def test_bad_arguments_say_what_to_use():
    with pytest.raises(ValueError, match="num_blocks"):
        eomt_vit_tiny_test(num_classes=3, num_blocks=9)
    with pytest.raises(ValueError, match="anneal_steps"):
        eomt_vit_tiny_test(num_classes=3, anneal_steps=[(0, 1)])
    with pytest.raises(KeyError, match="unexpected key"):
        map_hf_state_dict({"encoder.something": torch.zeros(1)})


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_the_published_layouts_map_one_to_one(size):
    """The tue-mps COCO 640 px layouts (HF's default config is ViT-L), built on the meta device:
    every mapped key exists in segzoo's eomt_vit_* with the same shape."""
    from segzoo.models import eomt
    width, depth, heads = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}[size]
    cfg = transformers.EomtConfig(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
                                  num_labels=133)
    with torch.device("meta"):
        ref = transformers.EomtForUniversalSegmentation(cfg)
        ours = getattr(eomt, f"eomt_vit_{size}")(num_classes=133, num_stuff=53)
    mapped = map_hf_state_dict(ref.state_dict())
    expected = ours.state_dict()
    assert set(mapped) == set(expected)
    bad = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in mapped.items() if v.shape != expected[k].shape}
    assert not bad, bad


def test_bf16_autocast_training_step_gives_float32_losses_close_to_float32():
    torch.manual_seed(0)
    m = eomt_vit_tiny_test(num_classes=3, num_points=64)
    x = torch.rand(2, 3, 64, 64)
    targets = [{"labels": torch.tensor([0, 2]), "masks": torch.rand(2, 64, 64) > 0.5},
               {"labels": torch.tensor([1]), "masks": torch.rand(1, 64, 64) > 0.5}]
    torch.manual_seed(1)
    ref = m(x, targets)["loss"]
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = m(x, targets)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in got.values())
    assert abs(float(got["loss"].detach()) - float(ref.detach())) < 0.05 * float(ref.detach())
    got["loss"].backward()


def test_backbone_weights_from_a_file(tmp_path):
    timm = pytest.importorskip("timm")
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, num_classes=0, patch_size=16,
                            img_size=64, embed_dim=32, depth=4, num_heads=2)
    path = tmp_path / "vit.safetensors"
    safetensors.save_file(vit.state_dict(), str(path))
    m = eomt_vit_tiny_test(num_classes=3, backbone_weights=str(path))
    got = m.vit.state_dict()
    assert all(torch.equal(v, got[k]) for k, v in vit.state_dict().items())
