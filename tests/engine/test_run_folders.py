"""Run folders never lose a run: a lock, no silent reuse, clean stops on SIGINT/SIGTERM, the user's umask.

The runs are the real ones (``segzoo train``) on a tiny U-Net and tiny Shapes data: 4 steps per
epoch, 6 steps in all, one thread (so a run split over two processes can be compared bit for bit).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from segzoo.checkpoint import read_safetensors
from segzoo.cli import main as cli
from segzoo.engine.run_folder import RunFolder
from segzoo.engine.trainer import STATE_FILE, WEIGHTS_FILE

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folders")
    shapes = {"num_train": 16, "num_val": 4, "size": 32}
    cfg = {
        "model": {"name": "unet", "num_classes": 4, "channels": [4, 8, 16, 32, 64]},
        "data": {"type": "shapes", "root": str(root / "shapes"), "train": shapes, "val": shapes,
                 "batch_size": 4, "num_workers": 0, "check": False,
                 "augment": {"size": 32, "scale": [0.75, 1.25], "hflip": 0.5, "color_jitter": 0.2}},
        "train": {"max_steps": 6, "lr": 0.01, "device": "cpu", "progress": False, "tensorboard": False, "seed": 1},
        "eval": {"every": 1, "num_pictures": 1},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> Path:
    """The run folder of the same run without interruption (also generates the Shapes files once)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli(["train", str(config), "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    return out


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_rerun_without_resume_is_refused_and_loses_nothing(config, reference, capsys):
    before = {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()}
    assert cli(["train", str(config), "--out", str(reference)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {reference} already holds a finished run")
    assert "--resume" in err[0] and "--out DIR" in err[0] and "--overwrite" in err[0]
    assert {p.name: p.read_bytes() for p in reference.iterdir() if p.is_file()} == before
    assert cli(["train", str(config), "--out", str(reference), "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err


def test_overwrite_replaces_the_run(config, reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["train", str(config), "--out", str(out), "train.max_steps=2", "eval.num_pictures=0"]) == 0
    (out / "notes.txt").write_text("mine")
    assert cli(["train", str(config), "--out", str(out)]) == 2  # a finished 2-step run is there
    assert cli(["train", str(config), "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    assert [r["step"] for r in records(out) if r["type"] == "train"] == list(range(1, 7))
    assert read_safetensors(out / WEIGHTS_FILE)[1]["step"] == "6"


def test_a_second_training_into_a_locked_folder_fails_at_once(config, tmp_path, capsys):
    out = tmp_path / "run"
    code = ("import sys, time\nfrom segzoo.engine.run_folder import RunFolder\n"
            "held = RunFolder(sys.argv[1]).lock()\nprint('locked', flush=True)\ntime.sleep(120)")
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli(["train", str(config), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"in use by another training (pid {holder.pid})" in err[0]
        assert not (out / "log.jsonl").exists()  # refused before any work
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with RunFolder(out):  # released when its holder ends
        pass


def test_written_files_follow_the_umask(config, tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o002)
    try:
        assert cli(["train", str(config), "--out", str(out), "train.max_steps=2"]) == 0
    finally:
        os.umask(old)
    for name in (WEIGHTS_FILE, STATE_FILE, "best.safetensors", "metrics.json", "config.yaml", "log.jsonl"):
        assert (out / name).stat().st_mode & 0o777 == 0o664, name  # not mkstemp's 0600


# The child trains normally but sleeps after each step from step 2 on and drops a marker file, so
# the parent can send its signal while the training is under way.
CHILD = textwrap.dedent("""
    import sys, time
    import torch
    from segzoo.engine import trainer as T

    marker, original = sys.argv[1], T.Trainer.train_step

    def slow_step(self, batches, epoch):
        out = original(self, batches, epoch)
        if self.step >= 2:
            open(marker, "a").close()
            time.sleep(0.5)
        return out

    T.Trainer.train_step = slow_step
    torch.set_num_threads(1)
    from segzoo.cli import main
    sys.exit(main(["train", *sys.argv[2:]]))
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_writes_a_checkpoint_and_resume_continues_exactly(signum, config, reference, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "under_way"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(script), str(marker), str(config), "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the child did not reach step 2:\n{proc.communicate()[1][-3000:]}")
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + signum, err[-3000:]
    assert f"stopped by {signal.Signals(signum).name}" in err and "--resume" in err and "Traceback" not in err
    state = torch.load(out / STATE_FILE, weights_only=True)
    stopped = state["step"]
    assert 3 <= stopped < 6 and read_safetensors(out / WEIGHTS_FILE)[1]["step"] == str(stopped)
    assert [r["step"] for r in records(out) if r["type"] == "train"] == list(range(1, stopped + 1))

    assert cli(["train", str(config), "--out", str(out), "--resume"]) == 0
    a, b = read_safetensors(out / WEIGHTS_FILE)[0], read_safetensors(reference / WEIGHTS_FILE)[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never stopped
    log = records(out)
    # one record per step: the steps run again after the checkpoint are not logged twice
    assert [r["step"] for r in log if r["type"] == "train"] == list(range(1, 7))
    assert [r["step"] for r in log if r["type"] == "eval"] == [4, 6]
    metrics = json.loads((out / "metrics.json").read_text())
    # the whole run's time: what the first process spent (its checkpoint says) plus the second's
    assert metrics["train_seconds"] >= state["train_seconds"] > 0
    assert metrics["final"] == json.loads((reference / "metrics.json").read_text())["final"]


def test_resuming_a_finished_run_keeps_its_results(config, reference, tmp_path):
    out = tmp_path / "run"
    assert cli(["train", str(config), "--out", str(out), "train.max_steps=2", "eval.num_pictures=0"]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert first["final"]["miou"] is not None
    log = (out / "log.jsonl").read_text()
    assert cli(["train", str(config), "--out", str(out), "train.max_steps=2", "eval.num_pictures=0",
                "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["final"] == first["final"] and again["step"] == 2 and again["best"] == first["best"]
    assert again["train_seconds"] == first["train_seconds"]  # nothing was trained again
    assert (out / "log.jsonl").read_text() == log
