"""Run folders that never lose a run: an exclusive lock, and no silent reuse of a folder that holds one.

A run folder holds ``model.safetensors`` (latest weights), ``train_state.pt`` (optimizer,
scheduler, step, RNG), ``best.safetensors``, ``ema.safetensors`` (with ``train.ema``), ``log.jsonl``, ``metrics.json``,
``predictions.png``, ``config.yaml`` and ``tensorboard/``. One training at a time may use a
folder (``fcntl.flock`` on ``.segzoo.lock``, which records the holder's pid), and a folder that
already holds a run is continued (``--resume``), replaced only when asked (``--overwrite``),
or refused with the three ways on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders are still never reused silently
    fcntl = None

WEIGHTS_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
BEST_FILE = "best.safetensors"
EMA_FILE = "ema.safetensors"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
PICTURE_FILE = "predictions.png"
CONFIG_FILE = "config.yaml"
TENSORBOARD_DIR = "tensorboard"
LOCK_FILE = ".segzoo.lock"
TRACKING_FILE = "tracking.json"  # the MLflow / W&B run ids of a run (segzoo.engine.trackers)
RUN_FILES = (WEIGHTS_FILE, STATE_FILE, BEST_FILE, EMA_FILE, LOG_FILE, METRICS_FILE, PICTURE_FILE, CONFIG_FILE,
             TRACKING_FILE)


class RunFolderError(RuntimeError):
    """A run folder that this training may not use as asked; the message says what to do instead."""


class RunFolder:
    """The folder of one training run.

    Args:
        path: the folder (created on :meth:`lock` when missing).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def lock(self) -> RunFolder:
        """Take the folder for this process, or raise naming the pid of the training that holds it."""
        if self._fd is not None:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunFolderError(f"{self.path} is in use by another training (pid {holder}); wait for it to end "
                                     "or train into another folder with --out DIR") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def run_files(self) -> list[str]:
        """The files of a run present in the folder (none for a new or empty folder)."""
        found = [name for name in RUN_FILES if (self.path / name).is_file()]
        if (self.path / TENSORBOARD_DIR).is_dir():
            found.append(TENSORBOARD_DIR + "/")
        return found

    def check(self, resume: bool = False, overwrite: bool = False) -> None:
        """Raise unless the folder can be used as asked (nothing is changed).

        Without ``resume`` or ``overwrite`` the folder must not hold a run; with ``resume`` it
        must hold a checkpoint (weights and training state).
        """
        if resume and overwrite:
            raise RunFolderError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
        if resume:
            missing = [n for n in (WEIGHTS_FILE, STATE_FILE) if not (self.path / n).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"cannot resume: {' and '.join(str(self.path / n) for n in missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} missing; start without --resume or pass the run "
                    "folder with --out")
            return
        found = self.run_files()
        if found and not overwrite:
            kind = "a finished run" if METRICS_FILE in found else "a partial run"
            raise RunFolderError(
                f"{self.path} already holds {kind} ({', '.join(found)}); continue it with --resume, train into "
                "a new folder with --out DIR, or replace it with --overwrite")

    def prepare(self, resume: bool = False, overwrite: bool = False) -> None:
        """:meth:`check`, then with ``overwrite`` delete the previous run's files (others are kept)."""
        self.check(resume, overwrite)
        if overwrite:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / TENSORBOARD_DIR, ignore_errors=True)
        if self.path.is_dir():
            for name in (WEIGHTS_FILE, STATE_FILE, BEST_FILE, EMA_FILE, METRICS_FILE, CONFIG_FILE, LOG_FILE):
                for stale in self.path.glob(f".{name}.*.tmp"):  # temporaries of a save that was killed
                    stale.unlink(missing_ok=True)

    def __enter__(self) -> RunFolder:
        return self.lock()

    def __exit__(self, *exc) -> None:
        self.unlock()

    def __del__(self) -> None:
        self.unlock()
