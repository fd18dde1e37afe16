"""Work per second of a model against its own bare body, like for like (issue 30's measure for CenterNet).

    OMP_NUM_THREADS=1 python -m benchmarks.speed.workrate --threads 1 [--models centernet_resnet18 centernet_dla34] \\
        [--size 512] [--runs 5] [--moving-offsets]

A neck and heads add real FLOPs, so a model's latency against its body's says little; its achieved GFLOP/s against
the body's says whether the added layers run as well as the body does. For each model four variants are timed in
turns in one process, ``--runs`` rounds after one untimed call each: the model eager (eval + ``no_grad``), its
backbone module alone eager (the same timm features module and weights, the "bare body"), and both through
``segzoo.optimize`` (the default predict path). GFLOPs count convolutions and matrix products
(``torch.utils.flop_counter``) of the eager forward: the same figure for the eager and optimized variant, so the
GFLOP/s ratio of a variant pair is its time ratio scaled by the FLOP ratio. The model's time includes everything its
forward does (normalisation, decoding to boxes); the body's, the feature maps only. Printed per model: GFLOPs, the
four medians (ms) and GFLOP/s, and ``eager / eager`` and ``optimized / optimized``, the model's GFLOP/s over the
body's (issue 30 asks at least 0.9 of both), as the ratio of the medians; then the same ratio paired by round (each
round's model against the body timed just before or after it, the median over rounds and their range), which
cancels the drift of a shared machine between rounds.

``--moving-offsets`` draws the DCN offset branches from normal(0, 0.01) instead of DCNv2's zero initialisation, so
that the deformable layers sample between pixels as trained ones do (their cost does not depend on the values,
but zero offsets keep every sample on the grid).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

MODELS = ("centernet_resnet18", "centernet_resdcn18", "centernet_dla34")


class _Body(torch.nn.Module):
    """The model's backbone alone: normalised image batch -> its feature maps."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor):
        return self.backbone(x)


def gflops(module: torch.nn.Module, x: torch.Tensor) -> float:
    """Convolution and matrix-product GFLOPs of one eval forward."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 1e9


def measure(name: str, size: int = 512, runs: int = 5, moving_offsets: bool = False, num_classes: int = 80) -> dict:
    """GFLOPs, median seconds and GFLOP/s of the four variants of ``name`` (see the module docstring)."""
    import segzoo
    from segzoo.layers.dcn import ModulatedDeformConv2d

    torch.manual_seed(0)
    model = segzoo.build(name, num_classes=num_classes).eval()
    if moving_offsets:
        for m in model.modules():
            if isinstance(m, ModulatedDeformConv2d):
                torch.nn.init.normal_(m.conv_offset_mask.weight, std=0.01)
    body = _Body(model.backbone).eval()
    x = torch.rand(1, 3, size, size)
    xb = model.preprocess(x)[0]  # what the body sees inside the model: the normalised batch
    flops = {"model": gflops(model, x), "body": gflops(body, xb)}
    variants = {
        "model eager": (model, x), "body eager": (body, xb),
        "model optimized": (segzoo.optimize(model), x),
        "body optimized": (segzoo.optimize(body, torch.rand(1, 3, 64, 64)), xb),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        for module, inp in variants.values():
            module(inp)
        for _ in range(runs):
            for key, (module, inp) in variants.items():
                start = time.perf_counter()
                module(inp)
                times[key].append(time.perf_counter() - start)
    seconds = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: flops[k.split()[0]] / seconds[k] for k in seconds}
    scale = flops["model"] / flops["body"]
    rounds = {mode: sorted(scale * b / m for m, b in zip(times[f"model {mode}"], times[f"body {mode}"]))
              for mode in ("eager", "optimized")}  # each round's model against the body timed beside it
    return {"model": name, "size": size, "gflops": flops, "seconds": seconds, "gflop_per_s": rate,
            "eager_ratio": rate["model eager"] / rate["body eager"],
            "optimized_ratio": rate["model optimized"] / rate["body optimized"],
            "round_ratios": rounds,
            "paired": {mode: statistics.median(v) for mode, v in rounds.items()}}


def table(results: list[dict]) -> str:
    """A markdown table of :func:`measure` results."""
    lines = ["| model | GFLOPs model / body | eager ms model / body | optimized ms model / body "
             "| GFLOP/s eager model / body | GFLOP/s optimized model / body | eager / eager | optimized / optimized "
             "| paired eager (range) | paired optimized (range) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s, g, f = r["seconds"], r["gflop_per_s"], r["gflops"]
        lines.append(
            f"| {r['model']} ({r['size']} px) | {f['model']:.1f} / {f['body']:.1f} "
            f"| {s['model eager'] * 1e3:.0f} / {s['body eager'] * 1e3:.0f} "
            f"| {s['model optimized'] * 1e3:.0f} / {s['body optimized'] * 1e3:.0f} "
            f"| {g['model eager']:.0f} / {g['body eager']:.0f} "
            f"| {g['model optimized']:.0f} / {g['body optimized']:.0f} "
            f"| {r['eager_ratio']:.2f} | {r['optimized_ratio']:.2f} "
            + "".join(f"| {r['paired'][m]:.2f} ({r['round_ratios'][m][0]:.2f}-{r['round_ratios'][m][-1]:.2f}) "
                      for m in ("eager", "optimized")) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed.workrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="registered model names (default: CenterNet's)")
    p.add_argument("--size", type=int, default=512, help="input side (default 512, CenterNet's standard input)")
    p.add_argument("--runs", type=int, default=5, help="timed rounds of the four variants (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--moving-offsets", action="store_true",
                   help="draw DCN offset branches from normal(0, 0.01) instead of zeros")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for name in args.models:
        results.append(measure(name, args.size, args.runs, args.moving_offsets))
        r = results[-1]
        print(f"{name}: eager / eager {r['eager_ratio']:.2f}, optimized / optimized {r['optimized_ratio']:.2f}; "
              f"paired by round {r['paired']['eager']:.2f}, {r['paired']['optimized']:.2f}", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.runs} rounds\n")
    print(table(results))
    return results


if __name__ == "__main__":
    main()
