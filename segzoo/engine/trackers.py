"""Experiment trackers beside ``log.jsonl``: MLflow and Weights & Biases (``train.loggers``).

A tracker receives the run's parameters once (the config, flattened, and the model's spec),
every record the run log writes (``train/loss``, ``train/loss_dice``, ``train/lr``... per
optimizer step; ``eval/miou``, per-class values... per evaluation), and at the end the pictures
(``predictions.png``) and the best checkpoint as artifacts. Neither needs a network:

- MLflow writes to ``train.tracking_uri`` (default: ``MLFLOW_TRACKING_URI``, else the file store
  ``<run folder>/mlruns``; ``mlflow ui --backend-store-uri <run folder>/mlruns`` shows it).
- W&B runs in ``train.wandb_mode`` (default ``offline``: ``<run folder>/wandb``, uploaded later
  with ``wandb sync``).

A resumed run continues the same tracker runs: their ids are kept in ``tracking.json``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segzoo.checkpoint import atomic_write
from segzoo.engine.run_folder import TRACKING_FILE

EXTRAS = {"mlflow": ("mlflow", "segzoo[mlflow]"), "wandb": ("wandb", "segzoo[wandb]")}


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}`` (lists kept as values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a log record, nested mappings flattened with ``/`` (``iou/cat``); the
    ``step``/``epoch``/``type`` bookkeeping left out."""
    out = {}
    for k, v in flatten({k: v for k, v in record.items() if k not in ("type", "step", "epoch")}, sep="/").items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[k] = float(v)
    return out


class Tracker:
    """What the run log calls; subclasses write to one tracking service."""

    name = ""

    def log_params(self, params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def log(self, record: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def log_artifact(self, path: Path, kind: str) -> None:
        """``kind``: ``pictures`` or ``checkpoint``."""
        raise NotImplementedError

    def close(self, status: str = "FINISHED") -> None:
        """``status``: ``FINISHED``, ``KILLED`` (stopped by a signal; resumable) or ``FAILED``."""
        raise NotImplementedError


_MLFLOW_KEY = re.compile(r"[^0-9A-Za-z_\-. /]")


class MLflowTracker(Tracker):
    """One MLflow run (:class:`mlflow.MlflowClient`: no global active run is touched)."""

    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, uri: str | None, experiment: str,
                 run_id: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps its file store behind this switch; the run folder is where a file store belongs
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self.client.create_run(exp_id, run_name=run_name, tags={"segzoo.run_dir": str(run_dir)})
            run_id = run.info.run_id
        self.run_id = run_id

    @staticmethod
    def _key(k: str) -> str:
        return _MLFLOW_KEY.sub("_", k)[:250]

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(self._key(k), json.dumps(v) if not isinstance(v, str) else v)
                 for k, v in params.items()]
        existing = self.client.get_run(self.run_id).data.params
        items = [p for p in items if p.key not in existing]  # a resumed run has them (and MLflow refuses changes)
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=[Param(p.key, p.value[:6000]) for p in items[i:i + 100]])

    def log(self, record: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        prefix, step = record.get("type", "train"), int(record.get("step", 0))
        now = int(time.time() * 1000)
        metrics = [Metric(self._key(f"{prefix}/{k}"), v, now, step) for k, v in scalars(record).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_artifact(self, path: Path, kind: str) -> None:
        self.client.log_artifact(self.run_id, str(path), kind)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


class WandbTracker(Tracker):
    """One W&B run, offline by default."""

    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, project: str, mode: str, run_id: str | None = None) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), mode=mode, id=run_id,
                              resume="allow" if run_id else None, reinit="create_new",
                              settings=wandb.Settings(console="off", silent=True))
        self.run_id = self.run.id
        self.step = 0

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.run.config.update(dict(params), allow_val_change=True)

    def log(self, record: Mapping[str, Any]) -> None:
        prefix = record.get("type", "train")
        self.step = max(self.step, int(record.get("step", 0)))
        values = {f"{prefix}/{k}": v for k, v in scalars(record).items()}
        if values:
            self.run.log(values, step=self.step)

    def log_artifact(self, path: Path, kind: str) -> None:
        if kind == "pictures":
            self.run.log({"pictures": self.wandb.Image(str(path))}, step=self.step)
            return
        name = re.sub(r"[^0-9A-Za-z_.-]", "-", f"{self.run.name or self.run_id}-{path.stem}")
        artifact = self.wandb.Artifact(name, type="model")
        artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code={"FINISHED": 0, "KILLED": 130}.get(status, 1))


def check_installed(loggers: tuple[str, ...]) -> None:
    """Raise an ImportError naming the extra to install for each tracker of ``loggers`` that is missing."""
    for name in loggers:
        if name in EXTRAS and importlib.util.find_spec(EXTRAS[name][0]) is None:
            module, extra = EXTRAS[name]
            raise ImportError(f"train.loggers has {name} but {module} is not installed; pip install '{extra}' "
                              f"(or remove {name} from train.loggers)")


def build_trackers(loggers: tuple[str, ...], run_dir: Path, run_name: str, resume: bool, *,
                   tracking_uri: str | None = None, experiment: str = "segzoo",
                   wandb_mode: str = "offline") -> list[Tracker]:
    """The trackers ``loggers`` names (``jsonl`` and ``tensorboard`` belong to the run log itself).

    With ``resume`` the runs recorded in ``tracking.json`` continue; the ids of the runs are written there.
    """
    check_installed(loggers)
    ids_file = run_dir / TRACKING_FILE
    ids = json.loads(ids_file.read_text()) if resume and ids_file.is_file() else {}
    trackers: list[Tracker] = []
    try:
        for name in loggers:
            if name == "mlflow":
                trackers.append(MLflowTracker(run_dir, run_name, tracking_uri, experiment, ids.get("mlflow")))
            elif name == "wandb":
                trackers.append(WandbTracker(run_dir, run_name, experiment, wandb_mode, ids.get("wandb")))
    except Exception:
        for t in trackers:
            t.close("FAILED")
        raise
    if trackers:
        atomic_write(ids_file, json.dumps({t.name: t.run_id for t in trackers}, indent=2).encode())
    return trackers
