"""Time segzoo models against the closest anchor on the same input.

    python -m benchmarks.speed                      # every case at its standard input
    python -m benchmarks.speed fcn_resnet50 --size 256 --runs 3
    python -m benchmarks.speed --markdown --scaling # docs section: machine, main and scaling tables
    python -m benchmarks.speed --markdown --scaling --write docs/performance.md   # ... between the markers
    python -m benchmarks.speed --list
    python -m benchmarks.speed fcn_resnet50 unet_resnet34 --optimize --size 256 --threads 1   # eager / optimized / int8
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from benchmarks import speed as benchmark
from benchmarks.speed import report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", help="case names or shell patterns (default: all)")
    p.add_argument("--size", type=int, default=None, help="input side (default: each case's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per side (default: 1-2, by speed)")
    p.add_argument("--runs", type=int, default=None, help="timed calls per side (default: 3-7, by speed)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--markdown", action="store_true", help="print the markdown report (machine, date, tables)")
    p.add_argument("--write", "--readme", dest="readme", default=None, metavar="FILE",
                   help=f"write the markdown report between {report.START_MARKER} and {report.END_MARKER} in FILE "
                        "(docs/performance.md)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--no-peak", action="store_true", help="skip measuring the machine's conv throughput")
    p.add_argument("--scaling", action="store_true",
                   help=f"also run the scaling series: input side {', '.join(map(str, benchmark.SCALING_SIDES))} "
                        f"for {', '.join(benchmark.SCALING_CASES)}; Mask R-CNN detections kept")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None,
                   help="run both sides under torch.autocast with this dtype (default: float32)")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and inputs on both sides")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile both models (default backend: inductor)")
    p.add_argument("--optimize", action="store_true",
                   help="inference cases: anchor and segzoo eager under torch.no_grad() beside segzoo.optimize and "
                        "segzoo.quantize (int8, semantic models and CenterNet; compiling costs minutes) in one run")
    p.add_argument("--no-int8", action="store_true", help="with --optimize: skip the int8 column")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(benchmark.list_cases()))
        return 0
    if args.readme:  # fail before an hour of timing, not after
        text = open(args.readme, encoding="utf-8").read()
        if report.START_MARKER not in text or report.END_MARKER not in text:
            p.error(f"{args.readme} lacks the markers {report.START_MARKER} / {report.END_MARKER}; add them "
                    "where the table should go")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def progress(line: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {line}", file=sys.stderr, flush=True)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    peak = None if args.no_peak else benchmark.machine_peak_gflops(device)
    if peak:
        progress(f"dense 3x3 conv peak {peak:.0f} GFLOP/s")
    if args.optimize and (args.amp or args.channels_last or args.compile):
        p.error("--optimize compares segzoo.optimize with plain models; drop --amp, --channels-last and --compile")
    options = benchmark.Options(args.amp, args.channels_last, args.compile, args.optimize, not args.no_int8)
    progress(f"both sides run {options.describe()}")
    rows = benchmark.run(args.names, device, args.size, args.warmup, args.runs, progress, options)
    scaling = []
    if args.scaling:  # points equal to a main-table row (same model, input, anchor) reuse it
        scaling = benchmark.run_scaling(args.names, device, args.warmup, args.runs, progress, reuse=rows,
                                        options=options)
    if args.markdown or args.readme:
        text = report.markdown_report(rows, scaling, peak)
        if args.readme:
            report.replace_section(args.readme, text)
            progress(f"wrote the report into {args.readme}")
        else:
            print(text)
        if args.optimize:
            print("\n" + benchmark.format_optimized(rows, markdown=True))
    else:
        print(f"# {report.machine_description()}" + (f", dense 3x3 conv peak {peak:.0f} GFLOP/s" if peak else ""))
        print(report.format_table(rows, peak_gflops=peak))
        if args.optimize:
            print()
            print(benchmark.format_optimized(rows, markdown=args.markdown))
        if scaling:
            print()
            print(report.format_scaling(scaling))
    progress("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
