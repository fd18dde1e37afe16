"""The training loop on tiny models: run folder, exact resume, NaN stop, accumulation, optim, transfer."""

import json

import pytest
import torch
from torch import nn

from segzoo.checkpoint import read_safetensors
from segzoo.data import Shapes, build_transforms
from segzoo.data.targets import CLASS_MAP
from segzoo.engine.build import build_trainer
from segzoo.engine.optim import build_optimizer, lr_factor, param_groups
from segzoo.engine.trainer import NonFiniteLossError
from segzoo.models.base import SegmentationModel
from segzoo.registry import ModelSpec


class TinyBackbone(nn.Sequential):
    """conv-(BN)-ReLU with the backbone contract's ``freeze`` (what the trainer calls)."""

    def freeze(self, bn=True, params=True):
        from timm.layers import freeze_batch_norm_2d

        if bn:
            freeze_batch_norm_2d(self)  # BatchNorm -> FrozenBatchNorm2d, in place
        for p in self.parameters() if params else ():
            p.requires_grad_(False)
        return self


class TinySeg(SegmentationModel):
    """conv-(BN)-ReLU "backbone" and a 1x1 head; optional dropout."""

    def __init__(self, num_classes=4, norm=True, dropout=0.0):
        super().__init__(num_classes)
        self.backbone = TinyBackbone(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if norm else nn.Identity(),
                                     nn.ReLU())
        self.head = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(8, num_classes, 1))
        self.spec = ModelSpec("tiny_seg", "semantic", num_classes)

    def forward_logits(self, x, with_aux=False):
        return self.head(self.backbone(x)), None


def shapes_sets(root, size=32, scale=(0.75, 1.25)):
    kw = dict(num_train=16, num_val=4, size=48)
    tf = build_transforms(CLASS_MAP, True, size=size, scale=scale, color_jitter=0.2)
    return (Shapes(root, "train", transforms=tf, **kw),
            Shapes(root, "val", transforms=build_transforms(CLASS_MAP, False), **kw))


def cfg(**train):
    base = {"epochs": 2, "lr": 0.05, "seed": 3, "progress": False, "tensorboard": False, "device": "cpu"}
    return {"data": {"batch_size": 4, "num_workers": 0}, "train": {**base, **train}, "eval": {"num_pictures": 2}}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def data(shapes_root):
    return shapes_sets(shapes_root)


def weights(path):
    return read_safetensors(path)[0]


def test_trainer_writes_run_folder(data, tmp_path):
    torch.manual_seed(0)
    trainer = build_trainer(TinySeg(), *data, cfg(), tmp_path, classes=data[0].classes)
    metrics = trainer.fit()
    assert trainer.steps_per_epoch == 4 and metrics["step"] == 8 and metrics["metric"] == "miou"
    for name in ("model.safetensors", "best.safetensors", "train_state.pt", "log.jsonl", "metrics.json",
                 "predictions.png", "config.yaml"):
        assert (tmp_path / name).is_file(), name
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == list(range(1, 9)) and [r["step"] for r in evals] == [4, 8]
    assert all(r["loss"] > 0 and r["lr"] > 0 and r["images_per_s"] > 0 for r in train)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= saved["final"]["miou"] <= 1 and saved["best"] == max(r["miou"] for r in evals)
    _, meta = read_safetensors(tmp_path / "model.safetensors")
    assert meta["step"] == "8" and json.loads(meta["classes"])[0] == "background"
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert state["step"] == 8 and "optimizer" in state and "rng" in state
    from PIL import Image

    with Image.open(tmp_path / "predictions.png") as im:  # 2 rows of image | prediction | ground truth
        assert im.size[0] > 3 * 48 and im.size[1] >= 2 * 48


def test_resume_reproduces_uninterrupted_run(data, tmp_path):
    c = cfg(checkpoint_every=3, epochs=2)

    def run(out, crash_at=None, resume=False):
        torch.manual_seed(0)
        model = TinySeg(dropout=0.2)

        def on_step(t):
            if t.step == crash_at:
                raise KeyboardInterrupt("simulated crash")

        build_trainer(model, *data, c, out, on_step=on_step).fit(resume=resume)

    run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", crash_at=7)  # last checkpoint: step 6, in the middle of epoch 2
    assert read_safetensors(tmp_path / "cut" / "model.safetensors")[1]["step"] == "6"
    run(tmp_path / "cut", resume=True)
    a, b = weights(tmp_path / "full" / "model.safetensors"), weights(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-exact, BN statistics included
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert full["final"]["miou"] == cut["final"]["miou"]



@pytest.mark.parametrize("every, eval_every, written", [
    (0, 2, [4, 8, 12, 16]),  # the end of each epoch (4 steps each)
    (6, 2, [6, 8, 12, 16]),  # every 6 steps, after each evaluation (epochs 2 and 4) and at the end
    (6, 0, [6, 12, 16]),  # no evaluation until the end
])
def test_checkpoint_every_sets_when_checkpoints_are_written(data, tmp_path, monkeypatch, every, eval_every, written):
    import segzoo.engine.checkpointer as checkpointer_module

    c = cfg(checkpoint_every=every, epochs=4)
    c["eval"]["every"] = eval_every
    trainer = build_trainer(TinySeg(), *data, c, tmp_path / "run")
    steps, write = [], checkpointer_module.atomic_write_all
    monkeypatch.setattr(checkpointer_module, "atomic_write_all",
                        lambda files: (steps.append(trainer.step), write(files)))
    trainer.fit()
    assert steps == written
    assert read_safetensors(tmp_path / "run" / "model.safetensors")[1]["step"] == "16"

def test_resume_refuses_changed_schedule(data, tmp_path):
    build_trainer(TinySeg(), *data, cfg(max_steps=2), tmp_path).fit()
    with pytest.raises(ValueError, match="planned for 2 steps"):
        build_trainer(TinySeg(), *data, cfg(max_steps=3), tmp_path).fit(resume=True)
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        build_trainer(TinySeg(), *data, cfg(), tmp_path / "none").fit(resume=True)


class NaNAfter(TinySeg):
    def __init__(self, bad_call):
        super().__init__()
        self.calls, self.bad_call = 0, bad_call

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        if targets is not None:
            self.calls += 1
            if self.calls >= self.bad_call:
                out["loss"] = out["loss"] * float("nan")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"not finite at step 4 .*step 2\).*train.lr"):
        build_trainer(NaNAfter(bad_call=4), *data, cfg(checkpoint_every=2), tmp_path).fit()
    _, meta = read_safetensors(tmp_path / "model.safetensors")
    w = weights(tmp_path / "model.safetensors")
    assert meta["step"] == "2" and all(torch.isfinite(v.float()).all() for v in w.values())
    last = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert last["type"] == "error" and last["step"] == 4


def test_grad_accumulation_matches_large_batch(shapes_root, tmp_path):
    # crops never need padding here, so every micro-batch has the same number of labelled pixels
    dense = shapes_sets(shapes_root, size=32, scale=(1.5, 2.0))

    def run(out, batch, accum):
        torch.manual_seed(0)
        c = cfg(max_steps=3, grad_accum=accum, optimizer="adamw", lr=0.01)
        c["data"]["batch_size"] = batch
        c["eval"]["every"] = 0
        build_trainer(TinySeg(norm=False), dense[0], None, c, out).fit()
        return weights(out / "model.safetensors")

    a, b = run(tmp_path / "a", 8, 1), run(tmp_path / "b", 4, 2)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_param_groups_freeze_and_schedules():
    model = TinySeg()
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.1, backbone_lr_mult=0.1)}
    assert groups["backbone_decay"]["lr_mult"] == 0.1 and groups["head_decay"]["lr_mult"] == 1.0
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0  # conv bias, BN weight and bias
    assert len(groups["backbone_no_decay"]["params"]) == 3 and groups["head_decay"]["weight_decay"] == 0.1
    opt = build_optimizer(model, "sgd", lr=0.5, backbone_lr_mult=0.1)
    assert sorted(g["lr"] for g in opt.param_groups) == [0.05, 0.05, 0.5, 0.5]
    with pytest.raises(ValueError, match="'sgd' or 'adamw'"):
        build_optimizer(model, "adam")
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    assert {g["name"] for g in param_groups(model, 0.1)} == {"head_decay", "head_no_decay"}
    assert lr_factor(0, 100, "poly", warmup_steps=10, warmup_factor=0.1) == pytest.approx(0.1)
    assert lr_factor(10, 100, "poly", warmup_steps=10) == pytest.approx(0.9**0.9)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(7, 100, "constant") == 1.0


def test_freeze_backbone_keeps_backbone_fixed(data, tmp_path):
    model = TinySeg()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    build_trainer(model, data[0], None, cfg(max_steps=2, freeze_backbone=True), tmp_path).fit()
    after = model.backbone.state_dict()  # BN became FrozenBatchNorm2d (no num_batches_tracked)
    assert set(after) == {k for k in before if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(before[k], after[k]) for k in after)  # weights and BN statistics
    too_big = cfg()
    too_big["data"]["batch_size"] = 8  # the val split has 4 images
    with pytest.raises(ValueError, match="lower data.batch_size"):
        build_trainer(TinySeg(), data[1], None, too_big, tmp_path)


def test_early_stopping_clipping_channels_last_and_bf16(data, tmp_path):
    c = cfg(epochs=3, lr=1e-20, early_stop_patience=1, clip_grad=1.0, channels_last=True, amp="bf16")
    metrics = build_trainer(TinySeg(norm=False), *data, c, tmp_path).fit()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    # lr 1e-20 (lr must be > 0): the updates vanish in float32, so the metric never improves after the
    # first evaluation and training stops after epoch 2 of 3
    assert metrics["step"] == 8 and metrics["best_step"] == 4
    assert [r["type"] for r in records if r["type"] != "train"] == ["eval", "eval", "early_stop"]
    assert all("grad_norm" in r for r in records if r["type"] == "train")


def test_resume_after_a_crash_logs_each_step_once(data, tmp_path):
    c = cfg(checkpoint_every=3, epochs=2)

    def crash(t):
        if t.step == 7:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        build_trainer(TinySeg(), *data, c, tmp_path, on_step=crash).fit()
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["type"] == "train"] == list(range(1, 8))  # step 7 ran, checkpoint: 6
    seconds_at_checkpoint = torch.load(tmp_path / "train_state.pt", weights_only=True)["train_seconds"]
    metrics = build_trainer(TinySeg(), *data, c, tmp_path).fit(resume=True)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["type"] == "train"] == list(range(1, 9))
    assert [r["step"] for r in logged if r["type"] == "eval"] == [4, 8]
    times = [r["time"] for r in logged if r["type"] == "train"]
    assert times == sorted(times) and times[6] >= seconds_at_checkpoint  # the clock continues across the resume
    assert metrics["train_seconds"] >= times[-1]


def test_one_reduction_per_optimizer_step(data, tmp_path, monkeypatch):
    """The non-finite check reads the already-reduced losses: one reduction (and host sync) per step."""
    import segzoo.engine.trainer as trainer_module

    calls = []
    real = trainer_module.all_reduce_mean
    monkeypatch.setattr(trainer_module, "all_reduce_mean", lambda t: calls.append(t.numel()) or real(t))
    c = cfg(max_steps=3, grad_accum=2)
    c["data"]["batch_size"] = 2
    c["eval"]["every"] = 0
    build_trainer(TinySeg(), data[0], None, c, tmp_path).fit()
    assert len(calls) == 3  # 3 steps x 2 micro-batches: one reduction a step, not one a micro-batch


def test_eval_summary_line_shows_the_tracked_metric():
    from segzoo.tasks import get_task

    metrics = {k: 0.1 * i for i, k in enumerate(get_task("instance").metric_names())}
    line = get_task("instance").summary_line(metrics, "segm_AP")
    assert line.startswith("segm_AP=") and "bbox_AP=" in line and "segm_APs" not in line
    line = get_task("semantic").summary_line({"miou": 0.5, "pixel_acc": 0.9})
    assert line.startswith("miou=0.5000, pixel_acc=0.9000")
