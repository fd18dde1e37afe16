"""UPerNet against Hugging Face's UperNetForSemanticSegmentation with a ConvNeXt-T backbone (the
test-only reference): random weights and norm statistics, mapped with segzoo's converter, give
the same logits (max abs diff <= 1e-5, float32, eval) and the same training loss (main + 0.4 x
auxiliary); every key maps 1:1."""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.checkpoint import read_state_dict
from segzoo.convert import from_huggingface, from_smp
from segzoo.models.upernet import map_huggingface
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD
from tests.models.hf_reference import TOL, batch, max_diff, randomise_norms

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    backbone = transformers.ConvNextConfig(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = transformers.UperNetConfig(backbone_config=backbone, num_labels=5)
    return randomise_norms(transformers.UperNetForSemanticSegmentation(cfg)).eval()


def test_logits_equal_huggingface(reference):
    ours = from_huggingface(reference.state_dict(), "upernet_convnext_tiny")
    images, normalised, _ = batch(size=(64, 96))
    with torch.no_grad():
        expected = reference(pixel_values=normalised).logits  # already upsampled to the input size
        got = ours(images)
    assert expected.std() > 0.1
    assert max_diff(got, expected) <= TOL


def test_training_loss_equals_huggingface(reference):
    ref = reference.train()
    try:
        ours = from_huggingface(ref.state_dict(), "upernet_convnext_tiny", dropout=0.0).train()  # HF has no dropout
        images, normalised, labels = batch()
        expected = ref(pixel_values=normalised, labels=labels).loss
        losses = ours(images, labels)
    finally:
        ref.eval()
    assert set(losses) == {"loss_ce", "loss_aux", "loss"}
    assert abs(losses["loss"].item() - expected.item()) <= TOL


def test_every_key_maps_one_to_one(reference):
    state = reference.state_dict()
    mapped, classes = map_huggingface(state)
    own = segzoo.build("upernet_convnext_tiny", num_classes=5).state_dict()
    assert classes == 5 and len(mapped) == len(state)
    assert set(mapped) == set(own)
    assert all(mapped[k].shape == own[k].shape for k in own)
    with pytest.raises(KeyError, match="not UPerNet-ConvNeXt keys.*backbone.embeddings.patch_embeddings.projection"):
        map_huggingface({**state, "backbone.embeddings.patch_embeddings.projection.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", ["upernet_swin_tiny", "upernet_resnet50"])
def test_other_bodies_take_any_size(name):
    model = segzoo.build(name, num_classes=3).eval()
    assert model.backbone.strides == (4, 8, 16, 32)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 50, 70)).shape == (1, 3, 50, 70)


@pytest.mark.slow  # two 60M-parameter models at 224 x 224 (~20 s on one core)
def test_swin_logits_equal_huggingface(tmp_path):
    torch.manual_seed(0)
    backbone = transformers.SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7,
                                       out_features=["stage1", "stage2", "stage3", "stage4"])
    ref = randomise_norms(transformers.UperNetForSemanticSegmentation(
        transformers.UperNetConfig(backbone_config=backbone, num_labels=5))).eval()
    ref.save_pretrained(tmp_path)  # the published layout (attention.self.query ...)
    published = read_state_dict(tmp_path / "model.safetensors")
    images, normalised, _ = batch(n=1, size=(224, 224))  # Swin's 7 x 7 windows tile every stage
    with torch.no_grad():
        expected = ref(pixel_values=normalised).logits
        assert expected.std() > 0.1
        for state in (ref.state_dict(), published):
            ours = from_huggingface(state, "upernet_swin_tiny")
            assert max_diff(ours(images), expected) <= TOL


@pytest.mark.parametrize("encoder,name", [("resnet18", "upernet_resnet50"),
                                          ("tu-convnext_atto", "upernet_convnext_tiny")])
def test_smp_layout_maps_one_to_one_and_gives_smp_logits(encoder, name, tmp_path, capsys):
    """smp's UPerNet (FPN levels counted from the coarsest, LayerNorms on every map, no auxiliary head, a
    256-wide decoder): every key maps once, the stride-4 logits equal smp's (smp then upsamples them with
    align_corners=True), and `segzoo convert --from smp` writes the same model."""
    smp = pytest.importorskip("segmentation_models_pytorch")
    from segzoo.cli import main
    from segzoo.models.upernet import map_smp

    torch.manual_seed(0)
    ref = randomise_norms(smp.UPerNet(encoder, encoder_weights=None, classes=4)).eval()
    state = ref.state_dict()
    mapped, classes = map_smp(state)
    assert classes == 4 and len(mapped) == len(state) and len(set(mapped)) == len(state)
    body = {"backbone": "resnet18"} if encoder == "resnet18" else {"backbone": "convnext_atto"}
    ours = from_smp(state, name, **body)
    assert ours.aux_head is None and ours.decode_head.classifier.in_channels == 256
    x = torch.rand(1, 3, 64, 96)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = ref.segmentation_head[0](ref.decoder(ref.encoder((x - mean) / std)))
        assert max_diff(ours.forward_logits(ours.normalize(x))[0], expected) <= TOL
    with pytest.raises(KeyError, match="not smp UPerNet keys"):
        map_smp({**state, "decoder.extra.weight": torch.zeros(1)})
    if encoder != "resnet18":
        return
    with pytest.raises(ValueError, match="upernet_resnet50"):  # smp's ResNet-18 into the ResNet-50 model
        from_smp(state, "upernet_resnet50")
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "smp.safetensors")
    assert main(["convert", "--from", "smp", "--name", "upernet_convnext_tiny", str(tmp_path / "smp.safetensors"),
                 str(tmp_path / "bad.safetensors")]) != 0  # a ResNet checkpoint for a ConvNeXt model: refused
    capsys.readouterr()
