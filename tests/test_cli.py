"""`segzoo` CLI: one line `error: ...` and status 2 for user errors, help texts that name real files,
tools/*.py as shims (over the CLI, or over the checkout's benchmarks/), and the benchmark's old subcommands
answered with where it went (the installed package runs no file of the source tree)."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import segzoo
from segzoo import cli
from segzoo.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted((REPO / "tools").glob("*.py"))
CITED = re.compile(r"(?<![\w/])((?:configs|tools|weights|segzoo|tests|benchmarks)/[\w./-]*\.(?:yaml|py|md))")


def _help(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    return capsys.readouterr().out


def test_every_path_cited_in_help_texts_and_tool_docstrings_exists(capsys):
    texts = {"segzoo --help": _help(["--help"], capsys)}
    for name in COMMANDS:
        texts[f"segzoo {name} --help"] = _help([*name.split(), "--help"], capsys)
    for path in TOOLS:
        texts[str(path.relative_to(REPO))] = ast.get_docstring(ast.parse(path.read_text())) or ""
    cited = {(where, p) for where, text in texts.items() for p in CITED.findall(text)}
    assert {p for _, p in cited} >= {"configs/quickstart.yaml", "tools/train.py"}  # the check has something to check
    missing = sorted((where, p) for where, p in cited if not (REPO / p).exists())
    assert not missing, f"help texts cite files that do not exist: {missing}"


def test_tools_are_shims_over_the_cli_or_the_benchmarks():
    shims = {"cli": 0, "benchmarks": 0}
    for path in TOOLS:
        if path.stem in ("model_table", "changelog") or path.stem.startswith("_"):  # maintenance; _shadow: a check
            continue
        code = [line.split("  #")[0] for line in path.read_text().split('"""')[-1].splitlines() if line.strip()]
        if "    from segzoo.cli import command" in code:
            assert len(code) <= 9 and "    import _shadow" in code, path.name  # the shadowing folder said in one line
            shims["cli"] += 1
        else:  # the measurements import the competitors: they live in the repository's benchmarks/ package
            assert len(code) <= 6, path.name
            assert any(re.fullmatch(r"from benchmarks(\.\w+)+ import main", c) for c in code), path.name
            shims["benchmarks"] += 1
    assert shims["cli"] >= 6 and shims["benchmarks"] == 4  # benchmark, realdata, int8_accuracy, soak


def test_a_benchmark_shim_runs_from_anywhere(tmp_path):
    """tools/benchmark.py finds the checkout's benchmarks/ itself; only segzoo is on the path (as when installed)."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "segzoo").symlink_to(REPO / "segzoo")
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "benchmark.py"), "--list"], capture_output=True,
                          text=True, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin",
                                                        "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0 and "fcn_resnet50" in proc.stdout.split(), proc.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "unet.safetensors"
    segzoo.save(segzoo.build("unet", num_classes=2, channels=[4, 8, 16, 32, 64]), ckpt)
    det = root / "det.safetensors"
    segzoo.save(segzoo.build("centernet_resnet18", num_classes=3), det)
    (root / "garbage.safetensors").write_bytes(b"12345678 not a checkpoint")
    (root / "a_file").write_text("x")
    (root / "empty").mkdir()
    (root / "cfg.yaml").write_text("model: {name: unet, num_classes: 2, channels: [4, 8, 16, 32, 64]}\n"
                                   f"data: {{root: {root / 'shapes'}}}\ntrain: {{device: cpu}}\n")
    return root


# (argv with {root} for the fixture folder, words the one error line must contain)
USER_ERRORS = [
    (["train", "{root}/missing.yaml"], "config file not found"),
    (["train", "{root}/cfg.yaml", "train.lrr=1"], "did you mean 'train.lr'"),
    (["train", "{root}/cfg.yaml", "train.clip_grad=-1"], "'train.clip_grad' must be > 0"),
    (["train", "{root}/cfg.yaml", "model.name=unett"], "unknown model 'unett'; did you mean unet"),
    (["train", "{root}/cfg.yaml", "model.depth=3"], "unet: unknown argument 'depth'"),
    (["train", "{root}/cfg.yaml", "eval.metric=bbox_AP"], "not a metric of semantic models"),
    (["train", "{root}/cfg.yaml", "--out", "{root}/a_file/run"], "is a file, not a folder"),
    (["train", "{root}/cfg.yaml", "--out", "{root}/empty", "--resume"], "cannot resume"),
    (["eval", "{root}/missing.safetensors", "--data", "{root}/cfg.yaml"], "checkpoint not found"),
    (["eval", "{root}/garbage.safetensors", "--data", "{root}/cfg.yaml"], "not a safetensors file"),
    (["eval", "{root}/det.safetensors", "--data", "{root}/cfg.yaml", "--tta", "flip"], "semantic models only"),
    (["eval", "{root}/unet.safetensors", "--data", "{root}/missing.yaml"], "config file not found"),
    (["infer", "{root}/unet.safetensors", "{root}/empty", "--out", "{root}/preds"], "no images"),
    (["infer", "{root}/unet.safetensors", "{root}/nope.png", "--out", "{root}/preds"], "no such image"),
    (["export", "unett", "--out", "{root}/x.onnx"], "unknown model 'unett'"),
    (["export", "unet", "--out", "{root}/a_file/x.onnx"], "is a file, not a folder"),
    (["convert", "--from", "torchvision", "--name", "fcn_resnet50", "{root}/nope.pth", "{root}/o.safetensors"],
     "weights file not found"),
    (["convert", "--from", "tv", "--name", "fcn_resnet50", "{root}/unet.safetensors", "{root}/o.safetensors"],
     "unknown source 'tv'"),
    (["data", "check", "{root}/cfg.yaml", "data.typ=coco"], "did you mean 'data.type'"),
]


@pytest.mark.parametrize(("argv", "words"), USER_ERRORS, ids=[" ".join(a[:1] + [w]) for a, w in USER_ERRORS])
def test_user_errors_print_one_line_and_exit_2(argv, words, files, capsys):
    argv = [a.format(root=files) for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], captured.err
    assert "Traceback" not in captured.err + captured.out


def test_debug_shows_the_traceback(files):
    from segzoo.config import ConfigError

    with pytest.raises(ConfigError, match="config file not found"):
        main(["train", str(files / "missing.yaml"), "--debug"])


def test_a_tool_script_as_users_run_it(files):
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"), str(files / "garbage.safetensors"),
                           "--data", str(files / "cfg.yaml")], capture_output=True, text=True, cwd=files,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in proc.stderr


def test_the_benchmark_and_the_ledger_left_the_installed_cli(capsys):
    assert "benchmark" not in _help(["--help"], capsys) and "realdata" not in _help(["--help"], capsys)
    assert main(["benchmark", "fcn_resnet50", "--size", "256", "--debug"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: `segzoo benchmark` is not part of the installed package")
    assert err[0].endswith("from a source checkout run `python -m benchmarks.speed fcn_resnet50 --size 256`")
    assert main(["realdata"]) == 2
    assert capsys.readouterr().err.strip().endswith("run `python -m benchmarks.ledger --help`")
    assert set(cli.MOVED) == {"benchmark", "realdata"} and not set(cli.MOVED) & set(COMMANDS)


def test_data_convert_choices_are_the_converters():
    """``segzoo data convert``'s choices are written out in the CLI (its --help imports no reader): they are the
    converter's own."""
    from segzoo.cli import data
    from segzoo.data.convert import READS, TARGETS
    from segzoo.data.formats.detect import FORMATS

    assert data.TARGETS == TARGETS and data.READS == tuple(READS)
    assert data.SOURCES == ("auto", *(f for f in FORMATS if f != "coco_panoptic"))  # panoptic is read, not written
