"""``weights=TAG`` for the Hugging Face rows (SegFormer, UPerNet): read from a pre-filled Hugging
Face hub cache offline, exactly like timm bodies; sockets are blocked so that any network access
fails loudly. The files are random-weight models saved by transformers in the published layout."""

from __future__ import annotations

import pytest
import torch

import segzoo
from segzoo.convert import from_huggingface
from segzoo.data.formats.ade20k import ADE20K_CLASSES
from segzoo.hub import WeightsError
from segzoo.hub.published import get_weights
from tests.hub.test_weights_hub import empty_caches
from tests.hub.test_weights_timm import no_network  # noqa: F401 (a fixture)
from tests.models.hf_reference import randomise_norms

transformers = pytest.importorskip("transformers")
REPO = "nvidia/segformer-b0-finetuned-ade-512-512"


@pytest.fixture
def env(tmp_path, monkeypatch, no_network):  # noqa: F811
    return empty_caches(tmp_path, monkeypatch)


def _published_b0(folder) -> dict:
    torch.manual_seed(0)
    model = randomise_norms(transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=150)))
    model.save_pretrained(folder)
    return model.eval()


def _prefill(cache, repo: str, filename: str, src) -> None:
    """The hub cache layout: refs/main -> snapshots/<commit>/<file>."""
    commit = "b" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / filename).write_bytes(src.read_bytes())


def test_rows_name_their_repository_and_licence():
    e = get_weights("segformer_b0.ade")
    assert e.source == "huggingface" and e.hf_repo == REPO and e.metrics == (("miou", 37.4),)
    assert "non-commercial" in e.licence
    assert e.url == f"https://huggingface.co/{REPO}/resolve/main/model.safetensors"
    assert get_weights("upernet_convnext_tiny.ade").hf_repo == "openmmlab/upernet-convnext-tiny"


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "SEGZOO_OFFLINE"])
def test_tag_is_read_from_the_hub_cache_offline(env, monkeypatch, offline):
    ref = _published_b0(env / "saved")
    monkeypatch.setenv(offline, "1")
    _prefill(env / "hf", REPO, "model.safetensors", env / "saved" / "model.safetensors")
    model = segzoo.build("segformer_b0", weights="ade").eval()
    assert model.classes == list(ADE20K_CLASSES) and model.num_classes == 150
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        direct = from_huggingface(ref.state_dict(), "segformer_b0")(x)
        assert torch.equal(model(x), direct)
    assert segzoo.build("segformer_b0", weights="ade").spec == model.spec  # now from segzoo's cache


def test_missing_file_offline_says_where_to_get_it(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match=f"offline mode is on.*https://huggingface.co/{REPO}/resolve/main"):
        segzoo.build("segformer_b0", weights="ade")


def test_a_copy_downloaded_by_hand_is_picked_up(env, monkeypatch):
    _published_b0(env / "saved")
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    manual = env / "segzoo" / "downloads" / get_weights("segformer_b0.ade").file_name
    manual.parent.mkdir(parents=True)
    manual.write_bytes((env / "saved" / "model.safetensors").read_bytes())
    assert segzoo.build("segformer_b0", weights="ade").num_classes == 150
