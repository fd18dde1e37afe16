import json
import struct

import pytest
import torch
from safetensors.torch import save_file

import segzoo
from segzoo.checkpoint import CheckpointError, atomic_write, read_checkpoint


@pytest.fixture(scope="module")
def small_fcn():
    torch.manual_seed(0)
    return segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18").eval()


@pytest.fixture(scope="module")
def ckpt(small_fcn, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "fcn.safetensors"
    segzoo.save(small_fcn, path, classes=["bg", "cat", "dog"])
    return path


def test_roundtrip_by_path_alone(small_fcn, ckpt):
    model = segzoo.load(ckpt)
    assert model.spec == small_fcn.spec
    assert model.classes == ["bg", "cat", "dog"]
    assert not model.training
    x = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), small_fcn(x), rtol=0, atol=0)


def test_header_holds_spec(ckpt):
    _, spec, classes = read_checkpoint(ckpt)
    assert spec.name == "fcn_resnet50" and spec.kwargs["backbone"] == "resnet18"
    assert classes == ["bg", "cat", "dog"]


def test_build_with_weights_and_other_num_classes_reinitialises_head(small_fcn, ckpt):
    with pytest.warns(UserWarning, match=r"re-initialised the class-dependent layers aux_classifier.4, classifier.4"):
        model = segzoo.build("fcn_resnet50", num_classes=5, backbone="resnet18", weights=ckpt)
    torch.testing.assert_close(model.backbone.body.conv1.weight, small_fcn.backbone.body.conv1.weight)
    torch.testing.assert_close(model.classifier[0].weight, small_fcn.classifier[0].weight)
    assert model.classifier[4].weight.shape[0] == 5


def test_load_with_num_classes_override(ckpt):
    with pytest.warns(UserWarning, match="re-initialised"):
        model = segzoo.load(ckpt, num_classes=7)
    assert model.num_classes == 7 and model.classes is None


def test_strict_loading_names_keys(small_fcn, tmp_path):
    state = {k: v for k, v in small_fcn.state_dict().items() if not k.startswith("aux_classifier.")}
    state["extra.weight"] = torch.zeros(1)
    state["classifier.0.weight"] = torch.zeros(1, 2, 3, 3)
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18")
    with pytest.raises(CheckpointError) as e:
        segzoo.load_weights(model, state)
    msg = str(e.value)
    assert "missing keys" in msg and "aux_classifier.0.weight" in msg
    assert "unexpected keys" in msg and "extra.weight" in msg
    assert "shape mismatch" in msg and "classifier.0.weight" in msg


def test_other_architecture_is_named(ckpt):
    model = segzoo.build("fcn_resnet101", num_classes=3, backbone="resnet18")
    with pytest.raises(CheckpointError, match="holds a 'fcn_resnet50' model but this model is 'fcn_resnet101'"):
        segzoo.load_weights(model, ckpt)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        segzoo.load("does/not/exist.safetensors")


def test_truncated_file(ckpt, tmp_path):
    data = ckpt.read_bytes()
    for cut in (4, 200, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated"):
            segzoo.load(bad)


def test_corrupted_header(ckpt, tmp_path):
    data = bytearray(ckpt.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    for pos in (8, 8 + n // 2, 8 + n - 1):
        bad = tmp_path / f"flip{pos}.safetensors"
        flipped = bytearray(data)
        flipped[pos] ^= 0xFF
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError):
            segzoo.load(bad)


def test_non_segzoo_safetensors(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a segzoo checkpoint"):
        segzoo.load(path)


def test_pickle_given_for_safetensors(small_fcn, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(small_fcn.state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle .*tools/convert.py"):
        segzoo.load(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"hello world, not a checkpoint at all")
    with pytest.raises(CheckpointError):
        segzoo.load(path)


def test_save_requires_spec_and_matching_classes(small_fcn, tmp_path):
    with pytest.raises(TypeError, match="no segzoo spec"):
        segzoo.save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="one name per class"):
        segzoo.save(small_fcn, tmp_path / "x.safetensors", classes=["a"])


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write(path, b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, b"new" * 100)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_spec_metadata_is_json(ckpt):
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        meta = f.metadata()
    assert meta["segzoo"] == segzoo.__version__
    assert json.loads(meta["spec"])["name"] == "fcn_resnet50"
