"""Training faults: a kill -9 or a full disk mid-checkpoint and a NaN loss lose nothing.

The run is the real one (``tools/train.py`` / ``segzoo.cli``) on a tiny U-Net and tiny
Shapes data: 4 steps per epoch, a checkpoint every 2 steps, 6 steps in all.
"""

import errno
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

import segzoo
from segzoo.checkpoint import read_safetensors
from segzoo.cli import main as cli
from segzoo.engine.run import train_from_config
from segzoo.engine.trainer import STATE_FILE, WEIGHTS_FILE, NonFiniteLossError

REPO = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to spot the write")


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    shapes = {"num_train": 16, "num_val": 4, "size": 32}
    cfg = {
        "model": {"name": "unet", "num_classes": 4, "channels": [4, 8, 16, 32, 64]},
        "data": {"type": "shapes", "root": str(root / "shapes"), "train": shapes, "val": shapes,
                 "batch_size": 4, "num_workers": 0, "check": False,
                 "augment": {"size": 32, "scale": [0.75, 1.25], "hflip": 0.5, "color_jitter": 0.2}},
        "train": {"max_steps": 6, "checkpoint_every": 2, "lr": 0.01, "device": "cpu", "progress": False,
                  "tensorboard": False, "seed": 1},
        "eval": {"every": 1, "num_pictures": 0},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def uninterrupted(config, tmp_path_factory) -> dict:
    """Weights of the same run without faults (also generates the Shapes files once)."""
    out = tmp_path_factory.mktemp("full")
    assert cli(["train", str(config), "--out", str(out)]) == 0
    return read_safetensors(out / WEIGHTS_FILE)[0]


def checkpoint_step(out: Path) -> int:
    """Step of the run folder's checkpoint; fails unless weights and training state agree and load."""
    _, meta = read_safetensors(out / WEIGHTS_FILE)
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    assert int(meta["step"]) == state["step"], "weights and training state are from different steps"
    segzoo.load(out / WEIGHTS_FILE)  # the weights file is a complete, loadable checkpoint
    return state["step"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# The child trains normally, except that the n-th write of one run-folder file stops half way:
# half of the bytes reach the temporary file, a marker file appears, and the child waits to be killed.
CHILD = textwrap.dedent("""
    import os, sys, time
    target, nth, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    real_fdopen, seen = os.fdopen, [0]

    class HalfWriter:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2]))
            self.f.flush()
            os.fsync(self.f.fileno())
            open(marker, "w").close()
            time.sleep(600)
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith("." + target + ".") and name.endswith(".tmp"):
            seen[0] += 1
            if seen[0] == nth:
                return HalfWriter(f)
        return f

    os.fdopen = fdopen
    from segzoo.cli import main
    sys.exit(main(["train", *sys.argv[4:]]))
""")


@linux_only
@pytest.mark.parametrize("target", [WEIGHTS_FILE, STATE_FILE])
def test_sigkill_mid_checkpoint_keeps_previous_and_resume_continues(target, config, uninterrupted, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "blocked"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # second write of the file = the step-4 checkpoint; step 2's is complete on disk
    proc = subprocess.Popen([sys.executable, str(script), target, "2", str(marker), str(config), "--out", str(out)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"the child ended before the blocked write:\n{proc.stdout.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the child never reached the step-4 checkpoint")
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    leftovers = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert any(p.startswith(f".{target}.") for p in leftovers)  # the half-written temporary is there
    assert checkpoint_step(out) == 2
    assert cli(["train", str(config), "--out", str(out), "--resume"]) == 0
    assert checkpoint_step(out) == 6
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # the resumed run removed them
    assert_same_weights(read_safetensors(out / WEIGHTS_FILE)[0], uninterrupted)  # as if never killed
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"][-2:] == [5, 6]


@linux_only
@pytest.mark.parametrize("target", [WEIGHTS_FILE, STATE_FILE])
def test_full_disk_while_saving_raises_and_keeps_previous(target, config, uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_fdopen, seen = os.fdopen, [0]

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data[: len(data) // 3]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if name.startswith(f".{target}.") and name.endswith(".tmp"):
            seen[0] += 1
            if seen[0] == 2:  # the step-4 checkpoint
                return FullDisk(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError) as info:
        cli(["train", str(config), "--out", str(out)])
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # the partial file is removed
    assert checkpoint_step(out) == 2
    assert cli(["train", str(config), "--out", str(out), "--resume"]) == 0
    assert_same_weights(read_safetensors(out / WEIGHTS_FILE)[0], uninterrupted)


def test_nan_loss_names_step_and_last_good_checkpoint(config, uninterrupted, tmp_path):
    from segzoo.config import load_config

    cfg = load_config(config)
    out = tmp_path / "run"

    def poison(trainer):  # the weights blow up after step 3: the loss of step 4 is NaN
        if trainer.step == 3:
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLossError) as info:
        train_from_config(cfg, out, on_step=poison)
    msg = str(info.value)
    assert "not finite at step 4" in msg and f"{out / WEIGHTS_FILE} (step 2)" in msg and "--resume" in msg
    assert checkpoint_step(out) == 2
    weights = read_safetensors(out / WEIGHTS_FILE)[0]
    assert all(torch.isfinite(v.float()).all() for v in weights.values())
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "error" and last["step"] == 4
    # the message's advice works: --resume continues from step 2 to the end
    assert cli(["train", str(config), "--out", str(out), "--resume"]) == 0
    assert checkpoint_step(out) == 6
    assert_same_weights(read_safetensors(out / WEIGHTS_FILE)[0], uninterrupted)
