"""A checkout folder named ``segzoo`` on ``sys.path`` ahead of the installed package (an editable install is
found after it) is imported as an empty namespace package: the tools say so in one line, naming the folder."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _checkout(root: Path) -> Path:
    """``root/segzoo``: a clone of the repository (the package one level down, the tools beside it)."""
    clone = root / "segzoo"
    clone.mkdir()
    (clone / "segzoo").symlink_to(REPO / "segzoo")
    (clone / "tools").symlink_to(REPO / "tools")
    (clone / "pyproject.toml").write_text("[project]\nname = 'segzoo'\n")
    return clone


@pytest.mark.parametrize("tool", ["train.py", "eval.py", "check_data.py"])
def test_a_tool_names_the_folder_that_hides_the_package(tmp_path, tool):
    clone = _checkout(tmp_path)
    # -S: no site-packages, so nothing is found after the folder (as with `pip install -e`, whose finder comes last)
    run = subprocess.run([sys.executable, "-S", str(clone / "tools" / tool), "--help"], capture_output=True,
                         text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
                         timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: `import segzoo` found the folder"), run.stderr
    assert str(clone) in lines[0] and "rename that folder" in lines[0] and "editable_mode=compat" in lines[0]


def test_the_real_package_is_not_reported(tmp_path):
    run = subprocess.run([sys.executable, "-c", "import _shadow; print(_shadow.shadowing_message())"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env={"PYTHONPATH": f"{REPO / 'tools'}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0 and run.stdout.strip() == "None", run.stderr[-2000:]
