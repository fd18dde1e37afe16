"""Build everything a config describes (model, datasets, checks) and train: what ``segzoo train`` calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from segzoo.config import RunConfig
from segzoo.data import DataError, build_dataset, check_dataset
from segzoo.data.targets import for_task
from segzoo.data.transforms import pop_dropped
from segzoo.engine.device import select_device
from segzoo.engine.distributed import init_distributed, run_on_main, world_info
from segzoo.engine.evaluator import check_task_data, primary_metric, protocol_kwargs
from segzoo.engine.run_folder import RunFolder
from segzoo.engine.trainer import Trainer
from segzoo.registry import build


def build_model(cfg: RunConfig):
    """``segzoo.build(model.name, **other model keys)``, seeded with ``train.seed``."""
    kwargs = {k: v for k, v in cfg.model.items() if k != "name"}
    torch.manual_seed(cfg.train.seed)
    return build(cfg.model["name"], **kwargs)


def has_val(cfg: RunConfig) -> bool:
    return cfg.data.type in ("shapes", "shapes_panoptic") or bool(cfg.data.val)


def build_split(cfg: RunConfig, split: str, task: str, train: bool | None = None, with_transforms: bool = True):
    """The dataset of one split (``"train"`` or ``"val"``) with the task's transform preset."""
    return build_dataset(cfg.data, split, for_task(task), train=train, with_transforms=with_transforms)


def build_datasets(cfg: RunConfig, task: str):
    """``(train_set, val_set or None)`` with the task's transform presets."""
    train_set = build_split(cfg, "train", task)
    val_set = build_split(cfg, "val", task) if has_val(cfg) else None
    return train_set, val_set


def check_data(cfg: RunConfig, num_classes: int, task: str, print_fn=print) -> list:
    """Run the data checks on the train (and val) splits; returns the reports."""
    reports = []
    for split in ("train", "val") if has_val(cfg) else ("train",):
        ds = build_split(cfg, split, task, with_transforms=False)
        report = check_dataset(ds, num_classes, name=split, ignore_index=cfg.data.ignore_index,
                               allow_empty=cfg.data.allow_empty)
        if print_fn is not None:
            print_fn(report.format())
        reports.append(report)
    return reports


def check_augmentation(cfg: RunConfig, train_set, samples: int = 8) -> None:
    """Refuse augmentation settings that remove every box: the training transforms are run on up to
    ``samples`` images with objects (the random state is restored) and must keep at least one."""
    dropped = kept = 0
    with torch.random.fork_rng():
        for i in torch.linspace(0, len(train_set) - 1, min(samples, len(train_set))).long().tolist():
            target = train_set[i][1]
            d, k, _ = pop_dropped([dict(target)] if isinstance(target, dict) else None)
            dropped, kept = dropped + d, kept + k
    if dropped and not kept:
        aug = cfg.data.augment
        raise DataError(f"the training augmentation removes every target: in {min(samples, len(train_set))} training "
                        f"images it dropped all {dropped} boxes (data.augment.min_box_size={aug.min_box_size}, "
                        f"size={aug.size}, scale={list(aug.scale)}); lower data.augment.min_box_size or raise "
                        "data.augment.size so that objects survive the crop")


def default_out_dir(cfg: RunConfig) -> Path:
    """``runs/<config name>``."""
    return Path("runs") / (cfg.name or "train")


def train_from_config(cfg: RunConfig, out_dir: str | Path | None = None, resume: bool = False,
                      overwrite: bool = False, on_step=None) -> dict[str, Any]:
    """Train the model a config describes; returns the final metrics.

    Everything that can be checked is checked before any work: the run folder (in use by
    another training, or holding a run without ``resume``/``overwrite``), the model, the
    ``eval.metric`` name, then the data checks (when ``data.check``; training refuses data
    with errors). Under torchrun the process group is started here.
    """
    _, _, local_rank = world_info()
    init_distributed(select_device(cfg.train.device, local_rank))
    rank, _, _ = world_info()
    folder = RunFolder(out_dir or default_out_dir(cfg))

    def claim() -> None:
        if folder.path.is_dir():  # a new folder is created (and locked) only once training starts
            folder.lock()
        folder.check(resume, overwrite)

    try:
        run_on_main(claim)
        model = build_model(cfg)
        task = model.task
        primary_metric(task, cfg.eval.metric)
        protocol_kwargs(cfg.eval, task)
        # every rank builds and checks the data itself (Shapes generation is safe to run
        # concurrently), so a data error stops all ranks instead of leaving some in a barrier
        if cfg.data.check:
            for report in check_data(cfg, model.spec.num_classes, task, print if rank == 0 else None):
                report.raise_if_errors()
        train_set, val_set = build_datasets(cfg, task)
        if len(train_set):
            check_task_data(task, train_set[0][1], cfg.model["name"])
            check_augmentation(cfg, train_set)
        classes = getattr(train_set, "classes", None)
        trainer = Trainer(model, train_set, val_set, cfg, folder.path, classes=classes, on_step=on_step)
        return trainer.fit(resume=resume, overwrite=overwrite, folder=folder)
    finally:
        folder.unlock()
