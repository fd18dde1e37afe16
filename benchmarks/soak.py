"""Long-run soak: train a tiny model for many steps and check that memory stays flat.

    python -m benchmarks.soak                          # 2,000 steps, eval + checkpoint every 100
    python -m benchmarks.soak --steps 500 --out /tmp/soak --max-growth 0.05

Trains the original U-Net with tiny widths on the built-in Shapes data through the normal
config path (``segzoo.engine.run.train_from_config``): 100 optimizer steps per epoch, an
evaluation and a checkpoint at every epoch end (every 100 steps). The resident set size
(RSS, from /proc/self/status) is sampled before training, after the first 100 steps (the
baseline: allocator pools and caches are warm by then) and every 100 steps after. Prints
the figures and exits with status 1 when RSS at the end exceeds the baseline by more than
``--max-growth``. Not part of the test suite: it takes minutes.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def rss_mib() -> float:
    """Current resident set size of this process in MiB (peak RSS where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soak_config(root: Path, steps: int, every: int, batch_size: int, size: int) -> dict:
    """A resolved config: ``every`` steps per epoch, so evaluation and checkpoint every ``every`` steps."""
    from segzoo.config import load_config

    shapes = {"num_train": every * batch_size, "num_val": 8, "size": size}
    return load_config(base={
        "model": {"name": "unet", "num_classes": 4, "channels": [4, 8, 16, 32, 64]},
        "data": {"type": "shapes", "root": str(root / "shapes"), "train": shapes, "val": shapes,
                 "batch_size": batch_size, "num_workers": 0,
                 "augment": {"size": size, "scale": [0.75, 1.25], "hflip": 0.5, "color_jitter": 0.2}},
        "train": {"max_steps": steps, "epochs": steps // every, "optimizer": "adamw", "lr": 0.003,
                  "checkpoint_every": every, "device": "cpu", "progress": False,
                  "tensorboard": False, "seed": 0},
        "eval": {"every": 1, "num_pictures": 2},
    })


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default 2000)")
    p.add_argument("--every", type=int, default=100, help="steps between evaluation + checkpoint (default 100)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--size", type=int, default=32, help="image side of the Shapes data (default 32)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--out", default=None, help="run folder (default: a temporary folder)")
    p.add_argument("--max-growth", type=float, default=0.05, help="allowed RSS growth (default 0.05 = 5%%)")
    args = p.parse_args(argv)
    if args.steps < 2 * args.every:
        p.error("--steps must be at least twice --every (the baseline is taken after the first --every steps)")

    import torch

    from segzoo.engine.run import train_from_config

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="segzoo-soak-") as tmp:
        root = Path(args.out) if args.out else Path(tmp)
        cfg = soak_config(root, args.steps, args.every, args.batch_size, args.size)
        samples: list[tuple[int, float]] = [(0, rss_mib())]
        start = time.perf_counter()

        def on_step(trainer) -> None:
            if trainer.step % args.every == 0:
                gc.collect()
                samples.append((trainer.step, rss_mib()))
                print(f"step {trainer.step:5d}  rss {samples[-1][1]:8.1f} MiB  "
                      f"{time.perf_counter() - start:7.1f} s", flush=True)

        metrics = train_from_config(cfg, out_dir=root / "run", on_step=on_step)
        gc.collect()
        samples.append((metrics["step"], rss_mib()))
        seconds = time.perf_counter() - start
        evals = sum(1 for line in (root / "run" / "log.jsonl").read_text().splitlines()
                    if json.loads(line).get("type") == "eval")

    base = next(r for s, r in samples if s >= args.every)
    end = samples[-1][1]
    growth = (end - base) / base
    print(f"\nsoak: {metrics['step']} steps, {evals} evaluations, checkpoints every {args.every} steps, "
          f"{seconds:.0f} s; final {metrics['metric']} = {metrics['final'].get(metrics['metric'])}")
    print(f"RSS before training {samples[0][1]:.1f} MiB, after step {args.every} {base:.1f} MiB, "
          f"at the end {end:.1f} MiB: growth {100 * growth:+.2f}% (limit {100 * args.max_growth:.0f}%)")
    if growth > args.max_growth:
        print("FAIL: memory grows over the run", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
