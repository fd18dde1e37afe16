"""The weights table and manual sources (files downloaded by hand, checked, converted, cached)."""

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch
from torchvision.models import get_weight

import segzoo
from segzoo import hub
from segzoo.convert import SOURCES
from segzoo.hub import WeightsError, published
from segzoo.hub.published import get_weights, resolve
from segzoo.hub.weights import import_file, pretrained_checkpoint

DATA = Path(__file__).resolve().parents[1] / "fixtures"
HRNET = "hrnet_w18_small.cityscapes"


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGZOO_HOME", str(tmp_path / "segzoo"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")  # manual sources never need the network
    return tmp_path


def random_state(shapes_file: Path, prefix: str = "", seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for line in shapes_file.read_text().splitlines():
        key, _, shape = line.partition(" ")
        shape = tuple(int(s) for s in shape.split(",") if s)
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[prefix + key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[prefix + key] = torch.randn(shape, generator=g) * 0.1
    return state


@pytest.fixture
def hrnet_file(tmp_path):
    """A random official HRNetV2-W18-Small-v1 Cityscapes checkpoint, as the official code saves it."""
    path = tmp_path / "hrnet_w18_small_v1_cityscapes_cls19_1024x2048_trainset.pth"
    torch.save(random_state(DATA / "hrnet_official_w18_small_v1.txt", prefix="model."), path)
    return path


def test_table_covers_the_published_weights():
    names = segzoo.list_weights()
    for model in ("fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
                  "deeplabv3_mobilenetv3_large", "maskrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn",
                  "hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w48", "hrnet_w48_ocr",
                  "centernet_resdcn18", "centernet_resdcn101", "centernet_dla34"):
        assert any(n.startswith(model + ".") for n in names), model
    assert segzoo.list_weights("deeplabv3*") == [n for n in names if n.startswith("deeplabv3")]
    for name in names:
        e = get_weights(name)
        assert e.model in segzoo.list_models() and e.name == name
        assert len(e.mean) == len(e.std) == 3 and e.metrics and e.metric_source and e.licence
        assert e.page.startswith("https://") and (e.link is None or e.link.startswith("https://"))
        assert e.sha256 is None or len(e.sha256) == 64


def test_torchvision_entries_are_read_from_the_enums():
    seg = get_weights("deeplabv3_resnet50.tv_coco_voc")
    w = get_weight("DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1")
    assert seg.url == w.url and list(seg.classes) == w.meta["categories"]
    assert dict(seg.metrics) == w.meta["_metrics"]["COCO-val2017-VOC-labels"]
    det = get_weights("maskrcnn_resnet50_fpn.tv_coco")
    cats = get_weight("MaskRCNN_ResNet50_FPN_Weights.COCO_V1").meta["categories"]
    # segzoo label i is torchvision label i + 1 (the converter drops the background outputs)
    assert len(det.classes) == 90 and det.classes[0] == "person" and det.classes[11] == cats[12] == "N/A"
    assert all(det.classes[i] == cats[i + 1] for i in range(90))
    centernet = get_weights("centernet_dla34.coco")
    assert len(centernet.classes) == 80 and "N/A" not in centernet.classes
    assert centernet.classes[:2] == ("person", "bicycle") and centernet.classes[-1] == "toothbrush"


def test_converter_names_are_the_convert_sources():
    assert set(SOURCES) == {"torchvision", "hrnet-official", "centernet-official", "huggingface", "smp"}
    assert {get_weights(n).converter for n in segzoo.list_weights()} <= set(SOURCES)
    assert SOURCES is published.SOURCES  # one table: the hub's, filled by the families beside their key maps
    with pytest.raises(ValueError, match="registered twice"):
        published.register_converter("smp", SOURCES["torchvision"])
    entry = dataclasses.replace(get_weights(HRNET), tag="other", converter="nope")
    with pytest.raises(ValueError, match="converter 'nope', which is not registered"):
        published.register_weights(entry)


def test_resolve_tags():
    assert resolve("deeplabv3_resnet50", "tv_coco_voc").name == "deeplabv3_resnet50.tv_coco_voc"
    assert resolve("deeplabv3_resnet50", "deeplabv3_resnet50.tv_coco_voc").tag == "tv_coco_voc"
    assert resolve("hrnet_w48_ocr", "default").tag == "cityscapes"
    with pytest.raises(WeightsError, match="its weights are tv_coco_voc"):
        resolve("deeplabv3_resnet50", "coco")
    with pytest.raises(WeightsError, match="no published weights"):
        resolve("unet_resnet34", "tv_coco_voc")
    assert hub.looks_like_path("w/x.safetensors") and hub.looks_like_path("x.pth")
    assert not hub.looks_like_path("tv_coco_voc")


def test_manual_source_missing_says_where_to_get_it(env):
    entry = get_weights(HRNET)
    with pytest.raises(WeightsError) as e:
        pretrained_checkpoint(entry)
    msg = str(e.value)
    assert entry.file_name in msg and entry.link in msg and entry.page in msg
    assert str(hub.downloads_dir() / entry.file_name) in msg and f"segzoo weights import {HRNET} FILE" in msg


def test_import_checks_converts_and_caches(env, hrnet_file):
    path = import_file(HRNET, hrnet_file)
    assert path == hub.checkpoint_path(HRNET)
    model = segzoo.load(path)
    assert model.spec.name == "hrnet_w18_small" and model.num_classes == 19
    assert model.classes[0] == "road" and len(model.classes) == 19
    assert pretrained_checkpoint(get_weights(HRNET)) == path  # cached now, offline


def test_file_in_the_downloads_folder_is_picked_up(env, hrnet_file):
    entry = get_weights(HRNET)
    hub.downloads_dir().mkdir(parents=True)
    (hub.downloads_dir() / entry.file_name).write_bytes(hrnet_file.read_bytes())
    assert segzoo.load(pretrained_checkpoint(entry)).classes[-1] == "bicycle"


def test_import_refuses_the_wrong_file(env, hrnet_file, tmp_path, monkeypatch):
    # another architecture's checkpoint: the converter's check names the right model
    v2 = tmp_path / "v2.pth"
    torch.save(random_state(DATA / "hrnet_official_w18_small_v2.txt", prefix="model."), v2)
    with pytest.raises(WeightsError, match="does not convert into hrnet_w18_small"):
        import_file(HRNET, v2)
    # a size or a checksum that the table knows
    entry = get_weights(HRNET)
    digest = hashlib.sha256(hrnet_file.read_bytes()).hexdigest()
    monkeypatch.setitem(published._TABLE, HRNET, dataclasses.replace(entry, size=123))
    with pytest.raises(WeightsError, match="has 123"):
        import_file(HRNET, hrnet_file)
    monkeypatch.setitem(published._TABLE, HRNET, dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(WeightsError, match="different or corrupted file"):
        import_file(HRNET, hrnet_file)
    assert not hub.checkpoint_path(HRNET).exists()  # nothing cached by the refused imports
    monkeypatch.setitem(published._TABLE, HRNET, dataclasses.replace(entry, size=hrnet_file.stat().st_size,
                                                                   sha256=digest))
    assert import_file(HRNET, hrnet_file).exists()


def test_import_of_a_torchvision_file_checks_its_hash(env, tmp_path):
    entry = get_weights("deeplabv3_mobilenetv3_large.tv_coco_voc")
    bad = tmp_path / entry.file_name
    bad.write_bytes(b"not the published file")
    with pytest.raises(WeightsError, match="different or corrupted file"):
        import_file(entry.name, bad)
    assert not hub.checkpoint_path(entry.name).exists()


def test_unknown_name():
    with pytest.raises(WeightsError, match="hrnet_w48 has cityscapes"):
        get_weights("hrnet_w48.imagenet")
