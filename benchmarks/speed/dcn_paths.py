"""The two CPU paths of segzoo's DCNv2 layer, timed in alternation (one thread, CPU time of this thread).

    python -m benchmarks.speed.dcn_paths                  # the op at the CenterNet-DLA34 neck's sizes
    python -m benchmarks.speed.dcn_paths --train centernet_dla34 centernet_resdcn18   # + a training step

``grid_sample`` is :func:`segzoo.layers.dcn.deform_conv2d_by_sampling` (kept for ONNX export),
``gather`` :func:`segzoo.layers.dcn.deform_conv2d_by_gather` (the CPU default); the plain 3x3
convolution of the same shape is the floor. CPU time, not wall time, so that other processes on a
shared machine move the figures less.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import segzoo
import segzoo.layers.dcn as dcn

SHAPES = ((64, 128), (128, 64), (256, 32))  # (channels, side) of the DLA-34 neck's DCNs at 512 px


def _alternate(fns, runs: int) -> list[float]:
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(runs):
        for k, fn in enumerate(fns):
            t = time.thread_time()
            fn()
            times[k].append(time.thread_time() - t)
    return [statistics.median(t) * 1e3 for t in times]


def op_rows(runs: int = 7, backward: bool = False) -> list[str]:
    """One line per shape: milliseconds of each path and of the plain convolution."""
    lines = []
    for c, s in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, s, s, generator=g)
        offset = torch.randn(1, 18, s, s, generator=g) * 2
        mask = torch.rand(1, 9, s, s, generator=g)
        weight, bias = torch.randn(c, c, 3, 3, generator=g) / (3 * c ** 0.5), torch.zeros(c)
        args = [t.requires_grad_(backward) for t in (x, offset, mask, weight, bias)]

        def call(fn, args=args):
            def run():
                with torch.set_grad_enabled(backward):
                    out = fn(*args)
                    if backward:
                        out.sum().backward()
            return run

        old, new, conv = _alternate([call(dcn.deform_conv2d_by_sampling), call(dcn.deform_conv2d_by_gather),
                                     call(lambda x, o, m, w, b: F.conv2d(x, w, b, padding=1))], runs)
        lines.append(f"{c:>4} ch {s:>3}x{s:<3} {'fwd+bwd' if backward else 'forward'}  grid_sample {old:7.1f} ms  "
                     f"gather {new:7.1f} ms  ({new / old:.2f}x)   plain 3x3 conv {conv:6.1f} ms")
    return lines


def train_row(name: str, size: int = 256, runs: int = 5) -> str:
    """A CenterNet training step (batch 2, forward + backward) on each path."""
    torch.manual_seed(0)
    model = segzoo.build(name, num_classes=3).train()
    x = torch.rand(2, 3, size, size)
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 80.0, 90.0]]), "labels": torch.tensor([0])},
               {"boxes": torch.tensor([[5.0, 5.0, 50.0, 40.0]]), "labels": torch.tensor([1])}]
    gather = dcn.deform_conv2d_by_gather

    def step(fn):
        def run():
            dcn.deform_conv2d_by_gather = fn  # the layer looks the CPU path up here at each call
            try:
                model(x, targets)["loss"].backward()
            finally:
                dcn.deform_conv2d_by_gather = gather
            model.zero_grad(set_to_none=True)
        return run

    old, new = _alternate([step(dcn.deform_conv2d_by_sampling), step(gather)], runs)
    return f"{name} train step, batch 2 x {size} px: grid_sample {old:.0f} ms  gather {new:.0f} ms  ({new / old:.2f}x)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", nargs="*", default=[], metavar="MODEL", help="also time a training step of these")
    p.add_argument("--runs", type=int, default=7, help="timed calls of each path (default 7)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for backward in (False, True):
        print("\n".join(op_rows(args.runs, backward)))
    for name in args.train:
        print(train_row(name, runs=max(3, args.runs // 2)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
