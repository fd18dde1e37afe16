"""The accuracy cost of int8 (segzoo.quantize) and bf16 (segzoo.optimize(bf16=True)) for a checkpoint.

    python -m benchmarks.int8_accuracy runs/quickstart/best.safetensors --data configs/quickstart.yaml --threads 1
    python -m benchmarks.int8_accuracy runs/trees/best.safetensors --data configs/finetune/tree_crowns_centernet.yaml

Calibrates the int8 model on the first --calib training images (evaluation transforms), then scores
float, optimized (exact parts), bf16 and int8 on the validation split. Semantic checkpoints: mIoU,
pixel accuracy and the share of pixels whose argmax agrees with float. Detection checkpoints
(CenterNet): box AP and AP50 by :func:`segzoo.engine.evaluate`. Images must share one size (int8 is
fixed-size).
"""

from __future__ import annotations

import argparse
import sys

import torch

import segzoo
from segzoo.config import load_config
from segzoo.engine.build import build_split
from segzoo.metrics.semantic import SegmentationMetric


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True, help="a config with the dataset (data: section)")
    p.add_argument("--calib", type=int, default=32, help="calibration images from the training split")
    p.add_argument("--max-images", type=int, default=None, help="score only the first N validation images")
    p.add_argument("--compile", action="store_true", help="score the compiled int8 model (oneDNN kernels)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--keep-float", nargs="+", default=[], metavar="MODULE",
                   help="also score an int8 model with these submodules left in float32 (e.g. head)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = segzoo.load(args.checkpoint).eval()
    if model.task not in ("semantic", "detection"):
        p.error(f"{model.spec.name} is a {model.task} model; int8 covers semantic models and CenterNet")
    cfg = load_config(args.data, [], require_model=False)
    train = build_split(cfg, "train", model.task, train=False)
    val = build_split(cfg, "val", model.task, train=False)
    calib = [train[i][0] for i in range(min(args.calib, len(train)))]
    canvas = None
    if model.task == "detection":  # the int8 graph's size: the largest validation image
        canvas = tuple(max(val[i][0].shape[k] for i in range(len(val))) for k in (-2, -1))
    variants = {"float": model, "optimized": segzoo.optimize(model), "bf16": segzoo.optimize(model, bf16=True),
                "int8": segzoo.quantize(model, calib, compile=args.compile, canvas=canvas)}
    if args.keep_float:
        variants[f"int8, {' '.join(args.keep_float)} in float"] = segzoo.quantize(
            model, calib, compile=args.compile, canvas=canvas, keep_float=args.keep_float)
    source = (f"{model.spec.name} on {{n}} validation images of {args.data}; int8 calibrated on {len(calib)} "
              f"training images{' (compiled)' if args.compile else ' (reference graph)'}")
    if model.task == "detection":
        return detection_table(variants, val, args.max_images, source)
    n = len(val) if args.max_images is None else min(len(val), args.max_images)
    metrics = {k: SegmentationMetric(model.num_classes, ignore_index=cfg.data.ignore_index) for k in variants}
    agree = {k: 0.0 for k in variants}
    pixels = 0
    with torch.no_grad():
        for i in range(n):
            image, target = val[i]
            target = (target[0] if target.dim() == 3 else target).long()[None]
            ref = None
            for k, m in variants.items():
                pred = m(image[None]).argmax(1)
                ref = pred if ref is None else ref
                metrics[k].update(pred, target)
                agree[k] += float((pred == ref).sum())
            pixels += target.numel()
    print(source.format(n=n))
    print("| model | mIoU | pixel acc | argmax = float |\n|---|---|---|---|")
    for k, metric in metrics.items():
        r = metric.compute()
        print(f"| {k} | {100 * r['miou']:.2f} | {100 * r['pixel_acc']:.2f} | {100 * agree[k] / pixels:.2f}% |")
    return 0


def detection_table(variants: dict, val, max_images: int | None, source: str) -> int:
    from segzoo.engine import evaluate

    n = len(val) if max_images is None else min(len(val), max_images)
    print(source.format(n=n))
    print("| model | box AP | box AP50 | box AP75 |\n|---|---|---|---|")
    for k, m in variants.items():
        r = evaluate(m, val, batch_size=1, max_images=n)["metrics"]
        print(f"| {k} | {100 * r['bbox_AP']:.2f} | {100 * r['bbox_AP50']:.2f} | {100 * r['bbox_AP75']:.2f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
