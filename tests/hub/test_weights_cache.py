# ruff: noqa: F811 (the fixtures of tests/hub/test_weights_hub.py, imported below, are test arguments here)
"""The weights cache trusts no file: a read-only shared cache is read without a lock, an unusable SEGZOO_HOME is
named, a valid checkpoint of the wrong model under a tag's name is fetched again, `weights list` tells the truth."""

import pytest

import segzoo
from segzoo import hub
from segzoo.hub import WeightsError, cache
from segzoo.hub.weights import cache_status, format_table, pretrained_checkpoint
from tests.hub.test_weights_hub import NAME, env, payload, served, server  # noqa: F401 (fixtures)


def _cached_row():
    return next(line for line in format_table([NAME]).splitlines() if line.startswith(NAME)).split()[-1]


def test_read_only_prefilled_cache_needs_no_lock(served, monkeypatch):
    entry, server, path = served
    ckpt = pretrained_checkpoint(entry)  # the cluster's cache, filled once

    def no_lock(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache, "FileLock", no_lock)  # a read-only SEGZOO_HOME: no lock file can be made
    server.stop()
    model = segzoo.build("deeplabv3_mobilenetv3_large", weights="tv_coco_voc")
    assert model.classes == list(entry.classes) and pretrained_checkpoint(entry) == ckpt
    hub.checkpoint_path(NAME).unlink()  # what is not in it is an error naming SEGZOO_HOME, not a traceback
    with pytest.raises(WeightsError, match=r"SEGZOO_HOME=.*cannot be written .*read-only shared cache works"):
        pretrained_checkpoint(entry)


def test_segzoo_home_that_is_a_file_is_named(env, monkeypatch, capsys):
    from segzoo.cli import main as cli

    home = env / "not_a_folder"
    home.write_text("")
    monkeypatch.setenv("SEGZOO_HOME", str(home))
    from segzoo.hub.published import get_weights

    with pytest.raises(WeightsError, match=rf"SEGZOO_HOME={home}: {home} is a file, not a folder"):
        pretrained_checkpoint(get_weights(NAME))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    assert cli(["weights", "list", NAME]) == 0  # listing still works, and says nothing is cached
    assert _cached_row() == "no"


def test_wrong_model_under_a_tags_name_is_fetched_again(served):
    entry, server, path = served
    target = hub.checkpoint_path(NAME)
    target.parent.mkdir(parents=True)
    segzoo.save(segzoo.build("unet", num_classes=2, channels=[4, 8, 16, 32, 64]), target)  # valid, wrong model
    assert not cache_status(entry) and _cached_row() == "no"
    with pytest.warns(UserWarning, match="holds a unet checkpoint with 2 classes, not deeplabv3_mobilenetv3_large"):
        model = segzoo.build("deeplabv3_mobilenetv3_large", weights="tv_coco_voc")  # before: a TypeError
    assert server.requests == [path] and model.classes == list(entry.classes)
    assert cache_status(entry) and _cached_row() == "yes"


def test_weights_list_says_cached_only_for_loadable_files(served):
    entry, _, _ = served
    assert _cached_row() == "no"
    ckpt = pretrained_checkpoint(entry)
    assert _cached_row() == "yes"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # a half-copied file
    assert _cached_row() == "no"
    ckpt.write_bytes(b"")
    assert _cached_row() == "no"
