"""One training loop for every task: the :class:`Trainer` receives built objects (:class:`TrainParts`,
from :mod:`segzoo.engine.build`) and loops.

The loop reads only ``model.task`` and the forward contract (``model(images, targets)``
returns a loss dict with ``loss``; ``model(images)`` returns predictions), never a model's
name. It runs gradient accumulation (``no_sync`` under DDP), AMP autocast with the GradScaler,
gradient clipping, NaN/inf detection (one host sync per optimizer step, on the already-reduced
losses), the schedule and EMA steps, atomic checkpoints with exact resume, clean stops on
SIGINT/SIGTERM, precise BatchNorm statistics before evaluation (``train.precise_bn``), per-epoch
evaluation (:func:`segzoo.engine.evaluate`), best-checkpoint keeping,
early stopping, tqdm progress and the run log. Building is :mod:`segzoo.engine.build`'s job:
device, DDP (and SyncBatchNorm), channels_last, ``torch.compile``, frozen backbones, parameter
groups, warmup + poly/cosine/step schedules, the EMA (``train.ema``), trackers.

Run folder (:mod:`segzoo.engine.run_folder`): ``model.safetensors`` (latest weights, spec in
the header), ``train_state.pt`` (optimizer, scheduler, scaler, step, RNG, elapsed time, last
evaluation), ``best.safetensors``, ``ema.safetensors`` (the averaged weights, with
``train.ema``: they are what is evaluated and kept as best), ``log.jsonl``, ``metrics.json``,
``predictions.png``, ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segzoo.checkpoint import atomic_write, save_state_dict
from segzoo.config import RunConfig
from segzoo.data.transforms import pop_dropped
from segzoo.engine.checkpointer import Checkpointer
from segzoo.engine.device import autocast, to_device
from segzoo.engine.distributed import EpochLoader, all_reduce_mean, barrier, run_on_main, world_info
from segzoo.engine.ema import ModelEma
from segzoo.engine.evaluator import evaluate, save_predictions_png
from segzoo.engine.logs import RunLog, jsonable
from segzoo.engine.precise_bn import update_bn_stats
from segzoo.engine.run_folder import (
    BEST_FILE,
    EMA_FILE,
    METRICS_FILE,
    PICTURE_FILE,
    STATE_FILE,
    WEIGHTS_FILE,
    RunFolder,
)
from segzoo.engine.signals import StopOnSignal, TrainingInterrupted
from segzoo.tasks import get_task
from segzoo.version import __version__

__all__ = ["BEST_FILE", "EMA_FILE", "STATE_FILE", "WEIGHTS_FILE", "NonFiniteLossError", "StepPlan", "TrainParts",
           "Trainer", "TrainingInterrupted"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the message names the step and the last good checkpoint."""


@dataclass(frozen=True)
class StepPlan:
    """How long a run is, in optimizer steps (one step: ``data.batch_size x processes x train.grad_accum`` images)."""

    steps_per_epoch: int
    total_steps: int
    milestones: tuple[int, ...]  # train.milestones in steps (the step schedule's)


@dataclass(frozen=True)
class TrainParts:
    """What the Trainer loops over, built by :func:`segzoo.engine.build.build_parts`."""

    cfg: RunConfig
    model: nn.Module  # the segzoo model on its device: what is saved (and evaluated without an EMA)
    net: nn.Module  # what the steps call: the model, or its DDP and/or torch.compile wrapper
    ddp: nn.parallel.DistributedDataParallel | None
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # stepped once per optimizer step
    scaler: torch.amp.GradScaler  # enabled with fp16 autocast only
    loader: EpochLoader  # the training batches of each epoch
    val_set: Any  # evaluated every eval.every epochs; None: no evaluation
    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype; None: full precision
    plan: StepPlan
    metric_name: str  # the metric that picks the best checkpoint
    eval_protocol: dict[str, Any]  # evaluate()'s protocol arguments (eval.mode, crop, scales...)
    classes: list[str] | None  # class names for checkpoints and pictures
    out_dir: Path  # the run folder
    open_log: Callable[[bool, int, bool], RunLog]  # (resume, step, closed) -> the run log, on the main process


class Trainer:
    """Train the built parts of a run with the loop described in the module docstring.

    :func:`segzoo.engine.build.build_trainer` (a model, datasets and a config) and
    :func:`segzoo.engine.train_from_config` (a config) build the parts and make the Trainer.

    Args:
        parts: the built model, data, optimizer, schedule, EMA and run log.
        on_step: called as ``on_step(trainer)`` after every optimizer step (and checkpoint).

    Determinism: ``train.seed`` seeds the model initialisation, the data order and
    augmentation (every loader worker) and dropout, so two CPU runs with the same config
    give bit-identical weights (tests/engine/test_determinism.py). On CUDA they differ
    in the last bits: the backward passes of ``roi_align`` (Mask R-CNN), ``deform_conv2d``
    (CenterNet DCN), bilinear ``F.interpolate`` (every semantic model) and
    ``scatter``/``index_add`` accumulate with atomic adds in a varying order, and some cuDNN
    convolution algorithms are non-deterministic. ``torch.use_deterministic_algorithms(True)``
    (with the environment variable ``CUBLAS_WORKSPACE_CONFIG=:4096:8``) before training
    makes every op that has a deterministic implementation use it and raises for the others
    (``roi_align`` and bilinear upsampling backward among them, and CUDA ``NLLLoss``, so every
    semantic model's cross-entropy); pass ``warn_only=True`` to train anyway. tests/engine/test_cuda.py
    checks that two CenterNet-ResNet18 runs in this mode end with identical weights.
    Deterministic runs are slower.
    """

    def __init__(self, parts: TrainParts, on_step: Callable[[Trainer], None] | None = None) -> None:
        self.parts = parts
        self.cfg = parts.cfg
        self.tc, self.dc, self.ec = self.cfg.train, self.cfg.data, self.cfg.eval
        self.model, self.net, self.ddp, self.ema = parts.model, parts.net, parts.ddp, parts.ema
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.loader, self.train_set, self.val_set = parts.loader, parts.loader.dataset, parts.val_set
        self.device, self.amp_dtype = parts.device, parts.amp_dtype
        self.steps_per_epoch, self.total_steps = parts.plan.steps_per_epoch, parts.plan.total_steps
        self.batch_size, self.accum = self.dc.batch_size, self.tc.grad_accum
        self.task, self.num_classes = self.model.task, self.model.spec.num_classes
        self.task_def = get_task(self.model)  # the task object: metric names, summary line, pictures
        self.metric_name, self.eval_protocol = parts.metric_name, parts.eval_protocol
        self.classes, self.out_dir = parts.classes, parts.out_dir
        self.checkpointer = Checkpointer(parts.out_dir)
        self.rank, self.world_size, _ = world_info()
        self.on_step = on_step

        self.step = 0
        self.best: float | None = None
        self.best_step = -1
        self.bad_evals = 0
        self.closed_step = 0  # last step whose end-of-epoch work (evaluation, checkpoint) is done
        self.saved_step = -1
        self.last_eval: dict[str, Any] = {}
        self.seconds_before = 0.0  # training time of the run before this process resumed it
        self.saved_seconds = 0.0  # training time at the last checkpoint
        self._start = time.perf_counter()
        self._log: RunLog | None = None
        self._signals = StopOnSignal()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def seconds(self) -> float:
        """Training time of the whole run so far, time before a resume included."""
        return self.seconds_before + time.perf_counter() - self._start

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and kept as best: the EMA when ``train.ema`` is on."""
        return self.ema.module if self.ema is not None else self.model

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to ``log.jsonl`` (and TensorBoard) on the main process."""
        if self._log is not None:
            self._log.write(record)

    # ------------------------------------------------------------------ checkpoints
    def _metadata(self) -> dict[str, str]:
        return {"segzoo": __version__, "spec": self.model.spec.to_json(), "classes": json.dumps(self.classes),
                "step": str(self.step)}

    def save_checkpoint(self) -> None:
        """Write the weights and the training state (atomically) on the main process."""
        if self.saved_step != self.step:
            self.saved_seconds = self.seconds
        if self.is_main and self.saved_step != self.step:
            state = {
                "step": self.step, "total_steps": self.total_steps, "world_size": self.world_size,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
                "best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals,
                "closed_step": self.closed_step, "train_seconds": self.saved_seconds, "last_eval": self.last_eval,
                "ema_updates": self.ema.updates if self.ema is not None else None,
            }
            ema = self.ema.state_dict() if self.ema is not None else None
            self.checkpointer.save(self.model.state_dict(), ema, state, self._metadata())
        self.saved_step = self.step
        barrier()

    def load_checkpoint(self) -> None:
        """Continue from the run folder's ``model.safetensors`` and ``train_state.pt``."""
        weights, ema, state = self.checkpointer.load(self.world_size, self.total_steps, ema=self.ema is not None)
        if self.ema is not None:
            self.ema.load_state_dict(ema, state["ema_updates"])
        self.model.load_state_dict(weights, strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.saved_step = state["step"], state["step"]
        self.best, self.best_step = state["best"], state["best_step"]
        self.bad_evals, self.closed_step = state["bad_evals"], state["closed_step"]
        self.seconds_before = self.saved_seconds = float(state.get("train_seconds", 0.0))
        self.last_eval = state.get("last_eval", {})
        for m in {id(self.model): self.model, id(self.eval_model): self.eval_model}.values():
            self.task_def.tune(m, self.last_eval)  # binary: the threshold of the last validation again

    # ------------------------------------------------------------------ loop
    def _non_finite(self, losses: dict[str, float], epoch: int) -> None:
        parts = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        if self.saved_step >= 0 and self.checkpointer.weights_path.exists():
            kept = f"the last good checkpoint is {self.checkpointer.weights_path} (step {self.saved_step})"
        else:
            kept = "no checkpoint had been written yet"
        msg = (f"the loss is not finite at step {self.step + 1} (epoch {epoch + 1}): {parts}; training stopped "
               f"and {kept}. Lower train.lr, set train.clip_grad (e.g. 1.0) or train.amp=off, check the data "
               "with `segzoo data check CONFIG`, then continue with --resume")
        self.log({"type": "error", "step": self.step + 1, "message": msg})
        raise NonFiniteLossError(msg)

    def train_step(self, batches: list, epoch: int) -> tuple[dict[str, float], bool]:
        """One optimizer step over ``grad_accum`` micro-batches.

        The losses are averaged over micro-batches and processes and read back once (the one
        host sync of the step), together with the processes' stop requests; a non-finite loss
        stops training before the optimizer applies the step.

        Returns:
            The mean losses (and ``grad_norm`` when clipping), and whether a process received
            SIGINT/SIGTERM.
        """
        totals: dict[str, torch.Tensor] = {}
        self.task_def.before_step(self.model, self.step, self.total_steps)  # EoMT: its mask annealing
        for i, (images, targets) in enumerate(batches):
            images, targets = to_device(images, targets, self.device, self.tc.channels_last)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    losses = self.net(images, targets)
                self.scaler.scale(losses["loss"] / len(batches)).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / len(batches)
        grad_norm = None
        if self.tc.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.tc.clip_grad)
        keys = sorted(totals)
        stop = torch.tensor([float(self._signals.signum is not None)], device=self.device)
        vec = all_reduce_mean(torch.cat([torch.stack([totals[k] for k in keys]), stop]))
        if grad_norm is not None:
            vec = torch.cat([vec, grad_norm.detach().float().reshape(1)])
        values = vec.tolist()  # the one device-to-host sync of the step
        out = dict(zip(keys, values))
        if not all(math.isfinite(v) for v in out.values()):
            self._non_finite(out, epoch)
        if grad_norm is not None:
            out["grad_norm"] = values[-1]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        if self.ema is not None and self.step % self.tc.ema_every == 0:
            self.ema.update(self.model)
        return out, values[len(keys)] > 0

    def run_eval(self) -> dict[str, Any]:
        """Evaluate :attr:`eval_model` on the validation set with :func:`segzoo.engine.evaluate` (all ranks;
        results reduced)."""
        return evaluate(self.eval_model, self.val_set, batch_size=self.dc.val_batch_size or self.batch_size,
                        num_workers=self.dc.num_workers, amp_dtype=self.amp_dtype,
                        channels_last=self.tc.channels_last, max_images=self.ec.max_images,
                        class_names=self.classes, ignore_index=self.dc.ignore_index, **self.eval_protocol)

    def _precise_bn_batches(self, epoch: int):
        """Training batches from ``epoch`` on, through a copy of the loader and its sampler (the loop's are left as
        they are; items are seeded by (seed, epoch, index), so drawing them consumes no random state)."""
        loader = copy.copy(self.loader)
        loader.sampler = copy.copy(self.loader.sampler)
        while True:
            empty = True
            for images, targets in loader.epoch(epoch):
                empty = False
                pop_dropped(targets)
                yield images, targets
            if empty:
                return
            epoch += 1

    def _precise_bn_forward(self, model: nn.Module, batch) -> None:
        images, targets = to_device(*batch, self.device, self.tc.channels_last)
        with autocast(self.device, self.amp_dtype):
            model(images, targets)

    def precise_bn(self, epoch: int) -> None:
        """``train.precise_bn``: recompute the BatchNorm statistics of the model (and of its EMA) over that many
        training batches (:func:`segzoo.engine.precise_bn.update_bn_stats`), before they are evaluated or saved."""
        n = self.tc.precise_bn
        if not n:
            return
        t0 = time.perf_counter()
        used = 0
        for m in {id(self.model): self.model, id(self.eval_model): self.eval_model}.values():
            batches = self._precise_bn_batches(epoch)
            try:
                used = update_bn_stats(m, batches, n, self._precise_bn_forward)
            finally:
                batches.close()  # the loader's iterator (and its workers) go now, not when collected
        self.log({"type": "precise_bn", "step": self.step, "batches": used,
                  "seconds": round(time.perf_counter() - t0, 3)})

    def _report_dropped(self, epoch: int, dropped: int, kept: int, emptied: int, pbar) -> None:
        """Log and print what the training transforms removed in an epoch (this process's batches)."""
        if not dropped:
            return
        self.log({"type": "dropped", "step": self.step, "epoch": epoch + 1, "boxes_dropped": dropped,
                  "boxes_kept": kept, "images_emptied": emptied})
        if self.is_main:
            emptied_text = (f"; {emptied} images were left with no target although they had some (they train as "
                            "background)" if emptied else "")
            (pbar.write if pbar is not None else print)(
                f"warning: epoch {epoch + 1}: the augmentation dropped {dropped} of {dropped + kept} boxes (cropped "
                f"away, or smaller than data.augment.min_box_size={self.cfg.data.augment.min_box_size}){emptied_text}")

    def _end_of_epoch(self, epoch: int, pbar) -> bool:
        """Evaluate, keep the best checkpoint, save; returns True when early stopping fires."""
        finished = self.step >= self.total_steps
        every = self.ec.every
        stop = evaluated = False
        evaluating = self.val_set is not None and ((every and (epoch + 1) % every == 0) or finished)
        if evaluating or finished:
            self.precise_bn(epoch)  # the statistics of the weights that are evaluated, kept as best and saved last
        if evaluating:
            evaluated = True
            results = self.run_eval()["metrics"]
            for m in {id(self.model): self.model, id(self.eval_model): self.eval_model}.values():
                self.task_def.tune(m, results)  # binary: the F1-best threshold into the spec (and checkpoints)
            value = results[self.metric_name]
            value = float(value) if math.isfinite(float(value)) else -math.inf
            improved = self.best is None or value > self.best
            if improved:
                self.best, self.best_step, self.bad_evals = value, self.step, 0
                if self.is_main:
                    save_state_dict(self.eval_model.state_dict(), self.out_dir / BEST_FILE, self._metadata())
            else:
                self.bad_evals += 1
            self.last_eval = results
            self.log({"type": "eval", "step": self.step, "epoch": epoch + 1, **results,
                      "best": self.best, "best_step": self.best_step})
            if self.is_main:
                shown = self.task_def.summary_line(results, self.metric_name)
                (pbar.write if pbar is not None else print)(f"[eval] epoch {epoch + 1} step {self.step}: {shown}")
            patience = self.tc.early_stop_patience
            if patience and self.bad_evals >= patience and not finished:
                stop = True
                self.log({"type": "early_stop", "step": self.step, "epoch": epoch + 1, "best": self.best,
                          "best_step": self.best_step})
        self.closed_step = self.step
        # train.checkpoint_every > 0 sets the checkpoint interval: an epoch end then saves only after an
        # evaluation or at the end (a 12-image dataset would otherwise write the full state every 3 steps)
        if not self.tc.checkpoint_every or evaluated or finished or stop:
            self.save_checkpoint()
        return stop

    def _stop_requested(self) -> bool:
        """Whether any process received SIGINT/SIGTERM (a collective call under DDP)."""
        flag = torch.tensor([float(self._signals.signum is not None)], device=self.device)
        return bool(all_reduce_mean(flag).item() > 0)

    def _interrupt(self) -> None:
        self.save_checkpoint()
        raise TrainingInterrupted(self._signals.signum or 15, self.step, str(self.checkpointer.weights_path))

    def fit(self, resume: bool = False, overwrite: bool = False, folder: RunFolder | None = None) -> dict[str, Any]:
        """Train to the end (or early stop) and return the final metrics (also in ``metrics.json``).

        Args:
            resume: continue the run in the folder from its checkpoint (a finished run is kept).
            overwrite: replace a run already in the folder (without it, such a folder is refused).
            folder: the locked :class:`RunFolder` when the caller took it already.

        Raises:
            RunFolderError: the folder is in use, or holds a run and neither flag is given.
            TrainingInterrupted: SIGINT/SIGTERM arrived; the checkpoint of the last step is written.
        """
        own = folder is None
        folder = folder or RunFolder(self.out_dir)
        status = "FAILED"  # the trackers' run status if no return is reached
        try:
            run_on_main(lambda: (folder.lock(), folder.prepare(resume, overwrite)))
            if resume:
                self.load_checkpoint()
            else:
                torch.manual_seed(self.tc.seed)
                random.seed(self.tc.seed)
            self._start = time.perf_counter()
            if self.is_main:  # config.yaml, log.jsonl (a resumed one cut back to the checkpoint) and the trackers
                self._log = self.parts.open_log(resume, self.step, self.closed_step == self.step)
            with self._signals:
                self._loop()
            metrics = self._finish()
            status = "FINISHED"
            return metrics
        except TrainingInterrupted:
            status = "KILLED"
            raise
        finally:
            if self._log is not None:
                self._log.close(status)
                self._log = None
            if own:
                folder.unlock()

    def _loop(self) -> None:
        pbar = None
        if self.is_main and self.tc.progress:
            from tqdm.auto import tqdm

            pbar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True)
        try:
            spe = self.steps_per_epoch
            stop = False
            if self.step and self.step % spe == 0 and self.closed_step != self.step:
                stop = self._end_of_epoch(self.step // spe - 1, pbar)
            ema = None
            while self.step < self.total_steps and not stop:
                epoch, in_epoch = divmod(self.step, spe)
                self.net.train()
                batches = self.loader.epoch(epoch, skip=in_epoch * self.accum * self.batch_size)
                drops = [0, 0, 0]  # boxes dropped, boxes kept, images left without a box
                for _ in range(in_epoch, spe):
                    if self.step >= self.total_steps:
                        break
                    t0 = time.perf_counter()
                    # the lr this step uses, of a head group (backbone groups sort last and carry backbone_lr_mult)
                    lr = next((g["lr"] for g in self.optimizer.param_groups if g.get("name", "").startswith("head")),
                              self.optimizer.param_groups[-1]["lr"])
                    try:
                        micro = [next(batches) for _ in range(self.accum)]
                    except Exception:
                        if self._signals.signum is not None:  # Ctrl-C also stopped the loader workers
                            self._interrupt()
                        raise
                    for _images, targets in micro:  # what the augmentation removed: reported per epoch
                        drops = [a + b for a, b in zip(drops, pop_dropped(targets))]
                    losses, stop_requested = self.train_step(micro, epoch)
                    dt = time.perf_counter() - t0
                    ips = self.batch_size * self.accum * self.world_size / max(dt, 1e-9)
                    ema = ips if ema is None else 0.9 * ema + 0.1 * ips
                    self.log({"type": "train", "step": self.step, "epoch": epoch + 1, "lr": lr,
                              "images_per_s": round(ips, 2), "time": round(self.seconds, 3), **losses})
                    if pbar is not None:
                        pbar.update(1)
                        pbar.set_postfix(loss=f"{losses['loss']:.4f}", lr=f"{lr:.2e}", img_s=f"{ema:.1f}",
                                         epoch=epoch + 1, refresh=False)
                    if self.tc.checkpoint_every and self.step % self.tc.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self.on_step is not None:
                        self.on_step(self)
                    if stop_requested:
                        self._interrupt()
                self._report_dropped(epoch, *drops, pbar)
                if self.step % spe == 0 or self.step >= self.total_steps:
                    stop = self._end_of_epoch(epoch, pbar)
                if self.step < self.total_steps and not stop and self._stop_requested():
                    self._interrupt()  # the signal came during the evaluation
        finally:
            if pbar is not None:
                pbar.close()

    def _finish(self) -> dict[str, Any]:
        self.save_checkpoint()  # a no-op when this step's checkpoint is written
        # the clock of the whole run stops at its final checkpoint (a finished run resumed adds nothing)
        seconds = self.saved_seconds if self.saved_step == self.step else self.seconds
        metrics = {
            "model": self.model.spec.name, "task": self.task, "step": self.step, "total_steps": self.total_steps,
            "epochs": self.step / self.steps_per_epoch, "metric": self.metric_name, "best": self.best,
            "best_step": self.best_step, "train_seconds": round(seconds, 2), "world_size": self.world_size,
            "evaluated": "ema" if self.ema is not None else "weights", "final": self.last_eval,
        }
        if self.is_main:
            atomic_write(self.out_dir / METRICS_FILE, json.dumps(jsonable(metrics), indent=2).encode())
            data = self.val_set if self.val_set is not None else self.train_set
            if self.ec.num_pictures:
                save_predictions_png(self.eval_model, data, self.out_dir / PICTURE_FILE, self.classes,
                                     self.ec.num_pictures, self.ec.score_threshold, self.dc.ignore_index)
            if self._log is not None:  # the trackers' artifacts: the pictures and the best (else last) weights
                if self.ec.num_pictures:
                    self._log.log_artifact(self.out_dir / PICTURE_FILE, "pictures")
                best = self.out_dir / BEST_FILE
                self._log.log_artifact(best if best.is_file() else self.out_dir / WEIGHTS_FILE, "checkpoint")
        barrier()
        return metrics
