"""segzoo's Mask2Former against Hugging Face's on the same mapped random weights, one process,
one thread: the forward to class and mask logits (no post-processing), median of N runs.

    OMP_NUM_THREADS=1 python -m benchmarks.speed.mask2former_hf --size 256 --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, TimmBackboneConfig

from segzoo.models.mask2former import Mask2Former, hf_build_kwargs, map_hf_state_dict


def _median_s(fn, runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--queries", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    body = TimmBackboneConfig(backbone=args.backbone, out_indices=(1, 2, 3, 4), use_pretrained_backbone=False)
    cfg = Mask2FormerConfig(backbone_config=body, num_labels=133, num_queries=args.queries)
    ref = Mask2FormerForUniversalSegmentation(cfg).eval()
    ours = Mask2Former(backbone=args.backbone, **hf_build_kwargs(cfg)).eval()
    ours.load_state_dict(map_hf_state_dict(ref.state_dict()))
    x = ours.normalize(torch.rand(1, 3, args.size, args.size))
    with torch.inference_mode():
        diff = (ours.forward_logits(x)[-1][1] - ref(x).masks_queries_logits).abs().max().item()
        t_ref = _median_s(lambda: ref(x), args.runs)
        t_ours = _median_s(lambda: ours.forward_logits(x), args.runs)
    print(f"mask2former {args.backbone} {args.size}x{args.size} q={args.queries}: segzoo {t_ours * 1e3:.0f} ms, "
          f"HF {t_ref * 1e3:.0f} ms, ratio {t_ours / t_ref:.2f} (max |mask logit diff| {diff:.1e})")


if __name__ == "__main__":
    main()
