"""Backbone weights by timm tag, through timm's own pretrained loading, from a pre-filled
Hugging Face hub cache; sockets are blocked so that any network access fails loudly."""

import socket

import pytest
import timm
import torch
from safetensors.torch import save_file

from segzoo import hub
from segzoo.hub import WeightsError, download
from tests.hub.test_weights_hub import empty_caches

TAG = "resnet18.a1_in1k"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(self, address, *args):
        raise AssertionError(f"network access to {address} in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def env(tmp_path, monkeypatch, no_network):
    return empty_caches(tmp_path, monkeypatch)


def prefill_hf_cache(cache, repo: str, filename: str, state: dict) -> None:
    """The Hugging Face hub cache layout: refs/main -> snapshots/<commit>/<file>."""
    commit = "a" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(folder / "snapshots" / commit / filename))


@pytest.fixture
def timm_state():
    torch.manual_seed(3)
    return {k: v.contiguous() for k, v in timm.create_model("resnet18").state_dict().items()}


def test_default_tag_and_tag_checks():
    assert download.timm_name("resnet34", "imagenet") == "resnet34." + timm.models.get_pretrained_cfg("resnet34").tag
    assert download.timm_name("resnet50", "resnet50.a1_in1k") == "resnet50.a1_in1k"
    with pytest.raises(WeightsError, match="are for the timm model 'resnet50' but this backbone is 'resnet34'"):
        download.timm_name("resnet34", "resnet50.a1_in1k")
    with pytest.raises(WeightsError, match="not a timm pretrained name.*resnet34.a1_in1k"):
        download.timm_name("resnet34", "resnet34.nope")


@pytest.mark.parametrize("offline", ["HF_HUB_OFFLINE", "SEGZOO_OFFLINE", None])
def test_prefilled_hub_cache_is_used_without_network(env, monkeypatch, timm_state, offline):
    if offline:
        monkeypatch.setenv(offline, "1")
    prefill_hf_cache(env / "hf", "timm/" + TAG, "model.safetensors", timm_state)
    body = download.timm_pretrained(TAG, features_only=True)
    torch.testing.assert_close(body.state_dict()["conv1.weight"], timm_state["conv1.weight"])
    torch.testing.assert_close(body.state_dict()["layer4.1.bn2.running_var"], timm_state["layer4.1.bn2.running_var"])


def test_offline_without_a_copy_says_how_to_get_one(env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as e:
        download.timm_pretrained(TAG, features_only=True)
    msg = str(e.value)
    assert "offline" in msg and f"https://huggingface.co/timm/{TAG}/resolve/main/model.safetensors" in msg
    assert str(hub.downloads_dir() / f"{TAG}.safetensors") in msg and f"segzoo weights import {TAG} FILE" in msg


def test_import_a_timm_file_then_use_it_offline(env, monkeypatch, timm_state, tmp_path):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    src = tmp_path / "downloaded.safetensors"
    save_file(timm_state, str(src))
    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv1.weight": torch.zeros(1)}, str(wrong))
    with pytest.raises(WeightsError, match="does not hold timm resnet18 weights"):
        download.import_timm_file(TAG, wrong)
    assert download.import_timm_file(TAG, src) == hub.downloads_dir() / f"{TAG}.safetensors"
    body = download.timm_pretrained(TAG, features_only=True, out_indices=(1, 2))
    torch.testing.assert_close(body.state_dict()["layer2.0.conv1.weight"], timm_state["layer2.0.conv1.weight"])


def test_no_network_fails_at_once_naming_offline_mode(env, monkeypatch):
    """Without a network the error comes before timm's download retries, and says how to go offline."""
    def unreachable(address, timeout=None, *args):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    def fake_download(*args, **kwargs):
        raise AssertionError("timm's download (and its retries) started")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(timm, "create_model", fake_download)
    for proxy in download.PROXY_VARIABLES:
        monkeypatch.delenv(proxy, raising=False)
    with pytest.raises(WeightsError) as e:
        download.timm_pretrained(TAG, features_only=True)
    msg = str(e.value)
    assert "huggingface.co:443 cannot be reached (Temporary failure in name resolution)" in msg
    assert "set SEGZOO_OFFLINE=1" in msg and f"segzoo weights import {TAG} FILE" in msg and ".." not in msg


def test_a_failed_download_has_one_full_stop(env, monkeypatch):
    monkeypatch.setattr(download, "_unreachable", lambda url: None)

    def fake_download(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.")

    monkeypatch.setattr(timm, "create_model", fake_download)
    with pytest.raises(WeightsError) as e:
        download.timm_pretrained(TAG, features_only=True)
    assert "failed: We couldn't connect to 'https://huggingface.co'. Download" in str(e.value)
    assert ".." not in str(e.value)
