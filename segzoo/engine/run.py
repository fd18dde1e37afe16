"""What ``segzoo train`` calls: claim the run folder, build the model and data a config describes
(:mod:`segzoo.engine.build`, which checks everything once), then loop (:class:`~segzoo.engine.trainer.Trainer`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segzoo.config import RunConfig
from segzoo.engine.build import (
    build_datasets,
    build_model,
    build_parts,
    check_data,
    check_run,
    check_train_data,
    start_device,
)
from segzoo.engine.distributed import run_on_main, world_info
from segzoo.engine.run_folder import RunFolder
from segzoo.engine.trainer import Trainer


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
    device = start_device(cfg)
    rank, _, _ = world_info()
    folder = RunFolder(out_dir or default_out_dir(cfg))

    def claim() -> None:
        if folder.path.is_dir():  # a new folder is created (and locked) only once training starts
            folder.lock()
        folder.check(resume, overwrite)

    try:
        run_on_main(claim)
        model = build_model(cfg)
        checked = check_run(cfg, model)
        # every rank builds and checks the data itself (Shapes generation is safe to run
        # concurrently), so a data error stops all ranks instead of leaving some in a barrier
        if cfg.data.check:
            for report in check_data(cfg, model.spec.num_classes, model, print if rank == 0 else None):
                report.raise_if_errors()
        train_set, val_set = build_datasets(cfg, model)
        check_train_data(cfg, model, train_set)
        classes = getattr(train_set, "classes", None)
        parts = build_parts(cfg, model, train_set, val_set, folder.path, classes, device=device, checked=checked)
        return Trainer(parts, on_step=on_step).fit(resume=resume, overwrite=overwrite, folder=folder)
    finally:
        folder.unlock()
