"""SegFormer against Hugging Face's SegformerForSemanticSegmentation (the test-only reference):
B0 and B2 with random weights and random norm statistics, mapped with segzoo's converter, give
the same logits (max abs diff <= 1e-5, float32, eval) and the same training loss; every key of
both Hugging Face layouts (the published one and transformers 5's) maps 1:1."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import segzoo
from segzoo.checkpoint import read_state_dict
from segzoo.convert import from_huggingface, from_smp
from segzoo.models.segformer import SegFormer, map_huggingface, map_smp
from tests.models.hf_reference import TOL, batch, max_diff, randomise_norms

transformers = pytest.importorskip("transformers")

# the transformers configs of MiT-B0 and B2 (the paper's Table 6)
CONFIGS = {
    "segformer_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "segformer_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0,
                  drop_path_rate=0.0)


def reference(name: str, classes: int = 5, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.SegformerConfig(num_labels=classes, **CONFIGS[name], **config)
    return randomise_norms(transformers.SegformerForSemanticSegmentation(cfg)).eval()


NAMES = ["segformer_b0", pytest.param("segformer_b2", marks=pytest.mark.slow)]  # B2: 25M parameters, ~20 s


@pytest.mark.parametrize("name", NAMES)
def test_logits_equal_huggingface(name):
    ref = reference(name)
    ours = from_huggingface(ref.state_dict(), name, norm_eps=1e-5)  # transformers' LayerNorm epsilon
    images, normalised, _ = batch(size=(64, 96))
    with torch.no_grad():
        expected = ref(pixel_values=normalised).logits  # stride 4
        stride4, _ = ours.forward_logits(ours.normalize(images))
        full = ours(images)
    assert expected.std() > 0.1  # not a degenerate output
    assert max_diff(stride4, expected) <= TOL
    # segzoo returns logits at input size: the reference's stride-4 logits upsampled bilinearly
    # (align_corners=False), the step transformers applies before its loss
    assert max_diff(full, F.interpolate(expected, size=(64, 96), mode="bilinear", align_corners=False)) <= TOL


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_equals_huggingface(name):
    ref = reference(name, **NO_DROPOUT).train()
    ours = from_huggingface(ref.state_dict(), name, norm_eps=1e-5, dropout=0.0, drop_path_rate=0.0).train()
    images, normalised, labels = batch()
    expected = ref(pixel_values=normalised, labels=labels).loss
    losses = ours(images, labels)
    assert abs(losses["loss"].item() - expected.item()) <= TOL
    expected.backward()
    losses["loss"].backward()
    assert max_diff(ours.decode_head.classifier.weight.grad[:, :, 0, 0], ref.decode_head.classifier.weight.grad[
        :, :, 0, 0]) <= TOL


def test_every_key_maps_one_to_one(tmp_path):
    ref = reference("segformer_b0")
    ours = segzoo.build("segformer_b0", num_classes=5)
    own = ours.state_dict()
    ref.save_pretrained(tmp_path)  # the published layout (segformer.encoder.block.0.0.attention.self.query...)
    published = read_state_dict(tmp_path / "model.safetensors")
    assert any(k.startswith("segformer.encoder.block.") for k in published)
    for state in (ref.state_dict(), published):
        mapped, classes = map_huggingface(state)
        assert classes == 5
        assert len(mapped) == len(state)
        assert set(mapped) == set(own)
        assert all(mapped[k].shape == own[k].shape for k in own)
    with torch.no_grad():
        x = torch.rand(1, 3, 64, 64)
        a = from_huggingface(published, "segformer_b0")(x)
        b = from_huggingface(ref.state_dict(), "segformer_b0")(x)
    assert torch.equal(a, b)


def test_foreign_keys_and_wrong_variant_are_refused():
    state = reference("segformer_b0").state_dict()
    with pytest.raises(KeyError, match="not SegFormer keys.*extra.weight"):
        map_huggingface({**state, "extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="holds a mit_b0 encoder but 'segformer_b2' has mit_b2; choose segformer_b0"):
        from_huggingface(state, "segformer_b2")
    with pytest.raises(ValueError, match="builds SegFormer and UPerNet .*models, not 'fcn_resnet50'"):
        from_huggingface(state, "fcn_resnet50")
    with pytest.raises(ValueError, match="smp converter builds SegFormer .* and UPerNet .* not 'fcn_resnet50'"):
        from_smp(state, "fcn_resnet50")


def test_any_input_size_and_timm_bodies():
    model = segzoo.build("segformer_b0", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 45, 71)).shape == (1, 3, 45, 71)
    assert model.size_divisibility == 1
    for body in ("resnet18", "swin_tiny_patch4_window7_224"):  # ConvNeXt: tests/models/test_upernet.py
        m = segzoo.build("segformer_b0", num_classes=3, backbone=body).eval()
        assert isinstance(m, SegFormer) and len(m.backbone.channels) == 4 and m.backbone.strides[0] == 4
        with torch.no_grad():
            assert m(torch.rand(1, 3, 50, 70)).shape == (1, 3, 50, 70)


def test_mit_refuses_timm_tags():
    with pytest.raises(ValueError, match="MiT bodies take a local weights file"):
        segzoo.build("segformer_b0", num_classes=3, backbone_weights="imagenet")


def test_smp_layout_maps_one_to_one_and_gives_smp_logits():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    ref = randomise_norms(smp.Segformer(encoder_name="mit_b0", encoder_weights=None, classes=5)).eval()
    state = ref.state_dict()
    mapped, classes = map_smp(state)
    own = segzoo.build("segformer_b0", num_classes=5).state_dict()
    kv = sum(k.endswith("attn.kv.weight") or k.endswith("attn.kv.bias") for k in state)
    assert classes == 5 and len(mapped) == len(state) + kv  # each fused kv becomes k and v
    assert set(mapped) == set(own) and all(mapped[k].shape == own[k].shape for k in own)
    ours = from_smp(state, "segformer_b0")  # the paper's LayerNorm epsilons, as smp
    images, normalised, _ = batch(size=(64, 96))
    with torch.no_grad():
        expected = ref.segmentation_head[0](ref.decoder(ref.encoder(normalised)))  # stride 4, before smp's upsampling
        got, _ = ours.forward_logits(ours.normalize(images))
    assert expected.std() > 0.1
    assert max_diff(got, expected) <= TOL


def test_cli_converts_a_published_file(tmp_path, capsys):
    from segzoo.cli import main

    ref = reference("segformer_b0")
    ref.save_pretrained(tmp_path / "hf")
    dst = tmp_path / "b0.safetensors"
    assert main(["convert", "--from", "huggingface", "--name", "segformer_b0",
                 str(tmp_path / "hf" / "model.safetensors"), str(dst)]) == 0
    assert "num_classes=5" in capsys.readouterr().out
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(segzoo.load(dst)(x), from_huggingface(ref.state_dict(), "segformer_b0")(x))
