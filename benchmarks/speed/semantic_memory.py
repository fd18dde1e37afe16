"""Peak memory and time of semantic prediction over image side: the whole image against tile="auto".

    OMP_NUM_THREADS=1 python -m benchmarks.speed.semantic_memory unet_resnet34 --sides 1024 1536 2048

Each (side, mode) runs in a fresh process (``ru_maxrss`` is a process's lifetime peak):
``segzoo.predict(model, image, tile=None)`` (one forward at full size) and ``tile="auto"`` (the default:
images above ``AUTO_TILE_PIXELS`` go through ``AUTO_TILE``-pixel tiles). Printed: the peak resident memory
above what the interpreter, the model and the image held before, and the seconds of the call. Random
weights, 19 classes, one thread.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(model_name: str, side: int, mode: str) -> dict:
    import torch

    import segzoo

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = segzoo.build(model_name, num_classes=19).eval()
    image = torch.rand(3, side, side)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = segzoo.predict(model, image, tile=None if mode == "whole" else "auto", fast=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model_name, "side": side, "mode": mode, "seconds": round(seconds, 1),
            "peak_above_before_mb": round((peak - base) / 1024), "probs_mb": round(out["probs"].nbytes / 2**20)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="unet_resnet34")
    p.add_argument("--sides", type=int, nargs="+", default=(1024, 1536, 2048))
    p.add_argument("--one", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.model, int(args.one[0]), args.one[1])))
        return 0
    print("| model | side | mode | seconds | peak MiB above before | probs MiB |\n|---|---|---|---|---|---|")
    for side in args.sides:
        for mode in ("whole", "auto"):
            got = subprocess.run([sys.executable, "-m", "benchmarks.speed.semantic_memory", args.model,
                                  "--one", str(side), mode], capture_output=True, text=True, check=True)
            r = json.loads(got.stdout.strip().splitlines()[-1])
            print(f"| {r['model']} | {side} | {mode} | {r['seconds']} | {r['peak_above_before_mb']} | "
                  f"{r['probs_mb']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
