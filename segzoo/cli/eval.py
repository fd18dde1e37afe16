"""``segzoo eval CHECKPOINT --data CONFIG``: the metrics of a checkpoint on a config's split, with its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from segzoo.cli.common import (
    check_writable,
    device,
    fast_arguments,
    fast_option,
    overrides_argument,
    pixel_limit_argument,
)

HELP = "evaluate a checkpoint on a config's dataset"
DESCRIPTION = """Evaluate a checkpoint on a split of a config's dataset.

    segzoo eval runs/quickstart/model.safetensors --data configs/quickstart.yaml
    segzoo eval model.safetensors --data configs/quickstart.yaml data.val.num_val=20 --tile 256 --tta flip

The numbers are those of the training log for the same checkpoint and config (one evaluate).
Prints a metric table and writes to --out (default: an eval folder beside the checkpoint):
metrics.json, pr_curves.png, predictions_NNN.png panels and, for semantic models,
confusion.csv and confusion.png."""


def arguments(p: argparse.ArgumentParser) -> None:
    pixel_limit_argument(p)
    p.add_argument("checkpoint", help="a segzoo .safetensors checkpoint")
    p.add_argument("--data", required=True, help="YAML config whose data section names the dataset")
    overrides_argument(p)
    p.add_argument("--split", default="val", choices=("val", "train"), help="dataset split (default: val)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per forward pass (default: data.val_batch_size or data.batch_size, as in training)")
    p.add_argument("--mode", default=None, choices=["whole", "slide"],
                   help="semantic protocol (default: the config's eval.mode): whole image or sliding window")
    p.add_argument("--crop", type=int, nargs="+", default=None, metavar="N",
                   help="sliding-window size: H [W] (eval.crop)")
    p.add_argument("--stride", type=int, nargs="+", default=None, metavar="N",
                   help="sliding-window step: H [W] (eval.stride; default 2/3 of the crop)")
    p.add_argument("--resize", type=int, nargs="+", default=None, metavar="N",
                   help="fit each image to this size first: LONG or H W (eval.resize)")
    p.add_argument("--scales", type=float, nargs="+", default=None, metavar="S",
                   help="multi-scale test, e.g. 0.5 0.75 1 1.25 1.5 1.75 (eval.scales)")
    p.add_argument("--flip", action="store_true", default=None, help="also average the flipped image (eval.flip)")
    p.add_argument("--tile", type=int, default=None, help="sliding-window tile size, tent-blended as segzoo infer")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction (with --tile)")
    p.add_argument("--tta", default=None, choices=["flip", "ms", "ms_flip"], help="semantic test-time augmentation")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--pictures", type=int, default=4, help="prediction panels to write")
    p.add_argument("--score-thresh", type=float, default=None,
                   help="detections drawn in the panels (default: eval.score_threshold, 0.5); the metrics use them all")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--amp", default="off", choices=["off", "auto", "bf16", "fp16"], help="autocast (default: off)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    fast_arguments(p)


def protocol_overrides(args: argparse.Namespace) -> list[str]:
    """The eval.* overrides of the protocol flags (--mode, --crop, ...) that were given."""
    out = []
    for flag in ("mode", "crop", "stride", "resize", "scales", "flip"):
        value = getattr(args, flag)
        if value is None:
            continue
        if isinstance(value, list):
            if flag != "scales" and len(value) > 2:
                raise ValueError(f"--{flag} takes one size or two (height width), got {len(value)} numbers")
            value = value[0] if len(value) == 1 and flag != "scales" else value
        out.append(f"eval.{flag}={str(value).lower() if isinstance(value, bool) else value}")
    return out


def run(args: argparse.Namespace) -> int:
    from segzoo.config import EvalConfig, load_config
    from segzoo.engine.build import build_split
    from segzoo.engine.device import amp_dtype_for
    from segzoo.engine.evaluator import evaluate
    from segzoo.engine.report import format_results, write_report
    from segzoo.inference import fast_model
    from segzoo.registry import load
    from segzoo.tasks import get_task

    cfg = load_config(args.data, [*args.overrides, *protocol_overrides(args)], require_model=False)
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval"
    check_writable(out, folder=True)
    dev = device(args.device)
    model = load(args.checkpoint, map_location=dev)
    task = get_task(model)
    protocol = task.protocol(cfg.eval)
    if args.tile is not None or args.tta is not None:
        if protocol != task.protocol(EvalConfig()):
            raise ValueError("--tile/--tta and the eval protocol (--mode, --crop, --scales, --flip, eval.* keys) are "
                             "two ways to set the same thing; use one of them")
        protocol = {"tile": args.tile, "overlap": args.overlap, "tta": args.tta}
    dataset = build_split(cfg, args.split, model, train=False)
    result = evaluate(
        fast_model(model, fast_option(args)), dataset,
        batch_size=args.batch_size or cfg.data.val_batch_size or cfg.data.batch_size,
        num_workers=cfg.data.num_workers, amp_dtype=amp_dtype_for(args.amp, dev), **protocol,
        max_images=args.max_images or cfg.eval.max_images,
        ignore_index=cfg.data.ignore_index, curves=True, num_pictures=args.pictures,
        score_threshold=cfg.eval.score_threshold if args.score_thresh is None else args.score_thresh,
        progress=not args.no_progress)
    print(f"{args.checkpoint}: {model.spec.name} ({model.task}) on {result['num_images']} {args.split} images")
    print(format_results(result))
    shown = {k: getattr(cfg.eval, k) for k in ("mode", "crop", "stride", "resize", "scales", "flip")}
    path = write_report(result, out, checkpoint=str(args.checkpoint), model=model.spec.name, split=args.split,
                        tile=args.tile, tta=args.tta, protocol=shown if task.traits.dense else None)
    print(f"wrote {path} and pictures", file=sys.stderr)
    return 0
