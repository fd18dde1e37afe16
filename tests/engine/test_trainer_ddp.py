"""DDP on CPU (gloo): a 2-process run ends with the weights of a 1-process run with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from segzoo.checkpoint import read_safetensors
from segzoo.engine.build import build_trainer

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import TinySeg, shapes_sets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def assert_same_trained_weights(single_file, other_file):
    """The distributed run's weights equal the single process's, and training moved them from the seed-0 init."""
    single = read_safetensors(single_file)[0]
    other = read_safetensors(other_file)[0]
    for k in single:
        torch.testing.assert_close(other[k], single[k], rtol=1e-5, atol=1e-6)
    torch.manual_seed(0)
    init = TinySeg(norm=False).state_dict()
    assert any(not torch.allclose(init[k], single[k]) for k in single)  # training moved the weights


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(batch_size, grad_accum, **extra):
    # no padding (crop inside the scaled image) and no BatchNorm: every rank sees as many labelled
    # pixels as the others, so the mean of the per-rank losses is the global-batch loss
    train = {"max_steps": 4, "lr": 0.05, "seed": 5, "progress": False, "tensorboard": False, "device": "cpu"}
    train.update(grad_accum=grad_accum, **extra)
    return {"data": {"batch_size": batch_size, "num_workers": 0}, "train": train, "eval": {"num_pictures": 0}}


def _run(root, out, batch_size, grad_accum=1, **extra):
    torch.manual_seed(0)
    model = TinySeg(norm=False)
    config = _config(batch_size, grad_accum, **extra)
    return build_trainer(model, *shapes_sets(root, size=32, scale=(1.5, 2.0)), config, out).fit()


def _worker(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        _run(root, out, batch_size=1, grad_accum=2)  # global batch 1 x 2 ranks x 2 micro-batches
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    """Also covers gradient accumulation under DDP (no_sync on the first micro-batch)."""
    _run(tmp_path / "shapes", tmp_path / "single", batch_size=4)  # also writes the data once
    mp.spawn(_worker, args=(2, _free_port(), tmp_path / "shapes", tmp_path / "ddp"), nprocs=2, join=True)
    assert_same_trained_weights(tmp_path / "single" / "model.safetensors", tmp_path / "ddp" / "model.safetensors")
    m1 = json.loads((tmp_path / "single" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m2["world_size"] == 2 and m2["step"] == m1["step"] == 4
    # evaluation is sharded over the ranks and the confusion matrices are summed
    assert m2["final"]["miou"] == pytest.approx(m1["final"]["miou"], abs=1e-6)


def test_two_torchrun_nodes_match_single_process(tmp_path):
    """Two "nodes" of one process each, as on two machines: `torchrun --nnodes 2 --node_rank N` with a
    c10d rendezvous at one endpoint (gloo); their weights (and EMA) equal a 1-process run with the same global
    batch."""
    _run(tmp_path / "shapes", tmp_path / "single", batch_size=4, ema=True, ema_decay=0.5)  # also writes the data
    endpoint = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node_rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint,
               "--rdzv_id", "segzoo-two-nodes", "--local_addr", "127.0.0.1", "--max_restarts", "0",
               str(Path(__file__).with_name("ddp_tiny_run.py")), str(tmp_path / "shapes"), str(tmp_path / "nodes"), "2"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                      cwd=tmp_path))
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=300)[0])
    finally:
        for proc in procs:  # a node that failed must not leave the other waiting for it
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-3000:]
    for name in ("model.safetensors", "ema.safetensors"):
        assert_same_trained_weights(tmp_path / "single" / name, tmp_path / "nodes" / name)
    metrics = json.loads((tmp_path / "nodes" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["step"] == 4 and metrics["evaluated"] == "ema"


@pytest.mark.slow
def test_torchrun_cli_on_cpu(tmp_path):
    """`torchrun --nproc_per_node 2 tools/train.py CONFIG` trains a registered model on CPU."""
    pytest.importorskip("timm")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(REPO / "tools" / "train.py"), str(REPO / "configs" / "quickstart.yaml"),
           "--out", str(out), f"data.root={tmp_path / 'shapes'}", "data.num_workers=0", "data.batch_size=2",
           "data.augment.size=64", "train.max_steps=2", "train.progress=false", "eval.max_images=4",
           "eval.num_pictures=1", "train.tensorboard=false", "data.train.num_train=8", "data.train.num_val=4",
           "data.train.size=64", "data.val.num_train=8", "data.val.num_val=4", "data.val.size=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["step"] == 2 and 0 <= metrics["final"]["miou"] <= 1
    assert (out / "predictions.png").is_file() and (out / "model.safetensors").is_file()
