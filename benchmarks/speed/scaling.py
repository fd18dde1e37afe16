"""Inference time and peak memory against image side and batch, one representative model per family.

    OMP_NUM_THREADS=1 python -m benchmarks.speed.scaling --threads 1 [--families fcn maskrcnn] \\
        [--sides 256 512 1024 2048] [--batches 1 2 4 8] [--batch-sides 256 512] [--max-mb 4000] \\
        [--max-seconds 300] [--out /tmp/scaling.jsonl] [--confirm]

Each point runs the predict path as users call it: ``segzoo.predict(model, image)`` at batch 1 (the optimized
copy, ``tile="auto"``: semantic images above about 1536 x 1536 go through 1280-pixel tiles), and at batch N the
same optimized model on an ``N x 3 x S x S`` batch (semantic: :func:`segzoo.inference.semantic_probs` then the
per-image result; the others: one batched forward, the detections copied to the CPU). Random weights, a few
classes, ``--threads`` threads; one warm-up call at the same input where it is small (``--warmup-pixels``), then
one timed call. Peak memory: the resident set's peak during the timed call above what the process held before it
(:func:`benchmarks.speed.semantic_memory.peak_rss_above`), in a child process per family and size group.

Printed: a table per family (seconds per image, peak MiB) and the super-linear steps: from one point to the next of
a series, time per pixel (side series) or per image (batch series) rising more than ``--factor`` (1.3x), or the
memory per pixel / per image likewise. ``--confirm`` re-times the two points of each time step in turns in one
process (one run per point on a shared machine varies by tens of percent) and says which steps hold. A point whose
time or memory, extrapolated linearly from the family's largest measured point, exceeds ``--max-seconds`` or
``--max-mb`` is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

# family -> (model, build keyword arguments): the representative of each family (random weights, few classes)
FAMILIES = {
    "fcn": ("fcn_resnet50", {}),
    "deeplabv3plus": ("deeplabv3plus_resnet50", {}),
    "pspnet": ("pspnet_resnet50", {}),
    "unet": ("unet_resnet34", {}),
    "hrnet": ("hrnet_w18", {}),
    "segformer": ("segformer_b0", {}),
    "upernet": ("upernet_convnext_tiny", {}),
    "maskrcnn": ("maskrcnn_resnet50_fpn", {}),
    "fasterrcnn": ("fasterrcnn_resnet50_fpn", {}),
    "centernet": ("centernet_resnet18", {}),
    "panoptic_fpn": ("panoptic_fpn_resnet50", {"num_stuff": 2}),
    "mask2former": ("mask2former_resnet50", {"num_stuff": 2}),
    "eomt": ("eomt_vit_small", {"num_stuff": 2}),
}
NUM_CLASSES = 5
SIDES = (256, 512, 1024, 2048)
BATCHES = (1, 2, 4, 8)
BATCH_SIDES = (256, 512)
FACTOR = 1.3
# size groups: every family runs its points of a group before any family starts the next (the big ones last)
GROUPS = (1024 * 1024 * 2, float("inf"))
MIN_MB = 32.0  # memory steps below this peak are allocator noise, not flagged
COLUMNS = ("family", "model", "series", "side", "batch", "s_per_image", "peak_mb", "tiled", "detections", "note")


def plan(families, sides=SIDES, batches=BATCHES, batch_sides=BATCH_SIDES) -> list[dict]:
    """The points: every side at batch 1 (series ``side``), every batch at each of ``batch_sides`` that is also in
    ``sides`` or is 256/512 (series ``batch@S``); a point in both series is measured once."""
    points = []
    for fam in families:
        seen = set()
        for side in sides:
            seen.add((side, 1))
            points.append({"family": fam, "side": side, "batch": 1})
        for side in batch_sides:
            for b in batches:
                if (side, b) not in seen:
                    seen.add((side, b))
                    points.append({"family": fam, "side": side, "batch": b})
    return sorted(points, key=lambda p: (_group(p), list(families).index(p["family"]), _cost(p)))


def _cost(p: dict) -> int:
    return p["batch"] * p["side"] ** 2


def _group(p: dict) -> int:
    return next(i for i, g in enumerate(GROUPS) if _cost(p) <= g)


def series_of(row: dict) -> list[str]:
    """The series a point belongs to: ``side`` (batch 1) and/or ``batch@S``."""
    out = ["side"] if row["batch"] == 1 else []
    return out + [f"batch@{row['side']}"]


def super_linear(rows: list[dict], factor: float = FACTOR, min_mb: float = MIN_MB) -> list[dict]:
    """The steps of each family's series where the cost per unit rises more than ``factor``x.

    Side series (batch 1, by side): time per pixel (``s_per_image / side**2``) and peak memory per pixel. Batch series
    (one side, by batch): time per image and peak memory per image; a memory step only where the later peak is at
    least ``min_mb``. Rows without a measurement are left out.
    Returns one dict per step: family, series, from, to, metric (``time`` or ``memory``) and ratio.
    """
    flags = []
    done = [r for r in rows if r.get("s_per_image") is not None]
    for fam in dict.fromkeys(r["family"] for r in done):
        mine = [r for r in done if r["family"] == fam]
        for series in dict.fromkeys(s for r in mine for s in series_of(r)):
            if series == "side":
                pts = sorted((r for r in mine if r["batch"] == 1), key=lambda r: r["side"])
                xs = [r["side"] for r in pts]
                units = [r["side"] ** 2 for r in pts]  # per pixel
                per = [(r["s_per_image"], r["peak_mb"] / r["batch"]) for r in pts]
            else:
                side = int(series.split("@")[1])
                pts = sorted((r for r in mine if r["side"] == side), key=lambda r: r["batch"])
                xs = [r["batch"] for r in pts]
                units = [1] * len(pts)  # per image
                per = [(r["s_per_image"], r["peak_mb"] / r["batch"]) for r in pts]
            for i in range(1, len(pts)):
                for k, metric in enumerate(("time", "memory")):
                    a, b = per[i - 1][k] / units[i - 1], per[i][k] / units[i]
                    small = metric == "memory" and pts[i]["peak_mb"] < min_mb
                    if a > 0 and b / a > factor and not small:
                        flags.append({"family": fam, "series": series, "from": xs[i - 1], "to": xs[i],
                                      "metric": metric, "ratio": round(b / a, 2)})
    return flags


def skip_reason(point: dict, rows: list[dict], max_mb: float, max_seconds: float) -> str | None:
    """Why ``point`` is not run: its time or memory extrapolated linearly in pixels from the family's largest
    measured point (semantic points above the auto-tile bound: memory per tile, not per image) over a bound."""
    from segzoo.inference import AUTO_TILE, AUTO_TILE_PIXELS

    done = [r for r in rows if r["family"] == point["family"] and r.get("s_per_image") is not None]
    if not done:
        return None
    last = max(done, key=_cost)
    if _cost(point) <= _cost(last):
        return None
    ratio = _cost(point) / _cost(last)
    seconds = last["s_per_image"] * last["batch"] * ratio
    mem_ratio = ratio
    if last.get("dense") and point["batch"] == 1 and point["side"] ** 2 > AUTO_TILE_PIXELS:
        mem_ratio = AUTO_TILE ** 2 / _cost(last)  # tiled: one tile at a time
    mb = max(last["peak_mb"], 1.0) * mem_ratio
    if seconds > max_seconds:
        return f"about {seconds:.0f} s extrapolated from {last['side']} px x {last['batch']} > --max-seconds"
    if mb > max_mb:
        return f"about {mb:.0f} MiB extrapolated from {last['side']} px x {last['batch']} > --max-mb"
    return None


def _call(model, x):
    """The predict path on a batch ``x`` (N x 3 x S x S in [0, 1]); returns (result, tiled, detections)."""
    import torch

    import segzoo
    from segzoo.inference import auto_tile, fast_model, semantic_probs, semantic_result
    from segzoo.spec import task_traits

    dense = task_traits(model.task).dense
    tiled = dense and auto_tile(model.task, "auto", *x.shape[-2:]) is not None
    if len(x) == 1:
        out = segzoo.predict(model, x[0])
        outs = [out]
    else:  # what predict runs, on the whole batch in one forward
        fast = fast_model(model)
        with torch.inference_mode():
            if dense:
                probs = semantic_probs(fast, x)  # the batch points are below the auto-tile bound
                outs = [semantic_result(fast, p) for p in probs]
            else:
                outs = [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in o.items()}
                        for o in fast(list(x))]
    dets = None if dense else sum(len(o["scores"]) if "scores" in o else len(o.get("labels", ())) for o in outs)
    return outs, tiled, dets


def _input(p: dict):
    """``batch x 3 x side x side``: a smooth texture (random weights on smooth input give plausible detections)."""
    import torch

    g = torch.Generator().manual_seed(p["side"] * 10 + p["batch"])
    small = max(p["side"] // 16, 2)
    return torch.nn.functional.interpolate(torch.rand(p["batch"], 3, small, small, generator=g),
                                           size=(p["side"],) * 2, mode="bilinear")


def child(family: str, points: list[dict], threads: int, warmup_pixels: int) -> None:
    """Measure ``points`` of one family in this process; print one JSON row per point."""
    import torch

    import segzoo
    from benchmarks.speed.semantic_memory import peak_rss_above
    from segzoo.spec import task_traits

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, kwargs = FAMILIES[family]
    model = segzoo.build(name, num_classes=NUM_CLASSES, **kwargs).eval()
    dense = task_traits(model.task).dense
    _call(model, torch.rand(1, 3, 64, 64))  # the optimized copy made, the allocator and kernels primed
    for p in points:
        x = _input(p)
        warm = _cost(p) <= warmup_pixels
        if warm:
            _call(model, x)
        (_, tiled, dets), seconds, mb = peak_rss_above(functools.partial(_call, model, x))
        row = {**p, "model": name, "dense": dense, "series": ",".join(series_of(p)), "seconds": round(seconds, 3),
               "s_per_image": round(seconds / p["batch"], 4), "peak_mb": round(max(mb, 0.0), 1), "tiled": tiled,
               "detections": dets, "note": "" if warm else "no warm-up"}
        print(json.dumps(row), flush=True)


def alternate(family: str, points: list[dict], threads: int, rounds: int) -> None:
    """Time ``points`` of one family in turns (a, b, a, b, ...: a change in machine load hits both), ``rounds``
    calls each after one warm-up; print one JSON row per point with the median seconds per image."""
    import statistics
    import time

    import torch

    import segzoo

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, kwargs = FAMILIES[family]
    model = segzoo.build(name, num_classes=NUM_CLASSES, **kwargs).eval()
    xs = [_input(p) for p in points]
    for x in xs:
        _call(model, x)
    times = [[] for _ in points]
    for _ in range(rounds):
        for i, x in enumerate(xs):
            t0 = time.perf_counter()
            _call(model, x)
            times[i].append(time.perf_counter() - t0)
    for p, t in zip(points, times):
        print(json.dumps({**p, "s_per_image": round(statistics.median(t) / p["batch"], 4),
                          "runs": [round(v, 3) for v in t]}), flush=True)


def confirm(rows: list[dict], flags: list[dict], threads: int = 1, rounds: int = 3, factor: float = FACTOR,
            progress=print) -> list[dict]:
    """Re-time the two points of every time step in ``flags`` in turns in one process (:func:`alternate`);
    returns the flags with ``confirmed_ratio`` (the step's ratio from the medians) and ``confirmed``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = []
    for f in flags:
        if f["metric"] != "time":
            out.append(f)
            continue
        if f["series"] == "side":
            pts = [{"family": f["family"], "side": s, "batch": 1} for s in (f["from"], f["to"])]
        else:
            side = int(f["series"].split("@")[1])
            pts = [{"family": f["family"], "side": side, "batch": b} for b in (f["from"], f["to"])]
        cmd = [sys.executable, "-m", "benchmarks.speed.scaling", "--alternate", f["family"], "--threads", str(threads),
               "--rounds", str(rounds), "--points", *(f"{p['side']}:{p['batch']}" for p in pts)]
        got = subprocess.run(cmd, capture_output=True, text=True, env=env)
        timed = [json.loads(line) for line in got.stdout.splitlines() if line.startswith("{")]
        if got.returncode != 0 or len(timed) != 2:
            out.append({**f, "confirmed": None})
            progress(f"confirm {f['family']} {f['series']}: failed (exit {got.returncode})")
            continue
        a, b = timed
        unit = (lambda r: r["side"] ** 2) if f["series"] == "side" else (lambda r: 1)
        ratio = round((b["s_per_image"] / unit(b)) / (a["s_per_image"] / unit(a)), 2)
        out.append({**f, "confirmed_ratio": ratio, "confirmed": ratio > factor, "runs": [a["runs"], b["runs"]]})
        progress(f"confirm {f['family']} {f['series']} {f['from']} -> {f['to']}: x{f['ratio']} in the run, "
                 f"x{ratio} in turns ({a['runs']} / {b['runs']} s)")
    return out


def format_table(rows: list[dict], flags: list[dict]) -> str:
    """Markdown: one line per family, the side series then the batch series as ``s/image, MiB`` cells."""
    cols = sorted({(r["side"], r["batch"]) for r in rows}, key=lambda sb: (sb[1] != 1, sb[0] if sb[1] == 1 else 0,
                                                                           sb[0], sb[1]))
    head = ["family", "model"] + [f"{s} px" + (f" x{b}" if b > 1 else "") for s, b in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fam in dict.fromkeys(r["family"] for r in rows):
        mine = {(r["side"], r["batch"]): r for r in rows if r["family"] == fam}
        cells = []
        for sb in cols:
            r = mine.get(sb)
            if r is None:
                cells.append("")
            elif r.get("s_per_image") is None:
                cells.append("skipped")
            else:
                tiled = " (tiled)" if r.get("tiled") else ""
                cells.append(f"{r['s_per_image']:.3g} s, {r['peak_mb']:.0f} MiB{tiled}")
        model = next(r["model"] for r in rows if r["family"] == fam)
        lines.append(f"| {fam} | {model} | " + " | ".join(cells) + " |")
    out = "\n".join(lines)
    if flags:
        out += "\n\nSuper-linear steps (per pixel for the side series, per image for the batch series):\n\n"
        out += "\n".join(f"- {f['family']} {f['series']} {f['from']} -> {f['to']}: {f['metric']} x{f['ratio']}"
                         + _confirmed(f) for f in flags)
    skipped = [r for r in rows if r.get("s_per_image") is None]
    if skipped:
        out += "\n\nSkipped:\n\n" + "\n".join(f"- {r['family']} {r['side']} px x{r['batch']}: {r['note']}"
                                             for r in skipped)
    return out


def _confirmed(f: dict) -> str:
    if "confirmed_ratio" not in f:
        return ""
    return f" (re-timed in turns: x{f['confirmed_ratio']}, {'confirmed' if f['confirmed'] else 'noise'})"


def _load(path: str | None) -> list[dict]:
    if not path or not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run(families, sides, batches, batch_sides, threads=1, max_mb=4000.0, max_seconds=300.0,
        warmup_pixels=512 * 512 * 2, out=None, progress=print) -> list[dict]:
    """Measure every planned point (a child process per family and size group, the groups in order of size);
    points already in ``out`` (a JSON-lines file, appended to) are kept, not measured again."""
    rows = _load(out)
    have = {(r["family"], r["side"], r["batch"]) for r in rows}
    todo = [p for p in plan(families, sides, batches, batch_sides) if (p["family"], p["side"], p["batch"]) not in have]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for group in dict.fromkeys(_group(p) for p in todo):
        for fam in families:
            batch = []
            for p in (p for p in todo if _group(p) == group and p["family"] == fam):
                why = skip_reason(p, rows + batch, max_mb, max_seconds)  # batch: none measured yet in this group
                if why:
                    row = {**p, "model": FAMILIES[fam][0], "series": ",".join(series_of(p)), "s_per_image": None,
                           "peak_mb": None, "note": f"skipped: {why}"}
                    progress(f"skip {fam} {p['side']} px x{p['batch']}: {why}")
                    rows.append(row)
                    _append(out, row)
                else:
                    batch.append(p)
            if not batch:
                continue
            progress(f"{fam}: " + ", ".join(f"{p['side']}x{p['batch']}" for p in batch))
            cmd = [sys.executable, "-m", "benchmarks.speed.scaling", "--child", fam, "--threads", str(threads),
                   "--warmup-pixels", str(warmup_pixels), "--points", *(f"{p['side']}:{p['batch']}" for p in batch)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
            for line in proc.stdout:
                if line.startswith("{"):
                    row = json.loads(line)
                    rows.append(row)
                    _append(out, row)
                    progress(f"  {fam} {row['side']} px x{row['batch']}: {row['s_per_image']} s/image, "
                             f"{row['peak_mb']} MiB")
            if proc.wait() != 0:
                progress(f"  {fam}: child failed (exit {proc.returncode})")
    return rows


def _append(path: str | None, row: dict) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--sides", type=int, nargs="+", default=SIDES, help="image sides of the side series (batch 1)")
    p.add_argument("--batches", type=int, nargs="+", default=BATCHES, help="batch sizes of the batch series")
    p.add_argument("--batch-sides", type=int, nargs="*", default=BATCH_SIDES, help="the sides of the batch series")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-mb", type=float, default=4000.0, help="skip a point whose extrapolated peak exceeds this")
    p.add_argument("--max-seconds", type=float, default=300.0, help="skip a point whose extrapolated call exceeds this")
    p.add_argument("--warmup-pixels", type=int, default=512 * 512 * 2,
                   help="warm up at the same input only where batch x side^2 is at most this")
    p.add_argument("--factor", type=float, default=FACTOR, help="flag a step whose cost per unit rises more than this")
    p.add_argument("--out", help="JSON-lines file of the rows (appended; points already there are not re-run)")
    p.add_argument("--table-only", action="store_true", help="print the table of --out without measuring")
    p.add_argument("--confirm", action="store_true",
                   help="re-time the two points of each flagged time step in turns in one process (noisy machines)")
    p.add_argument("--rounds", type=int, default=3, help="timed calls per point with --confirm")
    p.add_argument("--alternate", help=argparse.SUPPRESS)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--points", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        points = [{"family": args.child, "side": int(s), "batch": int(b)}
                  for s, b in (t.split(":") for t in args.points)]
        child(args.child, points, args.threads, args.warmup_pixels)
        return 0
    if args.alternate:
        points = [{"family": args.alternate, "side": int(s), "batch": int(b)}
                  for s, b in (t.split(":") for t in args.points)]
        alternate(args.alternate, points, args.threads, args.rounds)
        return 0
    if args.table_only:
        rows = [r for r in _load(args.out) if r["family"] in args.families]
    else:
        rows = run(args.families, args.sides, args.batches, args.batch_sides, args.threads, args.max_mb,
                   args.max_seconds, args.warmup_pixels, args.out, progress=lambda s: print(s, flush=True))
    flags = super_linear(rows, args.factor)
    if args.confirm:
        flags = confirm(rows, flags, args.threads, args.rounds, args.factor, progress=lambda s: print(s, flush=True))
    print(format_table(rows, flags))
    return 0


if __name__ == "__main__":
    sys.exit(main())
