"""The accuracy ledger (``python -m benchmarks.ledger`` from a source checkout): segzoo models beside a peer
library's same architecture, on real labelled tiles.

    python -m benchmarks.ledger                                   # every case, default steps, seeds 0 1 2
    python -m benchmarks.ledger nuclei_semantic --steps 20 --seeds 0
    python -m benchmarks.ledger --markdown --write docs/accuracy.md   # the table, written between the markers
    python -m benchmarks.ledger --json runs/ledger.json           # keep every run (losses included)
    python -m benchmarks.ledger --from-json runs/ledger.json --markdown   # tables again, without training
    python -m benchmarks.ledger --parity 5                        # losses step by step from identical weights
    python -m benchmarks.ledger nuclei_instance --crosscheck      # the peer's trained weights scored through segzoo

Each pair trains from identical random weights (the peer's, mapped into segzoo's model) on the
same batches with the same recipe: segzoo through its Trainer, the peer through the plain loop
its users write; both are scored by segzoo.engine.evaluate on the held-out tiles. Needs the
wheels (`python -m segzoo.data.formats.realdata fetch`), segmentation-models-pytorch (`pip install
segzoo[bench]`) and pycocotools (`segzoo[coco]`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.ledger import CASES, END_MARKER, START_MARKER, crosscheck, parity, run_case
from benchmarks.ledger.report import checks_line, format_table, markdown_report, replace_section, summarise
from segzoo.data.formats.realdata import WHEELS, default_cache_dir, find_wheel

WHEEL_OF = {"nuclei": "stardist", "tree_crowns": "deepforest"}  # data.type -> the wheel that holds its images


def missing_requirements(cases) -> list[str]:
    """What the cases need and this machine lacks (wheels, peer libraries), each with how to get it."""
    out = []
    wheels = sorted({WHEEL_OF[c.recipe["data"]["type"]] for c in cases})
    for name in wheels:
        if find_wheel(name, WHEELS[name]) is None:
            out.append(f"the {name}=={WHEELS[name]} wheel is not in {default_cache_dir()} (SEGZOO_WHEELS): run "
                       "`python -m segzoo.data.formats.realdata fetch`")
    smp = importlib.util.find_spec("segmentation_models_pytorch")
    if smp is None and any(c.model.startswith(("unet_", "segformer_", "upernet_")) for c in cases):
        out.append("segmentation-models-pytorch is not installed (its U-Net is the peer and the source of the "
                   "shared weights): `pip install segzoo[bench]`")
    if any(m.key.startswith(("bbox_", "segm_")) for c in cases for m in c.metrics) and importlib.util.find_spec(
            "pycocotools") is None:
        out.append("pycocotools is not installed (box and mask AP): `pip install segzoo[coco]`")
    return out


def reproduce_command(results: list[dict]) -> str:
    """The command line(s) that train ``results`` again, from the runs themselves (also right for --from-json);
    runs of different step budgets need one command each."""
    if all(r["case"] in CASES and r["steps"] == CASES[r["case"]].steps for r in results):
        groups = {None: results}
    else:
        groups = {s: [r for r in results if r["steps"] == s] for s in dict.fromkeys(r["steps"] for r in results)}
    lines = []
    for steps, runs in groups.items():
        names = list(dict.fromkeys(r["case"] for r in runs))
        words = ["python -m benchmarks.ledger", *([] if set(names) == set(CASES) else names),
                 "--seeds", *map(str, sorted({r["seed"] for r in runs}))]
        threads = {r.get("threads") for r in runs}
        words += [] if steps is None else ["--steps", str(steps)]
        lines.append(" ".join(words + (["--threads", str(*threads)] if len(threads) == 1 and None not in threads
                                       else [])))
    return "`; `".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cases", nargs="*", help=f"cases to run (default: all): {', '.join(CASES)}")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default: each case's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    p.add_argument("--markdown", action="store_true", help="print the markdown section (machine, load, table)")
    p.add_argument("--write", "--readme", dest="readme", metavar="FILE",
                   help=f"write the section between {START_MARKER} and {END_MARKER} in FILE (docs/accuracy.md)")
    p.add_argument("--json", metavar="FILE", help="write every run's results (losses included) to FILE")
    p.add_argument("--from-json", metavar="FILE", help="report runs saved with --json instead of training")
    p.add_argument("--out", metavar="DIR", help="keep the segzoo run folders under DIR (default: temporary)")
    p.add_argument("--segzoo-only", action="store_true", help="train the segzoo side only")
    p.add_argument("--parity", type=int, metavar="STEPS",
                   help="compare the two sides' losses step by step for STEPS steps (every anchor/region sampled)")
    p.add_argument("--crosscheck", action="store_true",
                   help="R-CNN cases: train the peer, map its weights into segzoo's model and score both")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    args = p.parse_args(argv)
    if args.list:
        for c in CASES.values():
            print(f"{c.name:24s} {c.model} vs {c.peer or '(no peer)'}; {c.data_name}; {c.steps} steps")
        return 0
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.readme:
        text = Path(args.readme).read_text(encoding="utf-8")
        if START_MARKER not in text or END_MARKER not in text:
            p.error(f"{args.readme} lacks {START_MARKER} / {END_MARKER}; add them where the table should go")
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be at least 1")
    cases = [CASES[c] for c in args.cases or CASES]
    missing = [] if args.from_json else missing_requirements(cases)
    if missing:  # before any training: not after the first case's minutes
        p.error("cannot run the ledger:\n  " + "\n  ".join(missing))
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()

    def log(line: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {line}", file=sys.stderr, flush=True)

    if args.parity:
        out = []
        for case in (c for c in cases if c.peer is not None):
            log(f"{case.name}: parity over {args.parity} steps, seed {args.seeds[0]}")
            res = parity(case, args.seeds[0], args.parity, log=log)
            out.append(res)
            for i, (a, b, r) in enumerate(zip(res["segzoo"], res["peer"], res["relative_diff"]), 1):
                print(f"{case.name} step {i:3d}: segzoo {a:.6f}  peer {b:.6f}  relative difference {r:.2e}")
            print(f"{case.name}: largest relative loss difference {res['max']:.2e} (step 1: {res['first_step']:.2e}); "
                  f"same batches: {res['same_batches']}; initial outputs {res['init']}")
            print(f"{case.name} control (the peer against itself, weights nudged by 1e-7): relative differences "
                  f"{', '.join(f'{r:.2e}' for r in res['control'])}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return 0

    if args.crosscheck:
        out = []
        for case in (c for c in cases if c.model.startswith(("maskrcnn_", "fasterrcnn_"))):
            steps = args.steps or case.steps
            log(f"{case.name}: crosscheck, seed {args.seeds[0]}, {steps} steps")
            res = crosscheck(case, args.seeds[0], steps, log=log)
            out.append(res)
            print(f"{case.name}: peer {res['peer']}; segzoo with the peer's weights {res['segzoo_with_peer_weights']}; "
                  f"largest differences {res['largest_differences']}; agree: {res['agree']}")
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=1))
        return 0 if all(r["agree"] for r in out) else 1

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = []
        for case in cases:
            for seed in args.seeds:
                steps = args.steps or case.steps
                log(f"{case.name}: seed {seed}, {steps} steps")
                results.append(run_case(case, seed, steps, args.out, peer_side=not args.segzoo_only, log=log))
                if args.json:  # after every run: an interrupted ledger keeps what it measured
                    Path(args.json).write_text(json.dumps(results, indent=1))
    command = reproduce_command(results)
    rows = summarise(results)
    if args.markdown or args.readme:
        section = markdown_report(results, command.strip())
        if args.markdown:
            print(section)
        if args.readme:
            replace_section(args.readme, section)
            log(f"wrote the table into {args.readme}")
    else:
        print(format_table(rows))
        print(checks_line(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
