"""``segzoo.build(name, weights=TAG)`` and ``backbone_weights=TAG`` end to end, with no network:
torchvision weights from a local test server, timm weights from a pre-filled hub cache."""

import hashlib
import io
import socket

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50

import segzoo
from segzoo import hub
from segzoo.config import load_config
from segzoo.convert import from_torchvision
from segzoo.engine.build import build_model
from segzoo.hub import WeightsError, cache, download
from segzoo.hub.published import get_weights
from tests.hub.test_weights_hub import Server, empty_caches
from tests.hub.test_weights_timm import prefill_hf_cache

NAME = "deeplabv3_resnet50.tv_coco_voc"


@pytest.fixture
def env(tmp_path, monkeypatch):
    return empty_caches(tmp_path, monkeypatch)


def test_build_with_a_torchvision_tag_then_offline(env, monkeypatch):
    torch.manual_seed(0)
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=True).eval()
    buf = io.BytesIO()
    torch.save(tv.state_dict(), buf)
    data = buf.getvalue()
    path = f"/models/deeplabv3_resnet50_coco-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server = Server()
    server.files[path] = data
    entry = get_weights(NAME)
    monkeypatch.setattr(entry.weights_enum().value, "url", server.url(path))
    x = torch.rand(1, 3, 48, 40)
    mean, std = torch.tensor(entry.mean).view(1, 3, 1, 1), torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = tv((x - mean) / std)["out"]
    try:
        with cache.allow_test_server(server.netloc):
            model = segzoo.build("deeplabv3_resnet50", weights="tv_coco_voc").eval()
    finally:
        server.stop()
    assert server.requests == [path]
    assert model.classes == list(entry.classes) and model.spec.num_classes == 21
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=0)

    # network cut: no server, offline mode, torch.hub's copy gone: the segzoo cache alone
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    hub.torch_hub_path(server.url(path)).unlink()
    again = segzoo.build("deeplabv3_resnet50", weights=NAME).eval()  # model.tag works too
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref, atol=1e-4, rtol=0)
    # fine-tuning on other classes: only the class layers are re-initialised, with a warning
    with pytest.warns(UserWarning, match="re-initialised the class-dependent layers"):
        five = segzoo.build("deeplabv3_resnet50", weights="tv_coco_voc", num_classes=5)
    assert five.num_classes == 5 and getattr(five, "classes", None) is None
    torch.testing.assert_close(five.state_dict()["backbone.body.conv1.weight"],
                               again.state_dict()["backbone.body.conv1.weight"])
    # the saved fine-tuning checkpoint names the tag nowhere: it is a plain segzoo checkpoint
    segzoo.save(again, env / "again.safetensors")
    assert segzoo.load(env / "again.safetensors").classes == list(entry.classes)


def test_unknown_tag_and_missing_file(env):
    with pytest.raises(WeightsError, match="no weights tagged 'coco'.*tv_coco_voc"):
        segzoo.build("deeplabv3_resnet50", weights="coco")
    with pytest.raises(FileNotFoundError):
        segzoo.build("deeplabv3_resnet50", weights=str(env / "nothing.safetensors"))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(self, address, *args):
        raise AssertionError(f"network access to {address} in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_backbone_imagenet_from_the_hub_cache(env, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in timm.create_model("resnet34").state_dict().items()}
    name = download.timm_name("resnet34", "imagenet")
    prefill_hf_cache(env / "hf", f"timm/{name}", "model.safetensors", state)
    model = segzoo.build("unet_resnet34", num_classes=2, backbone_weights="imagenet")
    body = model.backbone.weights_module().state_dict()
    torch.testing.assert_close(body["conv1.weight"], state["conv1.weight"])
    torch.testing.assert_close(body["layer4.2.bn2.running_mean"], state["layer4.2.bn2.running_mean"])
    # the same through the explicit timm name; a name for another architecture is refused
    again = segzoo.build("unet_resnet34", num_classes=2, backbone_weights=name)
    torch.testing.assert_close(again.backbone.weights_module().state_dict()["conv1.weight"], state["conv1.weight"])
    with pytest.raises(WeightsError, match="are for the timm model 'resnet50'"):
        segzoo.build("unet_resnet34", num_classes=2, backbone_weights="resnet50.a1_in1k")
    # not in any cache, offline: one error that says where to get it
    with pytest.raises(WeightsError, match="resnet34.a2_in1k are not in the Hugging Face or segzoo cache"):
        segzoo.build("unet_resnet34", num_classes=2, backbone_weights="resnet34.a2_in1k")
    # a local file keeps working
    save_file(state, str(env / "r34.safetensors"))
    local = segzoo.build("unet_resnet34", num_classes=2, backbone_weights=str(env / "r34.safetensors"))
    torch.testing.assert_close(local.backbone.weights_module().state_dict()["conv1.weight"], state["conv1.weight"])


def test_hrnet_body_from_a_timm_tag(env, monkeypatch, no_network):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    torch.manual_seed(2)
    state = {k: v.contiguous() for k, v in timm.create_model("hrnet_w18_small").state_dict().items()}
    prefill_hf_cache(env / "hf", "timm/hrnet_w18_small.ms_in1k", "model.safetensors", state)
    model = segzoo.build("hrnet_w18_small", num_classes=3, backbone_weights="hrnet_w18_small.ms_in1k")
    body = model.backbone.weights_module().state_dict()
    key = "stage4.0.fuse_layers.0.1.0.weight"
    assert key in body
    torch.testing.assert_close(body[key], state[key])


def test_yaml_model_weights_tag_goes_through_build(env, monkeypatch):
    """``model.weights: TAG`` in a config (here as an override) builds through the table; the
    converted checkpoint is already in the segzoo cache, so offline mode is fine."""
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    name = "deeplabv3_mobilenetv3_large.tv_coco_voc"
    tv = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True)
    cache.store_checkpoint(name, from_torchvision(tv.state_dict(), "deeplabv3_mobilenetv3_large"),
                         list(get_weights(name).classes), {"test": True})
    cfg = load_config("configs/deeplabv3.yaml", ["model.name=deeplabv3_mobilenetv3_large",
                                                 "model.weights=tv_coco_voc", "model.num_classes=5"])
    with pytest.warns(UserWarning, match="re-initialised the class-dependent layers"):
        model = build_model(cfg)
    assert model.num_classes == 5
    torch.testing.assert_close(model.state_dict()["backbone.body.conv_stem.weight"],
                               tv.state_dict()["backbone.0.0.weight"])


def test_detection_tag_from_a_prefilled_torch_hub_cache(env, monkeypatch, no_network):
    """torchvision's Mask R-CNN file already in torch.hub's cache (as torchvision leaves it):
    converted offline; segzoo label i is torchvision label i + 1, named by ``classes[i]``."""
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).eval()
    buf = io.BytesIO()
    torch.save(tv.state_dict(), buf)
    entry = get_weights("maskrcnn_resnet50_fpn.tv_coco")
    url = f"https://download.pytorch.org/models/maskrcnn-{hashlib.sha256(buf.getvalue()).hexdigest()[:8]}.pth"
    monkeypatch.setattr(entry.weights_enum().value, "url", url)
    hub.torch_hub_path(url).parent.mkdir(parents=True)
    hub.torch_hub_path(url).write_bytes(buf.getvalue())
    model = segzoo.build("maskrcnn_resnet50_fpn", weights="tv_coco").eval()
    assert model.num_classes == 90 and model.classes[0] == "person" and model.classes[11] == "N/A"
    cls = tv.state_dict()["roi_heads.box_predictor.bbox_pred.weight"]
    torch.testing.assert_close(model.state_dict()["roi_heads.box_predictor.bbox_pred.weight"], cls[4:])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64))
    assert set(out[0]) >= {"boxes", "scores", "labels", "masks"}
