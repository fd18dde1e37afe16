"""Peak memory and time of semantic prediction over image side: the whole image against tile="auto".

    OMP_NUM_THREADS=1 python -m benchmarks.speed.semantic_memory unet_resnet34 --sides 1024 1536 2048

Each (side, mode) runs in a fresh process (:func:`peak_rss_above`, also used by :mod:`benchmarks.speed.scaling`):
``segzoo.predict(model, image, tile=None)`` (one forward at full size) and ``tile="auto"`` (the default:
images above ``AUTO_TILE_PIXELS`` go through ``AUTO_TILE``-pixel tiles). Printed: the peak resident memory
above what the interpreter, the model and the image held before, and the seconds of the call. Random
weights, 19 classes, one thread.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable


def _rss_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def _reset_peak() -> bool:
    """Reset the process's peak resident set (Linux: ``clear_refs`` 5) so that several calls of one process can
    each be measured; False where it cannot be reset (then only a fresh process measures a call)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _rss_kb("VmHWM") is not None


def _trim() -> None:
    """Hand the heap's free memory back to the system (glibc ``malloc_trim``), so that the resident set before a call
    holds only live memory: freed blocks of an earlier call, still resident, would otherwise be reused unseen."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_above(fn: Callable[[], object]) -> tuple[object, float, float]:
    """``(fn(), seconds, MiB)``: the call's result, its wall time and the peak resident memory it took above what
    the process held before it. Where the peak can be reset (Linux), the peak of this call alone above the resident
    set before it, the heap's free memory returned first (a warm-up's freed blocks would hide the call's own); else
    the growth of the process's lifetime peak (``ru_maxrss``), which needs a fresh process."""
    _trim()
    if _reset_peak():
        base = _rss_kb("VmRSS")
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        return out, seconds, (_rss_kb("VmHWM") - base) / 1024
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024


def one(model_name: str, side: int, mode: str) -> dict:
    import torch

    import segzoo

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = segzoo.build(model_name, num_classes=19).eval()
    image = torch.rand(3, side, side)
    out, seconds, mb = peak_rss_above(lambda: segzoo.predict(model, image, tile=None if mode == "whole" else "auto",
                                                             fast=False))
    return {"model": model_name, "side": side, "mode": mode, "seconds": round(seconds, 1),
            "peak_above_before_mb": round(mb), "probs_mb": round(out["probs"].nbytes / 2**20)}


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
