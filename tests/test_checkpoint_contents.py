"""Damaged or edited checkpoints: one CheckpointError naming the file, before anything is built (issue 15.6).

The header-edit cases recompute ``content_digest`` after editing, as a tool that rewrites
headers would, so the header checks themselves are what must catch them.
"""

import json
import os
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

import segzoo
from segzoo import checkpoint
from segzoo.checkpoint import CheckpointError, content_digest


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18").eval()
    path = tmp_path_factory.mktemp("ck") / "good.safetensors"
    segzoo.save(model, path, classes=["bg", "cat", "dog"])
    return path


def header(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), 8 + n


def rewrite(src, dst, edit_meta=None, edit_state=None, digest=True):
    """Copy a checkpoint with an edited header and/or tensors, re-signed as a header-editing tool would."""
    state = dict(load_file(str(src)))
    meta = dict(header(src)[0]["__metadata__"])
    if edit_meta:
        edit_meta(meta)
    if edit_state:
        edit_state(state)
    meta.pop("content_digest", None)
    if digest:
        meta["content_digest"] = content_digest(state, meta["spec"], meta.get("classes", "null"))
    save_file(state, dst, metadata=meta)
    return dst


def edit_spec(**changes):
    def edit(meta):
        spec = json.loads(meta["spec"])
        for k, v in changes.items():
            if k.startswith("kwargs."):
                spec["kwargs"][k.split(".", 1)[1]] = v
            else:
                spec[k] = v
        meta["spec"] = json.dumps(spec)
    return edit


def one_error(path, match):
    with pytest.raises(CheckpointError, match=match) as e:
        segzoo.load(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and len(msg) < 700, msg
    return msg


@pytest.mark.parametrize("where", [0.0, 0.5, 0.999])
def test_flipped_weight_bytes_are_caught(ckpt, tmp_path, where):
    """Today a flipped data byte loads silently, with outputs off by up to 1e11."""
    data = bytearray(ckpt.read_bytes())
    _, start = header(ckpt)
    pos = start + int((len(data) - start - 1) * where)
    data[pos] ^= 0x40
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    one_error(bad, "corrupted: its weights or header differ from the digest")
    with pytest.raises(CheckpointError, match="corrupted"):
        segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18", weights=bad)


def test_run_folder_checkpoints_carry_the_digest(ckpt, tmp_path):
    """The trainer writes model.safetensors through encode_state_dict: its files are verified too."""
    model = segzoo.load(ckpt)
    meta = {"segzoo": segzoo.__version__, "spec": model.spec.to_json(), "classes": "null", "step": "3"}
    path = tmp_path / "model.safetensors"
    path.write_bytes(checkpoint.encode_state_dict(model.state_dict(), meta))
    assert "content_digest" in header(path)[0]["__metadata__"]
    data = bytearray(path.read_bytes())
    data[-5] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        checkpoint.read_safetensors(path)


def test_old_checkpoints_with_only_keys_sha256_still_load(ckpt, tmp_path):
    def old_style(meta):
        meta.pop("content_digest")

    old = rewrite(ckpt, tmp_path / "old.safetensors", old_style, digest=False)
    assert "content_digest" not in header(old)[0]["__metadata__"]
    model = segzoo.load(old)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), segzoo.load(ckpt)(x), rtol=0, atol=0)


@pytest.mark.parametrize("value", [1e9, 10**9, 0, -1, True, "3", None])
def test_edited_num_classes_is_refused_before_building(ckpt, tmp_path, monkeypatch, value):
    """Today num_classes=1e9 in a header drives segzoo.load past 10 GB."""
    bad = rewrite(ckpt, tmp_path / "n.safetensors", edit_spec(num_classes=value))
    monkeypatch.setattr("segzoo.registry.build", lambda *a, **k: pytest.fail("a model was built"))
    one_error(bad, "corrupted or edited segzoo header: num_classes=")


def test_num_classes_that_disagrees_with_the_weights_is_an_error_not_a_warning(ckpt, tmp_path, recwarn):
    def edit(meta):
        edit_spec(num_classes=5)(meta)
        meta["classes"] = json.dumps(["a", "b", "c", "d", "e"])

    bad = rewrite(ckpt, tmp_path / "n5.safetensors", edit)
    one_error(bad, "num_classes=5 disagrees with the class layers in the file .*classifier.4")
    assert not [w for w in recwarn if "re-initialised" in str(w.message)]
    # fine-tuning on other classes is still a warning: the user asked for it
    with pytest.warns(UserWarning, match="re-initialised"):
        assert segzoo.load(ckpt, num_classes=5).num_classes == 5


def test_integer_tensors_where_the_model_has_floats_are_refused(ckpt, tmp_path):
    def to_int(state):
        state["classifier.4.weight"] = state["classifier.4.weight"].to(torch.int32)

    bad = rewrite(ckpt, tmp_path / "int.safetensors", edit_state=to_int)
    one_error(bad, "dtypes differ .*classifier.4.weight: torch.int32 in the file where the model has torch.float32")
    state = load_file(str(bad))
    model = segzoo.build("fcn_resnet50", num_classes=3, backbone="resnet18")
    with pytest.raises(CheckpointError, match="wrong dtype"):
        segzoo.load_weights(model, state)


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "c", "d"], "abc", [1, 2, 3]])
def test_class_names_must_match_num_classes(ckpt, tmp_path, names):
    def edit(meta):
        meta["classes"] = json.dumps(names)

    one_error(rewrite(ckpt, tmp_path / "c.safetensors", edit), "class names")


@pytest.mark.parametrize("key", ["weights", "backbone_weights"])
def test_load_never_opens_a_path_written_in_the_header(ckpt, tmp_path, key):
    target = tmp_path / "elsewhere.safetensors"  # does not exist: opening it would raise FileNotFoundError
    bad = rewrite(ckpt, tmp_path / "p.safetensors", edit_spec(**{f"kwargs.{key}": str(target)}))
    one_error(bad, f"names files \\({key}=.*never opens a path written in a checkpoint")
    assert set(checkpoint.PATH_ARGS) == set(__import__("segzoo.registry").registry._FILE_ARGS)


@pytest.mark.parametrize("edit, match", [
    (edit_spec(name="fcn_resnet5000"), "holds a model this segzoo does not have"),
    (edit_spec(task="instance"), "task='instance' but fcn_resnet50 is a semantic model"),
    (edit_spec(**{"kwargs.backbone": "resnet50"}), "does not hold the weights of the model its header describes"),
    (edit_spec(**{"kwargs.not_an_arg": 1}), "cannot be built .*not_an_arg"),
    (edit_spec(kwargs=[1]), "kwargs are a list"),
    (edit_spec(mean=[0.5, float("nan"), 0.5]), "mean=.* is not 3 finite numbers"),
    (edit_spec(std=[0.2, 0.2, 0.0]), "std=.* is not 3 finite numbers > 0"),
    (edit_spec(extra_field=1), "unknown fields"),
])
def test_other_header_edits_are_refused(ckpt, tmp_path, edit, match):
    one_error(rewrite(ckpt, tmp_path / "e.safetensors", edit), match)


def test_huge_header_length_is_refused(tmp_path):
    path = tmp_path / "h.safetensors"
    n = 200_000_000
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + b"{")
        f.truncate(8 + n + 10)  # sparse: a file large enough to hold the claimed header
    with pytest.raises(CheckpointError, match="byte header, over the"):
        segzoo.load(path)


def test_saved_files_follow_the_umask(ckpt, tmp_path):
    """mkstemp made every checkpoint 0600, unreadable by the group that shares a run folder."""
    old = os.umask(0o027)
    try:
        path = tmp_path / "m.safetensors"
        segzoo.save(segzoo.load(ckpt), path)
        checkpoint.atomic_write(tmp_path / "m.json", b"{}")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o640
    assert ((tmp_path / "m.json").stat().st_mode & 0o777) == 0o640
