"""Evaluate a checkpoint on the validation split of a config's dataset.

    python tools/eval.py runs/shapes_fcn/model.safetensors --data configs/shapes_fcn.yaml
    python tools/eval.py model.safetensors --data cfg.yaml data.val.num_val=20 --tile 256 --tta flip

Prints a metric table and writes to --out (default: an ``eval`` folder beside the
checkpoint): metrics.json, pr_curves.png, predictions_NNN.png panels and, for semantic
models, confusion.csv and confusion.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

import segzoo
from segzoo.config import ConfigError, load_config
from segzoo.data import build_dataset
from segzoo.metrics import format_table, plot_confusion_matrix, plot_pr_curves
from segzoo.predict import evaluate, model_task
from segzoo.visualize import save_image


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _json_safe(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _load_data_config(path: str, overrides: list[str], model_name: str) -> dict:
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        if "model.name" not in str(e):
            raise
        # a data-only config: borrow the model name from the checkpoint
        return load_config(path, [*overrides, f"model.name={model_name}"])


def _coco_table(metrics: dict, names: list[str]) -> str:
    lines = []
    for iou_type in ("bbox", "segm"):
        per_class = metrics.get(f"{iou_type}_per_class")
        if per_class is None:
            continue
        width = max(5, *(len(n) for n in names))
        lines.append(f"{iou_type} AP per class")
        for name in names:
            v = per_class.get(name, float("nan"))
            lines.append(f"  {name:<{width}}  {'-' if math.isnan(v) else f'{100 * v:.2f}'}")
        for stat in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            v = metrics[f"{iou_type}_{stat}"]
            lines.append(f"  {iou_type}_{stat:<5} {'-' if math.isnan(v) else f'{100 * v:.2f}'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="a segzoo .safetensors checkpoint")
    p.add_argument("--data", required=True, help="YAML config whose data section names the dataset")
    p.add_argument("overrides", nargs="*", help="config overrides such as data.val.num_val=20")
    p.add_argument("--split", default="val", help="dataset split to evaluate (default: val)")
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/eval)")
    p.add_argument("--tile", type=int, default=None, help="sliding-window tile size")
    p.add_argument("--overlap", type=float, default=0.25, help="tile overlap fraction")
    p.add_argument("--tta", default=None, choices=["flip", "ms", "ms_flip"], help="semantic test-time augmentation")
    p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--pictures", type=int, default=4, help="prediction panels to write")
    p.add_argument("--score-thresh", type=float, default=0.5, help="detections drawn in the panels")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_intermixed_args(argv)

    model = segzoo.load(args.checkpoint, map_location="cpu").to(_device(args.device)).eval()
    task = model_task(model)
    cfg = _load_data_config(args.data, args.overrides, model.spec.name)
    dataset = build_dataset(cfg["data"], args.split, task, train=False)
    max_images = args.max_images if args.max_images is not None else cfg["eval"].get("max_images")
    result = evaluate(
        model, dataset, tile=args.tile, overlap=args.overlap, tta=args.tta, max_images=max_images,
        ignore_index=cfg["data"].get("ignore_index", 255), num_pictures=args.pictures,
        score_thresh=args.score_thresh, progress=not args.no_progress,
    )
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    names, metrics = result["class_names"], result["metrics"]
    n_images = len(dataset) if max_images is None else min(len(dataset), max_images)
    print(f"{args.checkpoint}: {model.spec.name} ({task}) on {n_images} {args.split} images")
    if task == "semantic":
        print(format_table(metrics, names))
        print(f"{'pr_map':<10} {100 * metrics['pr_map']:>7.2f}")
        cm = result["confusion"]
        rows = [",".join(["gt\\pred", *names])] + [",".join([n, *map(str, r)]) for n, r in zip(names, cm.tolist())]
        (out / "confusion.csv").write_text("\n".join(rows) + "\n")
        plot_confusion_matrix(cm, out / "confusion.png", names)
    else:
        print(result["coco_summary"])
        print(_coco_table(metrics, names))
    plot_pr_curves(result["pr_curves"], out / "pr_curves.png", names,
                   title="Precision-recall" if task == "semantic" else "Precision-recall (boxes, IoU 0.5)")
    for i, pic in enumerate(result["pictures"]):
        save_image(pic, out / f"predictions_{i:03d}.png")
    summary = {
        "checkpoint": str(args.checkpoint), "model": model.spec.name, "task": task, "split": args.split,
        "num_images": n_images, "class_names": names, "tile": args.tile, "tta": args.tta,
        "metrics": metrics,
        "pr_curves": {names[c]: {k: v for k, v in cur.items() if k in ("ap", "best_f1", "best_threshold")}
                      for c, cur in enumerate(result["pr_curves"]["per_class"])},
    }
    (out / "metrics.json").write_text(json.dumps(_json_safe(summary), indent=1) + "\n")
    print(f"wrote {out}/metrics.json and pictures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as e:  # user errors (ConfigError is a ValueError): no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
