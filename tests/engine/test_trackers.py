"""train.loggers: MLflow (file store) and W&B (offline) runs written by the trainer, read back with no network."""

import glob
import json
import struct
import time

import pytest
import torch

import segzoo
from segzoo.config import ConfigError, load_config
from segzoo.data import Shapes, build_transforms
from segzoo.data.targets import CLASS_MAP
from segzoo.engine.build import build_trainer
from segzoo.engine.trackers import check_installed, flatten, scalars


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    kw = dict(num_train=8, num_val=2, size=32)
    return (Shapes(root, "train", transforms=build_transforms(CLASS_MAP, True, size=32), **kw),
            Shapes(root, "val", transforms=build_transforms(CLASS_MAP, False), **kw))


def train(shapes, out, loggers, **extra):
    torch.manual_seed(0)
    train_set, val_set = shapes
    model_cfg = {"name": "unet", "channels": [8, 16], "loss": ["ce", {"name": "dice", "weight": 0.5}]}
    model = segzoo.build(num_classes=train_set.num_classes, **model_cfg)
    cfg = {"model": model_cfg, "data": {"batch_size": 4, "num_workers": 0}, "eval": {"num_pictures": 2},
           "train": {"epochs": 2, "lr": 0.05, "progress": False, "device": "cpu", "loggers": loggers, **extra}}
    trainer = build_trainer(model, train_set, val_set, cfg, out, classes=train_set.classes)
    trainer.fit()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return trainer, records


def test_mlflow_run_holds_params_losses_metrics_pictures_and_best_checkpoint(shapes, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow (pip install 'segzoo[mlflow]') is not installed")
    from mlflow.tracking import MlflowClient

    out = tmp_path / "run"
    trainer, records = train(shapes, out, ["jsonl", "mlflow"], experiment="shapes-exp")
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert client.get_experiment(run.info.experiment_id).name == "shapes-exp"
    params = run.data.params
    assert params["train.lr"] == "0.05" and params["model.name"] == "unet" and params["model.num_classes"] == "4"
    assert json.loads(params["model.loss"]) == ["ce", {"name": "dice", "weight": 0.5}]
    steps = [r for r in records if r["type"] == "train"]
    for key in ("loss", "loss_ce", "loss_dice", "lr"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, f"train/{key}"))
        assert [s for s, _ in history] == [r["step"] for r in steps], key  # pytest 9.2's approx takes no tuples
        assert [v for _, v in history] == pytest.approx([r[key] for r in steps]), key
    evals = [r for r in records if r["type"] == "eval"]
    miou = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval/miou"))
    assert [s for s, _ in miou] == [r["step"] for r in evals] and len(miou) == 2
    assert [v for _, v in miou] == pytest.approx([r["miou"] for r in evals])
    assert [a.path for a in client.list_artifacts(run_id, "pictures")] == ["pictures/predictions.png"]
    [ckpt] = client.list_artifacts(run_id, "checkpoint")
    assert ckpt.path == "checkpoint/best.safetensors"
    local = client.download_artifacts(run_id, ckpt.path, str(tmp_path / "dl"))
    assert open(local, "rb").read() == (out / "best.safetensors").read_bytes()
    # a resumed (here: finished) run continues the same MLflow run
    build_trainer(trainer.model, *shapes, trainer.cfg, out, classes=shapes[0].classes).fit(resume=True)
    assert json.loads((out / "tracking.json").read_text())["mlflow"] == run_id
    assert len(client.search_runs([run.info.experiment_id])) == 1


def _wandb_records(path):
    """The protobuf records of a .wandb file (LevelDB log format: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, pos, block, part = open(path, "rb").read(), 7, 32768, b""
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part + data if kind == 4 else data)
            yield record
            part = b""
        else:
            part = part + data if kind == 3 else data


def test_wandb_offline_run_holds_params_losses_metrics_pictures_and_best_checkpoint(shapes, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb (pip install 'segzoo[wandb]') is not installed")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    _, records = train(shapes, out, ["jsonl", "wandb"], experiment="shapes-proj")
    run_id = json.loads((out / "tracking.json").read_text())["wandb"]
    [path] = glob.glob(str(out / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb"))
    for _ in range(600):  # W&B's service process writes the file on its own; its last record is the exit
        if any(r.WhichOneof("record_type") == "exit" for r in _wandb_records(path)):
            break
        time.sleep(0.1)
    history, config, artifacts, run_info = {}, {}, [], None
    for r in _wandb_records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run_info = r.run
            config.update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            history.setdefault(row["_step"], {}).update(row)
        elif kind == "artifact":
            artifacts.append((r.artifact.type, [m.path for m in r.artifact.manifest.contents]))
    assert run_info.project == "shapes-proj" and run_info.display_name == "run"
    config = {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in config.items()}
    assert config["train.lr"] == 0.05 and config["model.num_classes"] == 4 and config["model.channels"] == [8, 16]
    for r in (r for r in records if r["type"] == "train"):
        assert history[r["step"]]["train/loss"] == pytest.approx(r["loss"])
        assert history[r["step"]]["train/loss_dice"] == pytest.approx(r["loss_dice"])
    for r in (r for r in records if r["type"] == "eval"):
        assert history[r["step"]]["eval/miou"] == pytest.approx(r["miou"])
    last = history[max(history)]
    assert last["pictures/_type"] == "image-file"
    assert (out / "wandb" / path.split("/")[-2] / "files" / last["pictures/path"]).is_file()
    assert artifacts == [("model", ["best.safetensors"])]


def test_a_missing_tracker_package_is_named_with_its_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'segzoo\[wandb\]'"):
        check_installed(("jsonl", "wandb"))
    check_installed(("jsonl", "tensorboard"))


def test_loggers_are_checked_in_the_config_and_records_flattened():
    assert load_config(base={"model": {"name": "unet"}}, overrides=["train.loggers=[jsonl, mlflow]"]).train.loggers \
        == ("jsonl", "mlflow")
    with pytest.raises(ConfigError, match="must be one of jsonl, tensorboard, mlflow, wandb, got 'mlfow'"):
        load_config(base={"model": {"name": "unet"}}, overrides=["train.loggers=[mlfow]"])
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}
    record = {"type": "eval", "step": 3, "miou": 0.5, "iou": {"cat": 0.25, "dog": float("nan")}, "name": "x"}
    assert scalars(record) == {"miou": 0.5, "iou/cat": 0.25}


def test_an_interrupted_run_is_killed_in_mlflow_and_resumed_into_the_same_run(shapes, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow (pip install 'segzoo[mlflow]') is not installed")
    from mlflow.tracking import MlflowClient

    from segzoo.engine.signals import TrainingInterrupted

    torch.manual_seed(0)
    out = tmp_path / "run"
    model = segzoo.build("unet", num_classes=shapes[0].num_classes, channels=[8, 16])
    cfg = {"model": {"name": "unet"}, "data": {"batch_size": 4, "num_workers": 0}, "eval": {"num_pictures": 0},
           "train": {"epochs": 2, "progress": False, "device": "cpu", "loggers": ["jsonl", "mlflow"]}}

    def stop(trainer):
        if trainer.step == 1:
            trainer._signals.signum = 2  # as SIGINT does

    with pytest.raises(TrainingInterrupted):
        build_trainer(model, *shapes, cfg, out, classes=shapes[0].classes, on_step=stop).fit()
    run_id = json.loads((out / "tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    assert client.get_run(run_id).info.status == "KILLED"
    build_trainer(model, *shapes, cfg, out, classes=shapes[0].classes).fit(resume=True)
    assert json.loads((out / "tracking.json").read_text())["mlflow"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert max(steps) == 4 and set(steps) == {1, 2, 3, 4}
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/best.safetensors"]
