"""engine/build.py: a run is validated once, before any data is read, and the Trainer loops over what was built."""

import importlib.util
import json

import pytest
import torch

import segzoo.engine.build as build_module
from segzoo.config import ConfigError, load_config
from segzoo.engine.build import build_model, build_parts, check_run, start_device
from segzoo.engine.run import train_from_config
from segzoo.engine.trainer import Trainer
from segzoo.tasks.semantic import SemanticTask


def tiny_config(root, *overrides):
    shapes = "{num_train: 8, num_val: 2, size: 32}"
    return load_config(None, [
        "model.name=unet", "model.num_classes=4", "model.channels=[4, 8, 16, 32, 64]", "data.type=shapes",
        f"data.root={root}", f"data.train={shapes}", f"data.val={shapes}", "data.batch_size=4", "data.num_workers=0",
        "data.augment.size=32", "train.max_steps=2", "train.device=cpu", "train.progress=false",
        "train.tensorboard=false", "eval.num_pictures=0", *overrides])


def test_train_from_config_checks_the_run_once(tmp_path, monkeypatch):
    calls = {"primary_metric": 0, "protocol": 0, "select_device": 0, "check_installed": 0}
    for name in calls:
        owner = SemanticTask if name in ("primary_metric", "protocol") else build_module
        real = getattr(owner, name)

        def counted(*a, _name=name, _real=real, **k):
            calls[_name] += 1
            return _real(*a, **k)

        monkeypatch.setattr(owner, name, counted)
    metrics = train_from_config(tiny_config(tmp_path / "shapes"), tmp_path / "run")
    assert metrics["step"] == 2
    assert calls == {"primary_metric": 1, "protocol": 1, "select_device": 1, "check_installed": 1}


@pytest.mark.parametrize("override, error, match", [
    ("eval.metric=mIoU", ConfigError, "eval.metric='mIoU' is not a metric of semantic models"),
    ("eval.mode=slide", ConfigError, "eval.mode=slide needs eval.crop"),
    ("train.loggers=[jsonl, wandb]", ImportError, r"segzoo\[wandb\]"),
])
def test_config_errors_stop_the_run_before_any_data_is_read(tmp_path, monkeypatch, override, error, match):
    if "wandb" in override:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(error, match=match):
        train_from_config(tiny_config(tmp_path / "shapes", override), tmp_path / "run")
    assert not (tmp_path / "shapes").exists()  # the Shapes data were never generated


def test_the_trainer_loops_over_the_parts_it_receives(tmp_path):
    cfg = tiny_config(tmp_path / "shapes")
    model = build_model(cfg)
    data = [(torch.rand(3, 32, 32), torch.randint(0, 4, (32, 32))) for _ in range(8)]
    parts = build_parts(cfg, model, data, None, tmp_path / "run", device=start_device(cfg),
                        checked=check_run(cfg, model))
    assert parts.model is model and parts.net is model and parts.ddp is None and parts.ema is None
    assert parts.plan.steps_per_epoch == 2 and parts.plan.total_steps == 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = Trainer(parts)
    assert trainer.optimizer is parts.optimizer and trainer.loader is parts.loader  # nothing is built again
    metrics = trainer.fit()
    assert metrics["step"] == 2 and parts.scheduler.last_epoch == 2  # the schedule it was given was stepped
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2]  # the run log that parts.open_log opens
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_an_optimizer_step_larger_than_the_data_is_refused_when_building(tmp_path):
    cfg = tiny_config(tmp_path / "shapes", "data.batch_size=8", "train.grad_accum=2")
    model = build_model(cfg)
    data = [(torch.rand(3, 32, 32), torch.zeros(32, 32, dtype=torch.long))] * 8
    with pytest.raises(ValueError, match=r"data.batch_size x processes x train.grad_accum = 16"):
        build_parts(cfg, model, data, None, tmp_path / "run", device=start_device(cfg), checked=check_run(cfg, model))
