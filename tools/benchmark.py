"""Time segzoo models against the closest anchor on the same input.

    python tools/benchmark.py                      # every case
    python tools/benchmark.py fcn_resnet50 --size 256 --runs 3
    python tools/benchmark.py --markdown > table.md
"""

from __future__ import annotations

import argparse
import datetime
import sys

import torch

from segzoo import benchmark


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", help="case names or shell patterns (default: all)")
    p.add_argument("--size", type=int, default=None, help="input side (default: each case's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--no-peak", action="store_true", help="skip measuring the machine's conv throughput")
    p.add_argument("--scaling", action="store_true",
                   help="also time each case over input sides 256, 512, 768, 1024 (cases that take --size)")
    args = p.parse_args(argv)
    if args.list:
        print("\n".join(benchmark.list_cases()))
        return 0

    def progress(row: dict) -> None:
        ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
        print(f"  {row['name']} ({row['mode']}): {row['segzoo_s'] * 1e3:.1f} ms, ratio {ratio}",
              file=sys.stderr)

    rows = benchmark.run(args.names, args.device, args.size, args.warmup, args.runs, progress)
    if args.scaling:
        for side in (256, 512, 768, 1024):
            if side != args.size:
                rows += benchmark.run(args.names, args.device, side, args.warmup, args.runs, progress)
        rows.sort(key=lambda r: (r["name"], r["mode"], r["size"]))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    peak = None if args.no_peak else benchmark.machine_peak_gflops(device)
    print(f"# {benchmark.machine_description()}, {datetime.date.today()}"
          + (f", dense 3x3 conv peak {peak:.0f} GFLOP/s" if peak else ""))
    print(benchmark.format_table(rows, markdown=args.markdown, peak_gflops=peak))
    return 0


if __name__ == "__main__":
    sys.exit(main())
