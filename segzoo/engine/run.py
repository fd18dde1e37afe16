"""Build everything a config describes (model, datasets, checks) and train: what tools/train.py calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segzoo.data import build_dataset, check_dataset
from segzoo.engine.distributed import init_distributed, world_info
from segzoo.engine.trainer import Trainer, select_device


def build_model(cfg: dict):
    """``segzoo.build(model.name, **other model keys)``, seeded with ``train.seed``."""
    from segzoo.registry import build

    kwargs = {k: v for k, v in cfg["model"].items() if k != "name"}
    torch.manual_seed(int(cfg["train"]["seed"]))
    return build(cfg["model"]["name"], **kwargs)


def has_val(cfg: dict) -> bool:
    return cfg["data"]["type"] == "shapes" or bool(cfg["data"].get("val"))


def build_datasets(cfg: dict, task: str):
    """``(train_set, val_set or None)`` with the task's transform presets."""
    train_set = build_dataset(cfg["data"], "train", task)
    val_set = build_dataset(cfg["data"], "val", task) if has_val(cfg) else None
    return train_set, val_set


def check_data(cfg: dict, num_classes: int, task: str, print_fn=print) -> list:
    """Run the data checks on the train (and val) splits; returns the reports."""
    reports = []
    for split in ("train", "val") if has_val(cfg) else ("train",):
        ds = build_dataset(cfg["data"], split, task, with_transforms=False)
        report = check_dataset(ds, num_classes, name=split, ignore_index=int(cfg["data"]["ignore_index"]),
                               allow_empty=bool(cfg["data"]["allow_empty"]))
        if print_fn is not None:
            print_fn(report.format())
        reports.append(report)
    return reports


def train_from_config(cfg: dict, out_dir: str | Path | None = None, resume: bool = False,
                      on_step=None) -> dict[str, Any]:
    """Train the model a resolved config describes; returns the final metrics.

    The data checks run first (when ``data.check``) and training refuses data with errors.
    Under torchrun the process group is started here.
    """
    rank, _, local_rank = world_info()
    init_distributed(select_device(cfg["train"]["device"], local_rank))
    rank, _, _ = world_info()
    out_dir = Path(out_dir or Path("runs") / cfg.get("_name_", "train"))
    model = build_model(cfg)
    task = model.spec.task
    # every rank builds and checks the data itself (Shapes generation is safe to run
    # concurrently), so a data error stops all ranks instead of leaving some in a barrier
    if cfg["data"]["check"]:
        for report in check_data(cfg, model.spec.num_classes, task, print if rank == 0 else None):
            report.raise_if_errors()
    train_set, val_set = build_datasets(cfg, task)
    classes = getattr(train_set, "classes", None)
    trainer = Trainer(model, train_set, val_set, cfg, out_dir, classes=classes, on_step=on_step)
    return trainer.fit(resume=resume)
