"""``segzoo train CONFIG``: print a short summary, train, print where the run folder is."""

from __future__ import annotations

import argparse
from pathlib import Path

from segzoo.cli.common import check_writable, overrides_argument

HELP = "train a model from a YAML config"
DESCRIPTION = """Train a model from a YAML config.

    segzoo train configs/quickstart.yaml [key.sub=value ...] [--out DIR] [--resume | --overwrite]
    torchrun --nproc_per_node 2 tools/train.py configs/quickstart.yaml

Prints a four-line summary, checks the data, trains, evaluates and writes the run folder
(default runs/<config name>/): model.safetensors, train_state.pt, best.safetensors,
ema.safetensors (with train.ema), log.jsonl, metrics.json, predictions.png, config.yaml. A
folder that holds a run is refused unless --resume (continue it) or --overwrite (replace it) is
given; one training at a time may use a folder. SIGINT/SIGTERM finish the current step, write a
checkpoint and exit 130/143."""


def arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    overrides_argument(p)
    p.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out (its files are deleted)")


def summary(cfg, out: Path) -> str:
    """Four lines on what a training will do; the whole resolved config goes to the run folder."""
    m, d, tc = cfg.model, cfg.data, cfg.train
    model = m.get("name", "?") + (f" (backbone {m['backbone']})" if m.get("backbone") else "")
    start = f"weights {m['weights']}" if m.get("weights") else (
        f"backbone weights {m['backbone_weights']}" if m.get("backbone_weights") else "random init")
    budget = f"{tc.max_steps} steps" if tc.max_steps else f"{tc.epochs} epochs"
    return "\n".join([
        f"model  {model}, num_classes {m.get('num_classes', 'default')}, {start}",
        f"data   {d.type}, batch {d.batch_size}, augment size {d.augment.size}",
        f"train  {budget}, {tc.optimizer} lr {tc.lr:g} ({tc.schedule}), device {tc.device}, seed {tc.seed}",
        f"out    {out} (the full resolved config is written to {out / 'config.yaml'})",
    ])


def run(args: argparse.Namespace) -> int:
    from segzoo.config import load_config
    from segzoo.engine.distributed import world_info
    from segzoo.engine.run import default_out_dir, train_from_config

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else default_out_dir(cfg)
    check_writable(out, folder=True)
    rank = world_info()[0]
    if rank == 0:
        print(summary(cfg, out), flush=True)
    metrics = train_from_config(cfg, out, resume=args.resume, overwrite=args.overwrite)
    if rank == 0:
        best = metrics["best"]
        shown = "n/a" if best is None else f"{best:.4f}"
        print(f"done: {metrics['step']} steps in {metrics['train_seconds']:.0f} s; best {metrics['metric']} = "
              f"{shown} (step {metrics['best_step']}); run folder: {out}")
    return 0
