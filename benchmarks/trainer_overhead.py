"""The trainer's cost per step against a bare PyTorch loop, and the loader's rate beside it.

    python -m benchmarks.trainer_overhead                       # unet_resnet18, 128 px, batch 4, 40 steps
    python -m benchmarks.trainer_overhead --model fcn_resnet50 --steps 20 --rounds 2 --threads 1
    python -m benchmarks.trainer_overhead --options --steps 20 --rounds 3   # channels_last / bf16 in training

Both sides train the same model (one initialisation, copied), with the same loss (the model's own
``forward(images, targets)``), the same optimizer type, learning rate and weight decay, on the same
in-memory Shapes items through a loader with ``num_workers: 0``:

- **segzoo**: :func:`segzoo.engine.build_trainer` and ``fit`` (warmup + poly schedule, per-step
  log line, the one host sync per step, signal handling; no evaluation; one checkpoint at the end,
  which is not timed);
- **bare loop**: ``torch.utils.data.DataLoader`` with the task's collate, ``model(images,
  targets)["loss"].backward()``, ``optimizer.step()``, ``zero_grad(set_to_none=True)``, a
  ``LambdaLR`` poly schedule and ``loss.item()`` (what a hand-written loop prints).

A step's time is the interval between two optimizer steps (segzoo: the trainer's ``on_step``
callback), so set-up and the final checkpoint are left out; the first ``--skip`` steps warm up.
Each interval is taken twice: on the wall clock and as the process's CPU time
(``time.process_time``). With one thread and ``num_workers: 0`` every step runs in this process,
so its CPU time is what the step costs, and other processes on a shared machine move it far less
than the wall clock (they take turns on the cores, which the wall clock counts and the CPU time
does not).
Sides alternate ``--rounds`` times in one process and the medians are compared, so both share the
machine's load. Then the loader alone: images/s of segzoo's loader with 0 and 1 workers, beside
the images/s of a training step. ``--options`` instead times segzoo's trainer alone under
``train.channels_last`` and ``train.amp=bf16`` (CPU autocast) beside float32, alternating the same
way, to choose them by measurement. Not part of the test suite: it takes minutes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch


def shapes_items(count: int, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` Shapes images (float in [0, 1]) with their class maps, rendered in memory."""
    from segzoo.data.synthetic.shapes import render

    items = []
    for i in range(count):
        image, labels, _ = render(i, size, seed=0)
        items.append((torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(labels).long()))
    return items


def run_config(steps: int, batch_size: int, lr: float, workers: int = 0, **train) -> dict:
    return {
        "data": {"batch_size": batch_size, "num_workers": workers},
        "train": {"max_steps": steps, "optimizer": "adamw", "lr": lr, "weight_decay": 1e-4, "device": "cpu",
                  "progress": False, "tensorboard": False, "seed": 0, "amp": "off", "checkpoint_every": steps,
                  **train},
    }


OPTIONS = {"float32": {}, "channels_last": {"channels_last": True}, "bf16": {"amp": "bf16"},
           "bf16 + channels_last": {"amp": "bf16", "channels_last": True}}


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _intervals(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, cpu) seconds between consecutive stamps."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]


def segzoo_steps(model, items, steps: int, batch_size: int, lr: float, out: Path, **train
                 ) -> list[tuple[float, float]]:
    from segzoo.engine import build_trainer

    stamps: list[tuple[float, float]] = []
    trainer = build_trainer(model, items, None, run_config(steps, batch_size, lr, **train), out,
                            on_step=lambda _t: stamps.append(_stamp()))
    trainer.fit(overwrite=True)
    return _intervals(stamps)


def bare_steps(model, items, steps: int, batch_size: int, lr: float) -> list[tuple[float, float]]:
    from segzoo.tasks import get_task

    loader = torch.utils.data.DataLoader(items, batch_size=batch_size, shuffle=True, drop_last=True,
                                         collate_fn=get_task(model).collate, num_workers=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (1 - s / steps) ** 0.9)
    model.train()
    stamps: list[tuple[float, float]] = []
    step = 0
    while step < steps:
        for images, targets in loader:
            loss = model(images, targets)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            loss.item()
            stamps.append(_stamp())
            step += 1
            if step == steps:
                break
    return _intervals(stamps)


def loader_rate(model, items, batch_size: int, workers: int, batches: int) -> float:
    """Images/s of segzoo's training loader alone with ``workers`` processes."""
    from segzoo.engine import build_trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(model, items, None, run_config(batches, batch_size, 1e-3, workers), tmp)
        it = trainer.loader.epoch(0)
        next(it)  # workers started
        t0 = time.perf_counter()
        n = 0
        for _ in range(batches):
            try:
                next(it)
            except StopIteration:
                break
            n += batch_size
        return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="unet_resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=3, help="warm-up steps left out of each side's median")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--options", action="store_true",
                    help="time the trainer under channels_last and bf16 autocast beside float32 instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import segzoo

    torch.manual_seed(0)
    base = segzoo.build(args.model, num_classes=4)
    items = shapes_items(args.batch_size * args.steps, args.size)
    lr = 1e-3
    if args.options:
        return compare_options(base, items, args, lr)
    times: dict[str, list[tuple[float, float]]] = {"segzoo": [], "bare": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side in ("segzoo", "bare") if r % 2 == 0 else ("bare", "segzoo"):
                model = copy.deepcopy(base)
                if side == "segzoo":
                    got = segzoo_steps(model, items, args.steps, args.batch_size, lr, Path(tmp) / f"run{r}")
                else:
                    got = bare_steps(model, items, args.steps, args.batch_size, lr)
                times[side] += got[args.skip:]
                wall, cpu = (statistics.median(t[k] for t in got[args.skip:]) for k in (0, 1))
                print(f"round {r + 1} {side}: median step {wall * 1e3:.1f} ms wall, {cpu * 1e3:.1f} ms CPU",
                      flush=True)
    print(f"\n{args.model}, {args.size} px, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    for k, clock in enumerate(("wall", "CPU")):
        seg = statistics.median(t[k] for t in times["segzoo"])
        bare = statistics.median(t[k] for t in times["bare"])
        print(f"median step ({clock}): segzoo {seg * 1e3:.1f} ms, bare loop {bare * 1e3:.1f} ms, "
              f"overhead {100 * (seg / bare - 1):+.1f}%")
    step_rate = args.batch_size / statistics.median(t[0] for t in times["segzoo"])
    for workers in (0, 1):
        rate = loader_rate(copy.deepcopy(base), items, args.batch_size, workers, min(40, args.steps))
        print(f"loader alone, num_workers={workers}: {rate:.0f} images/s (a training step consumes "
              f"{step_rate:.1f} images/s)")
    return 0


def compare_options(base, items, args, lr: float) -> int:
    """The trainer's step under each of :data:`OPTIONS`, rounds alternating; CPU-time medians against float32."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in OPTIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            names = list(OPTIONS) if r % 2 == 0 else list(reversed(OPTIONS))
            for name in names:
                got = segzoo_steps(copy.deepcopy(base), items, args.steps, args.batch_size, lr,
                                   Path(tmp) / f"{name}{r}".replace(" ", ""), **OPTIONS[name])
                times[name] += got[args.skip:]
                print(f"round {r + 1} {name}: median step {statistics.median(t[1] for t in got[args.skip:]) * 1e3:.1f}"
                      " ms CPU", flush=True)
    print(f"\n{args.model}, {args.size} px, batch {args.batch_size}, {args.steps} steps x {args.rounds} rounds, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    ref = statistics.median(t[1] for t in times["float32"])
    print("| train options | median step (CPU ms) | against float32 |\n|---|---|---|")
    for name, got in times.items():
        cpu = statistics.median(t[1] for t in got)
        print(f"| {name} | {cpu * 1e3:.1f} | {cpu / ref:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
