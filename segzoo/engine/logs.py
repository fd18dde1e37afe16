"""The run log: ``log.jsonl`` (one JSON record a line), TensorBoard when it is installed, and the
experiment trackers of ``train.loggers`` (:mod:`segzoo.engine.trackers`).

Records have a ``type`` (``train``: one per optimizer step; ``eval``; ``precise_bn``; ``early_stop``;
``error``) and a ``step``. A resumed run first cuts the log back to its checkpoint, so the
steps it runs again are logged once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from segzoo.checkpoint import atomic_write
from segzoo.engine.trackers import Tracker


def jsonable(v: Any) -> Any:
    """``v`` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    return v


def truncate_log(path: Path, step: int, closed: bool) -> int:
    """Keep the records of steps up to ``step`` (the checkpoint's); returns how many were dropped.

    Records of ``step`` itself other than its ``train`` record (evaluation, early stop) are kept
    only when ``closed`` (the checkpoint was written after them); a line cut off by a kill is dropped.
    """
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        s = record.get("step")
        if s is None or s < step or (s == step and (record.get("type") == "train" or closed)):
            kept.append(line if line.endswith("\n") else line + "\n")
    if len(kept) != len(lines):
        atomic_write(path, "".join(kept).encode())
    return len(lines) - len(kept)


class RunLog:
    """Appends records to ``log.jsonl`` (and TensorBoard scalars) in a run folder.

    Args:
        path: the ``log.jsonl`` file.
        tensorboard: also write TensorBoard events beside it (when installed).
        resume_step: continue an existing log from this checkpoint step (None: start a new log).
        closed: whether the checkpoint at ``resume_step`` was written after its evaluation.
        trackers: MLflow / W&B runs that receive every record too (closed with the log).
    """

    def __init__(self, path: str | Path, tensorboard: bool = False, resume_step: int | None = None,
                 closed: bool = True, trackers: list[Tracker] | None = None) -> None:
        path = Path(path)
        self.trackers = list(trackers or [])
        if resume_step is not None and path.is_file():
            truncate_log(path, resume_step, closed)
        self._file = open(path, "a" if resume_step is not None else "w", encoding="utf-8")  # noqa: SIM115
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            purge = None if resume_step is None else resume_step + 1  # drop events of steps run again
            self._tb = SummaryWriter(str(path.parent / "tensorboard"), purge_step=purge)

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(jsonable(record)) + "\n")
        self._file.flush()
        if self._tb is not None:
            prefix = record.get("type", "train")
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{prefix}/{k}", v, record.get("step", 0))
        for t in self.trackers:
            t.log(record)

    def log_params(self, params: dict[str, Any]) -> None:
        """The run's parameters (flattened config) to the trackers."""
        for t in self.trackers:
            t.log_params(params)

    def log_artifact(self, path: Path, kind: str) -> None:
        """A file of the run folder (``pictures`` or ``checkpoint``) to the trackers."""
        if Path(path).is_file():
            for t in self.trackers:
                t.log_artifact(Path(path), kind)

    def close(self, status: str = "FINISHED") -> None:
        """Close the log and the trackers' runs (``status``: FINISHED, KILLED or FAILED)."""
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.close(status)
        self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
