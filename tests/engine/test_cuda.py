"""The GPU paths of the training loop, marked ``cuda`` and skipped without a CUDA device.

AMP (bf16, and fp16 with the GradScaler), channels_last, ``torch.compile``, NCCL DDP with
SyncBatchNorm (two processes; skipped with fewer than two GPUs) and deterministic mode.
``tools/gpu_check.sh`` runs them (``pytest -m cuda``) and the benchmark on one machine.
"""

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import segzoo
from segzoo.checkpoint import read_safetensors
from segzoo.engine.build import build_trainer

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import TinySeg, cfg, shapes_sets  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_sets(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def no_tf32(monkeypatch):
    """Full float32 convolutions and matmuls, so that two ways of computing can be compared closely."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _fcn():
    torch.manual_seed(0)
    model = segzoo.build("fcn_resnet50", num_classes=4, backbone="resnet18")
    for m in model.modules():  # compiled code draws dropout masks from another generator than eager
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
    return model


def _train(model, data, out, **train):
    trainer = build_trainer(model, *data, cfg(device="cuda", max_steps=4, **train), out)
    trainer.fit()
    return trainer, read_safetensors(out / "model.safetensors")[0]


def _losses(out):
    return [r["loss"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["type"] == "train"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_steps(data, tmp_path, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    model = _fcn()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.backbone.register_forward_hook(lambda m, i, o: seen.append(o[-1].dtype))
    # fp16 also clips (unscale_ before clipping); bf16 also checkpoints the backbone and keeps an EMA
    extra = {"clip_grad": 1.0} if amp == "fp16" else {"grad_checkpointing": True, "ema": True, "ema_decay": 0.9}
    trainer, weights = _train(model, data, tmp_path, amp=amp, **extra)
    assert trainer.amp_dtype == dtype and seen[0] == dtype  # the forward ran under autocast
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    assert all(math.isfinite(v) for v in _losses(tmp_path))
    assert all(v.dtype == init[k].dtype and bool(torch.isfinite(v.float()).all()) for k, v in weights.items())
    assert any(not torch.equal(v.cpu(), init[k].cpu()) for k, v in weights.items() if v.is_floating_point())
    state = torch.load(tmp_path / "train_state.pt", map_location="cpu", weights_only=True)
    if amp == "fp16":  # the scaler's state is saved for resume
        assert 0 < state["scaler"]["scale"] <= 2.0**16
    else:
        assert (tmp_path / "ema.safetensors").is_file() and state["ema_updates"] == 4


def test_channels_last_trains_as_contiguous(data, tmp_path, no_tf32):
    trainer, last = _train(_fcn(), data, tmp_path / "last", channels_last=True, amp="off")
    conv = trainer.model.backbone.body.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    _, plain = _train(_fcn(), data, tmp_path / "plain", amp="off")
    for k in plain:
        torch.testing.assert_close(last[k].float(), plain[k].float(), rtol=1e-4, atol=1e-4, msg=k)


def test_compile_trains_as_eager(data, tmp_path, no_tf32):
    torch._dynamo.reset()
    trainer, compiled = _train(_fcn(), data, tmp_path / "compiled", compile=True, amp="off")
    assert trainer.net is not trainer.model  # the step ran through the compiled module
    _, eager = _train(_fcn(), data, tmp_path / "eager", amp="off")
    for k in eager:
        torch.testing.assert_close(compiled[k].float(), eager[k].float(), rtol=1e-3, atol=1e-4, msg=k)
    assert _losses(tmp_path / "compiled") == pytest.approx(_losses(tmp_path / "eager"), rel=1e-3)


# ---------------------------------------------------------------------------- NCCL DDP

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nccl_run(root, out, batch_size):
    # crops inside the scaled image: every rank sees as many labelled pixels (see test_trainer_ddp)
    sets = shapes_sets(root, size=32, scale=(1.5, 2.0))
    config = cfg(device="auto", max_steps=4, amp="off", sync_bn=True)
    config["data"]["batch_size"] = batch_size
    torch.manual_seed(0)
    trainer = build_trainer(TinySeg(norm=True), *sets, config, out)
    trainer.fit()
    return trainer


def _nccl_worker(rank, world, port, root, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.backends.cudnn.allow_tf32 = False
    try:
        trainer = _nccl_run(root, out, batch_size=2)
        assert torch.distributed.get_backend() == "nccl" and trainer.device == torch.device("cuda", rank)
        assert isinstance(trainer.model.backbone[1], nn.SyncBatchNorm)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_nccl_ddp_with_sync_bn_matches_one_process(tmp_path, no_tf32):
    """Two GPUs with SyncBatchNorm (batch 2 each) end where one GPU with batch 4 and BatchNorm ends."""
    single = _nccl_run(tmp_path / "shapes", tmp_path / "single", batch_size=4)
    assert isinstance(single.model.backbone[1], nn.BatchNorm2d)  # one process: sync_bn changes nothing
    mp.spawn(_nccl_worker, args=(2, _free_port(), tmp_path / "shapes", tmp_path / "ddp"), nprocs=2, join=True)
    a = read_safetensors(tmp_path / "single" / "model.safetensors")[0]
    b = read_safetensors(tmp_path / "ddp" / "model.safetensors")[0]
    assert a.keys() == b.keys()
    for k in a:  # BatchNorm statistics included: SyncBatchNorm saw the global batch
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=1e-4, atol=1e-5, msg=k)


# ---------------------------------------------------------------------------- deterministic mode

_DETERMINISTIC = textwrap.dedent("""
    import sys
    import torch
    from segzoo.checkpoint import read_safetensors
    from segzoo.config import load_config
    from segzoo.engine.run import train_from_config

    torch.use_deterministic_algorithms(True)
    root = sys.argv[1]

    def run(model, out, task_data):
        shapes = {"num_train": 8, "num_val": 2, "size": 64, **task_data}
        cfg = load_config(base={
            "model": model,
            "data": {"type": "shapes", "root": root, "train": shapes, "val": shapes, "batch_size": 2,
                     "num_workers": 0, "check": False, "augment": {"size": 64}},
            "train": {"max_steps": 3, "lr": 0.01, "seed": 1, "device": "cuda", "amp": "off", "progress": False,
                      "tensorboard": False},
            "eval": {"every": 0, "max_images": 2, "num_pictures": 0},
        })
        train_from_config(cfg, out)
        return read_safetensors(out + "/model.safetensors")[0]

    centernet = {"name": "centernet_resnet18", "num_classes": 3}
    a = run(centernet, root + "/a", {})
    b = run(centernet, root + "/b", {})
    assert all(torch.equal(a[k], b[k]) for k in a), "deterministic mode gave different weights"
    print("IDENTICAL")
    try:  # bilinear upsampling backward and CUDA NLLLoss have no deterministic implementation
        run({"name": "fcn_resnet50", "backbone": "resnet18", "num_classes": 4}, root + "/c", {})
    except RuntimeError as e:
        print("RAISED", "deterministic" in str(e))
""")


def test_deterministic_mode(tmp_path):
    """Under torch.use_deterministic_algorithms(True), CenterNet trains to bit-identical weights twice, and
    a semantic model raises torch's error (what the Trainer docstring says); in a fresh process, because
    CUBLAS_WORKSPACE_CONFIG must be set before cuBLAS starts."""
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _DETERMINISTIC, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "IDENTICAL" in proc.stdout and "RAISED True" in proc.stdout, proc.stdout[-3000:]
