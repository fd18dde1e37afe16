"""The training options for scale: train.ema, train.grad_checkpointing, train.sync_bn."""

import copy
import json
import os
import sys
import warnings

import pytest
import torch
from torch import nn

import segzoo
from segzoo.checkpoint import read_safetensors
from segzoo.engine import evaluate
from segzoo.engine.build import build_trainer
from segzoo.engine.ema import ModelEma

sys.path.insert(0, os.path.dirname(__file__))
from test_trainer import TinySeg, cfg, shapes_sets  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shapes_sets(tmp_path_factory.mktemp("shapes"))


def weights(path):
    return read_safetensors(path)[0]


# ---------------------------------------------------------------------------- EMA

def test_model_ema_follows_the_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEma(model, decay=0.9)
    reference = {k: v.clone().double() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        model(torch.rand(2, 3, 8, 8)).square().mean().backward()  # also moves the BN statistics
        opt.step()
        opt.zero_grad()
        ema.update(model)
        for k, v in model.state_dict().items():
            reference[k] = 0.9 * reference[k] + 0.1 * v.double() if v.is_floating_point() else v.double()
    got = ema.state_dict()
    for k, v in reference.items():
        torch.testing.assert_close(got[k].double(), v, rtol=1e-6, atol=1e-7)
    assert got["1.num_batches_tracked"].item() == 3  # integer buffers are copied, not averaged
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    assert ema.updates == 3 and not torch.equal(got["0.weight"], model.state_dict()["0.weight"])
    warm = ModelEma(model, decay=0.999, warmup=True)
    assert [warm.decay_at(n) for n in (0, 1, 10_000)] == [0.1, 2 / 11, 0.999]
    with pytest.raises(ValueError, match="decay must be in"):
        ModelEma(model, decay=1.0)


def test_trainer_ema_is_evaluated_saved_and_resumed(data, tmp_path):
    c = cfg(ema=True, ema_decay=0.8, ema_every=2, checkpoint_every=3)

    def run(out, crash_at=None, resume=False):
        torch.manual_seed(0)

        def on_step(t):
            if t.step == crash_at:
                raise KeyboardInterrupt("simulated crash")

        return build_trainer(TinySeg(dropout=0.2), *data, c, out, on_step=on_step).fit(resume=resume)

    metrics = run(tmp_path / "full")
    full = tmp_path / "full"
    raw, ema = weights(full / "model.safetensors"), weights(full / "ema.safetensors")
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in raw)
    assert metrics["evaluated"] == "ema"
    # the evaluation, the best checkpoint and the pictures use the averaged weights
    averaged = TinySeg().eval()
    averaged.load_state_dict(ema)
    again = evaluate(averaged, data[1], batch_size=4)["metrics"]
    assert again["miou"] == pytest.approx(metrics["final"]["miou"], abs=1e-9)
    if metrics["best_step"] == metrics["step"]:
        best = weights(full / "best.safetensors")
        assert all(torch.equal(best[k], ema[k]) for k in ema)
    # a run cut off mid-epoch and resumed ends with the same average, bit for bit
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", crash_at=7)  # last checkpoint at step 6
    assert read_safetensors(tmp_path / "cut" / "ema.safetensors")[1]["step"] == "6"
    run(tmp_path / "cut", resume=True)
    cut = weights(tmp_path / "cut" / "ema.safetensors")
    for k in ema:
        assert torch.equal(cut[k], ema[k]), k
    state = torch.load(full / "train_state.pt", weights_only=True)
    assert state["ema_updates"] == 4  # 8 steps, one update every 2


def test_resume_refuses_a_changed_ema_setting(data, tmp_path):
    torch.manual_seed(0)
    build_trainer(TinySeg(), *data, cfg(max_steps=2, ema=True), tmp_path).fit()
    with pytest.raises(ValueError, match="saved with train.ema on"):
        build_trainer(TinySeg(), *data, cfg(max_steps=2), tmp_path).fit(resume=True)
    (tmp_path / "ema.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="ema.safetensors is missing"):
        build_trainer(TinySeg(), *data, cfg(max_steps=2, ema=True), tmp_path).fit(resume=True)


# ---------------------------------------------------------------------------- gradient checkpointing

def _count_calls(module):
    calls = []
    forward = module.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return forward(*args, **kwargs)

    module.forward = counted
    return calls


@pytest.mark.parametrize("name, kwargs, block, exact_stats", [
    ("hrnet_w18_small", {}, lambda m: m.backbone.stage3[0], True),          # segzoo's HRNet body
    ("unet", {"channels": (8, 16, 32)}, lambda m: m.down[1], True),          # the original U-Net
    ("fcn_resnet50", {"backbone": "resnet18"}, lambda m: m.backbone.body.layer2, False),  # timm
])
def test_grad_checkpointing_recomputes_and_keeps_the_gradients(name, kwargs, block, exact_stats):
    torch.manual_seed(0)
    plain = segzoo.build(name, num_classes=3, **kwargs).train()
    ckpt = copy.deepcopy(plain).set_grad_checkpointing()
    calls = _count_calls(block(ckpt))
    x, y = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    torch.manual_seed(1)  # the same dropout masks in both
    plain(x, y)["loss"].backward()
    torch.manual_seed(1)
    ckpt(x, y)["loss"].backward()
    assert len(calls) == 2  # the block ran again in backward
    for (k, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=k)
    if exact_stats:  # segzoo's bodies fold each batch into the BatchNorm statistics once
        for (k, a), b in zip(plain.named_buffers(), ckpt.buffers()):
            assert torch.equal(a, b), k
    with torch.no_grad():  # evaluation does not checkpoint
        calls.clear()
        ckpt.eval()(x)
        assert len(calls) == 1


def test_trainer_grad_checkpointing(data, tmp_path):
    def run(out, **train):
        torch.manual_seed(0)
        model = segzoo.build("unet", num_classes=4, channels=(8, 16))
        build_trainer(model, *data, cfg(max_steps=2, **train), out).fit()
        return model, weights(out / "model.safetensors")

    model, with_ckpt = run(tmp_path / "ckpt", grad_checkpointing=True)
    assert model.grad_checkpointing
    _, plain = run(tmp_path / "plain")
    for k in plain:  # the same training, BatchNorm statistics included
        torch.testing.assert_close(with_ckpt[k], plain[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="tiny_seg has no backbone that supports gradient checkpointing"):
        build_trainer(TinySeg(), *data, cfg(grad_checkpointing=True), tmp_path / "no")


def test_backbone_without_checkpointing_says_so():
    from segzoo.backbones import Backbone

    class Plain(Backbone):
        name = "plain"
        channels, strides = (3,), (1,)

        def forward(self, x):
            return [x]

        def stage_prefixes(self):
            return []

    with pytest.raises(ValueError, match="backbone 'plain' does not support gradient checkpointing"):
        Plain().set_grad_checkpointing()
    Plain().set_grad_checkpointing(False)  # turning it off is always fine


# ---------------------------------------------------------------------------- SyncBatchNorm

def test_sync_bn_is_a_silent_no_op_in_one_process(data, tmp_path):
    torch.manual_seed(0)
    model = TinySeg()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer = build_trainer(model, *data, cfg(max_steps=1, sync_bn=True), tmp_path)
    assert trainer.model is model and isinstance(model.backbone[1], nn.BatchNorm2d)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())


def test_sync_bn_under_ddp_on_cpu_is_refused(data, tmp_path, monkeypatch):
    monkeypatch.setattr("segzoo.engine.build.is_distributed", lambda: True)
    with pytest.raises(ValueError, match="train.sync_bn needs CUDA devices"):
        build_trainer(TinySeg(), *data, cfg(sync_bn=True), tmp_path)


def test_metrics_say_what_was_evaluated(data, tmp_path):
    torch.manual_seed(0)
    build_trainer(TinySeg(), *data, cfg(max_steps=1), tmp_path).fit()
    assert json.loads((tmp_path / "metrics.json").read_text())["evaluated"] == "weights"
    assert not (tmp_path / "ema.safetensors").exists()
