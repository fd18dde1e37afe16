"""Stopping a training cleanly on SIGINT (Ctrl-C) and SIGTERM (cluster preemption).

While :class:`StopOnSignal` is active the first SIGINT or SIGTERM only records the request; the
trainer finishes its current optimizer step, writes a checkpoint and raises
:class:`TrainingInterrupted`, whose ``exit_code`` (130 or 143) the CLI returns. A second signal
stops at once, as it would without the handler.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped on a signal after writing a checkpoint; ``--resume`` continues it exactly."""

    def __init__(self, signum: int, step: int, checkpoint: str) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} after step {step}; the checkpoint {checkpoint} is complete: continue "
                         "with the same command and --resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopOnSignal:
    """Records the first SIGINT/SIGTERM (``signum``) instead of dying; restores the handlers on exit.

    Only the main thread can install handlers; elsewhere this does nothing.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # a second signal: stop now, as without this handler
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current step and writing a checkpoint "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
