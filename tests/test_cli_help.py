"""``segzoo --help`` and ``segzoo SUB --help`` import no torch, no model and no data reader (the
subcommands import what they run when they run), and the lazy ``import segzoo`` behind it still gives
every public name: the registry finds the families itself."""

import subprocess
import sys
from pathlib import Path

import pytest

from segzoo.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "numpy", "PIL", "segzoo.models", "segzoo.data", "segzoo.engine")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("argv", [["--help"], *([*name.split(), "--help"] for name in COMMANDS)],
                         ids=lambda a: " ".join(a))
def test_help_imports_nothing_heavy(argv):
    # runs `python -m segzoo.cli ARGV` in this interpreter, then lists the heavy modules it imported
    code = (f"import runpy, sys; sys.argv = ['segzoo', *{argv!r}]\n"
            "try:\n    runpy.run_module('segzoo.cli', run_name='__main__', alter_sys=True)\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))")
    run = _python(code)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage: segzoo" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "[]", run.stdout.strip().splitlines()[-1]


def test_import_segzoo_is_light_and_its_names_arrive_on_use():
    run = _python("import sys, segzoo\n"
                  "print('torch' in sys.modules)\n"
                  "import segzoo.fuse, segzoo.quantize  # the modules that share a public function's name\n"
                  "print(callable(segzoo.fuse), callable(segzoo.quantize), callable(segzoo.convert.from_torchvision))\n"
                  "print(segzoo.build('unet', num_classes=2, channels=[4, 8, 16, 32, 64]).spec.name)\n"
                  "print(sorted(set(segzoo.__all__) - set(dir(segzoo))))")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[:4] == ["False", "True True True", "unet", "[]"]


def test_the_registry_finds_the_families_without_import_segzoo_models():
    run = _python("from segzoo.registry import build, list_models\n"
                  "from segzoo.hub.published import list_weights\n"
                  "print(len(list_models()) > 40, len(list_weights()) > 5)\n"
                  "print(build('unet', num_classes=3, channels=[4, 8, 16, 32, 64]).spec.name)")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["True", "True", "unet"]
