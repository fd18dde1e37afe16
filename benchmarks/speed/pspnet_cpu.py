"""PSPNet and FCN optimized against torchvision's FCN, in CPU time, alternating in one process.

    python -m benchmarks.speed.pspnet_cpu 50 256 7     # ResNet depth, input side, rounds

The anchor is torchvision ``fcn_resnet{depth}`` (21 classes, aux head) in eval mode under
``torch.no_grad()``, as the speed benchmark runs it; segzoo's ``fcn_resnet{depth}`` and
``pspnet_resnet{depth}`` run ``segzoo.optimize``'d. One thread; each side's time is the median of
``rounds`` calls in ``time.process_time``, which other processes on a shared machine move far
less than wall time. Prints one line with the three times and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision.models.segmentation as tvseg

import segzoo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("depth", type=int, choices=[50, 101], help="ResNet depth")
    parser.add_argument("size", type=int, help="input side")
    parser.add_argument("rounds", type=int, help="timed calls per side")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    anchor = getattr(tvseg, f"fcn_resnet{args.depth}")(weights=None, weights_backbone=None, num_classes=21,
                                                       aux_loss=True).eval()
    fcn = segzoo.optimize(segzoo.build(f"fcn_resnet{args.depth}", num_classes=21))
    psp = segzoo.optimize(segzoo.build(f"pspnet_resnet{args.depth}", num_classes=21))
    x = torch.rand(1, 3, args.size, args.size)

    def run_anchor():
        with torch.no_grad():
            anchor(x)

    sides = {"anchor": run_anchor, "fcn": lambda: fcn(x), "pspnet": lambda: psp(x)}
    for call in sides.values():
        call()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(args.rounds):
        for name, call in sides.items():
            start = time.process_time()
            call()
            times[name].append(time.process_time() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"R{args.depth} {args.size}px, CPU ms (median of {args.rounds}): anchor {med['anchor'] * 1e3:.0f}, "
          f"fcn optimized {med['fcn'] * 1e3:.0f} ({med['fcn'] / med['anchor']:.3f}), pspnet optimized "
          f"{med['pspnet'] * 1e3:.0f} ({med['pspnet'] / med['anchor']:.3f}); pspnet / fcn "
          f"{med['pspnet'] / med['fcn']:.3f}; {psp.choices.describe()}", flush=True)


if __name__ == "__main__":
    main()
