"""The accuracy cost of int8 (segzoo.quantize) and bf16 (segzoo.optimize(bf16=True)) for a semantic checkpoint.

    python -m benchmarks.int8_accuracy runs/quickstart/best.safetensors --data configs/quickstart.yaml --threads 1

Calibrates the int8 model on the first --calib training images (evaluation transforms), then scores
float, optimized (exact parts), bf16 and int8 on the validation split: mIoU, pixel accuracy and the
share of pixels whose argmax agrees with float. Images must share one size (int8 is fixed-size).
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
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = segzoo.load(args.checkpoint).eval()
    if model.task != "semantic":
        p.error(f"{model.spec.name} is a {model.task} model; int8 covers semantic models")
    cfg = load_config(args.data, [], require_model=False)
    train = build_split(cfg, "train", "semantic", train=False)
    val = build_split(cfg, "val", "semantic", train=False)
    calib = [train[i][0] for i in range(min(args.calib, len(train)))]
    variants = {"float": model, "optimized": segzoo.optimize(model), "bf16": segzoo.optimize(model, bf16=True),
                "int8": segzoo.quantize(model, calib, compile=args.compile)}
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
    print(f"{model.spec.name} on {n} validation images of {args.data}; int8 calibrated on {len(calib)} training "
          f"images{' (compiled)' if args.compile else ' (reference graph)'}")
    print("| model | mIoU | pixel acc | argmax = float |\n|---|---|---|---|")
    for k, metric in metrics.items():
        r = metric.compute()
        print(f"| {k} | {100 * r['miou']:.2f} | {100 * r['pixel_acc']:.2f} | {100 * agree[k] / pixels:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
