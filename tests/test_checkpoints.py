"""Every unusable checkpoint gives a one-line error that says what was expected."""

import struct

import pytest
import torch
from safetensors.torch import save_file

import segzoo
from segzoo.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18")
    path = tmp_path_factory.mktemp("rel") / "good.safetensors"
    segzoo.save(model, path)
    return path


def one_line_error(exc_type, fn, match):
    with pytest.raises(exc_type, match=match) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600, msg
    return msg


def test_truncated(ckpt, tmp_path):
    bad = tmp_path / "t.safetensors"
    bad.write_bytes(ckpt.read_bytes()[:-100])
    one_line_error(CheckpointError, lambda: segzoo.load(bad), "truncated")


def test_flipped_header_bytes(ckpt, tmp_path):
    data = bytearray(ckpt.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    for pos in range(8, 8 + n, max(n // 7, 1)):
        bad = tmp_path / "f.safetensors"
        flipped = bytearray(data)
        flipped[pos] ^= 0x5A
        bad.write_bytes(bytes(flipped))
        one_line_error(CheckpointError, lambda b=bad: segzoo.load(b), "corrupted|truncated|segzoo")


def test_flipped_length_prefix(ckpt, tmp_path):
    data = bytearray(ckpt.read_bytes())
    data[3] ^= 0xFF
    bad = tmp_path / "len.safetensors"
    bad.write_bytes(bytes(data))
    one_line_error(CheckpointError, lambda: segzoo.load(bad), "truncated or not a safetensors")


def test_non_segzoo_safetensors(tmp_path):
    p = tmp_path / "timm.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, p)
    one_line_error(CheckpointError, lambda: segzoo.load(p), "not a segzoo checkpoint")


def test_pickle_where_safetensors_expected(tmp_path):
    p = tmp_path / "model.safetensors"  # misnamed pickle
    torch.save({"w": torch.zeros(2)}, p)
    one_line_error(CheckpointError, lambda: segzoo.load(p), "pickle .* convert")


def test_checkpoint_of_another_architecture(ckpt):
    model = segzoo.build("fcn_resnet101", num_classes=3, backbone="resnet18")
    one_line_error(CheckpointError, lambda: segzoo.load_weights(model, ckpt), "holds a 'fcn_resnet50' model")
    one_line_error(CheckpointError, lambda: segzoo.build("fcn_resnet101", num_classes=3, weights=ckpt),
                   "holds a 'fcn_resnet50' model")


def test_missing_file(tmp_path):
    one_line_error(FileNotFoundError, lambda: segzoo.load(tmp_path / "nope.safetensors"), "not found")
    one_line_error(FileNotFoundError,
                   lambda: segzoo.build("fcn_resnet50", num_classes=2, weights=tmp_path / "nope.safetensors"),
                   "not found")


def test_folder_instead_of_file(tmp_path):
    one_line_error(CheckpointError, lambda: segzoo.load(tmp_path), "is a folder")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.safetensors"
    p.write_bytes(b"")
    one_line_error(CheckpointError, lambda: segzoo.load(p), "truncated")


def test_header_length_with_0x80_low_byte_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors header length ending in byte 0x80 once made a valid file read as a pickle."""
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18")
    for pad in range(300):  # class names change the header length byte by byte
        path = tmp_path / "m.safetensors"
        segzoo.save(model, path, classes=["a" * pad, "b", "c"])
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("could not produce a header length ending in 0x80")
    assert segzoo.load(path).classes[0] == "a" * pad
    from segzoo.checkpoint import read_state_dict

    assert "classifier.4.weight" in read_state_dict(path)
