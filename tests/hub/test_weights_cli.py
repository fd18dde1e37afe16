"""`segzoo weights list|import`: the table as text, manual imports from the command line."""

import pytest
import torch

from segzoo import hub
from segzoo.hub import WeightsError, weights
from tests.hub.test_weights import DATA, random_state


def run(*argv):
    assert argv[0] == "weights"
    return weights.list_command(*argv[2:]) if argv[1] == "list" else weights.import_command(*argv[2:])


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGZOO_HOME", str(tmp_path / "segzoo"))
    monkeypatch.setenv("SEGZOO_OFFLINE", "1")
    return tmp_path


def test_list(env, capsys):
    assert run("weights", "list", "deeplabv3*") == 0
    out = capsys.readouterr().out
    assert "deeplabv3_resnet50.tv_coco_voc" in out and "miou 66.4" in out and "fcn_" not in out
    assert str(hub.home()) in out
    run("weights", "list", "nothing*")
    assert "no published weights match" in capsys.readouterr().out


def test_import_then_listed_as_cached(env, capsys):
    src = env / "hrnet_w18_small_v1_cityscapes_cls19_1024x2048_trainset.pth"
    torch.save(random_state(DATA / "hrnet_official_w18_small_v1.txt", prefix="model."), src)
    assert run("weights", "import", "hrnet_w18_small.cityscapes", str(src)) == 0
    assert str(hub.checkpoint_path("hrnet_w18_small.cityscapes")) in capsys.readouterr().out
    run("weights", "list", "hrnet_w18_small.*")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("hrnet_w18_small.cityscapes"))
    assert line.endswith("yes")


def test_import_errors(env):
    with pytest.raises(WeightsError, match="is not a file"):
        run("weights", "import", "hrnet_w48.cityscapes", str(env / "missing.pth"))
    (env / "x.pth").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="hrnet_w48 has cityscapes"):
        run("weights", "import", "hrnet_w48.nope", str(env / "x.pth"))
    with pytest.raises(WeightsError, match="expected hrnet_w48_cityscapes"):
        run("weights", "import", "hrnet_w48.cityscapes", str(env / "x.pth"))
