"""The ledger's tables: runs grouped by case, each metric as mean (min-max over seeds), and the README slot."""

from __future__ import annotations

import datetime
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.speed.report import machine_description
from segzoo.checkpoint import atomic_write

from .cases import CASES

START_MARKER = "<!-- realdata:start -->"
END_MARKER = "<!-- realdata:end -->"


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _cell(s: dict[str, float] | None, n: int) -> str:
    if s is None:
        return "-"
    if n == 1:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f})"


def verdict(seg: list[float], peer: list[float]) -> str:
    """segzoo against its peer: the gap of the means beside the run-to-run spread (the larger range of the two)."""
    if not peer:
        return "no peer"
    gap = statistics.fmean(seg) - statistics.fmean(peer)
    spread = max(max(seg) - min(seg), max(peer) - min(peer))
    if len(seg) < 2:
        return f"{gap:+.3f} (one seed: no spread)"
    if gap < -spread:
        return f"segzoo lower by {-gap:.3f} > spread {spread:.3f}"
    return f"{gap:+.3f}, within spread {spread:.3f}" if abs(gap) <= spread else f"segzoo higher by {gap:.3f}"


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (case, metric): values over seeds for both sides, times per run, checks."""
    rows = []
    for name in dict.fromkeys(r["case"] for r in results):
        runs = [r for r in results if r["case"] == name]
        case = CASES.get(name)
        paired = [r for r in runs if r.get("peer")]
        for k, label in enumerate(runs[0]["segzoo"]["metrics"]):
            seg = [r["segzoo"]["metrics"][label] for r in runs]
            peer = [r["peer"]["metrics"][label] for r in paired]
            rows.append({
                "case": name, "first": k == 0, "metric": label,
                "data": case.data_name if case else name, "model": case.model if case else "?",
                "peer_name": (case.peer if case else None) or "-",
                "seeds": [r["seed"] for r in runs], "steps": sorted({r["steps"] for r in runs}),
                "segzoo": _stats(seg), "peer": _stats(peer) if peer else None, "verdict": verdict(seg, peer),
                "segzoo_train_s": statistics.fmean(r["segzoo"]["train_s"] for r in runs),
                "segzoo_checkpoint_s": statistics.fmean(r["segzoo"]["checkpoint_s"] for r in runs),
                "peer_train_s": statistics.fmean(r["peer"]["train_s"] for r in paired) if paired else None,
                "same_batches": all(r.get("same_batches", True) for r in runs),
                "init_agree": all(r.get("init", {}).get("agree", True) for r in runs),
            })
    return rows


def _time(row: dict[str, Any]) -> str:
    seg = f"{row['segzoo_train_s']:.0f} s"
    if row["segzoo_checkpoint_s"] >= 1:
        seg += f" ({row['segzoo_checkpoint_s']:.0f} s checkpoints)"
    return seg if row["peer_train_s"] is None else f"{seg} / {row['peer_train_s']:.0f} s"


def format_table(rows: list[dict[str, Any]], markdown: bool = False) -> str:
    header = ["data", "segzoo model", "peer", "metric", "segzoo", "peer", "segzoo - peer", "steps", "seeds",
              "train time per run, segzoo / peer"]
    lines = []
    for r in rows:
        n = len(r["seeds"])
        first = r["first"]
        name, _, note = r["model"].partition(" ")  # "maskrcnn_resnet50_fpn (backbone resnet18)"
        model = f"`{name}` {note}".strip() if markdown else r["model"]
        lines.append([r["data"] if first else "", model if first else "", r["peer_name"] if first else "", r["metric"],
                      _cell(r["segzoo"], n), _cell(r["peer"], n), r["verdict"],
                      "/".join(map(str, r["steps"])) if first else "", str(n) if first else "",
                      _time(r) if first else ""])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(c) + " |" for c in lines])
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*c) for c in lines])


def checks_line(rows: list[dict[str, Any]]) -> str:
    paired = [r for r in rows if r["first"] and r["peer"] is not None]
    if not paired:
        return ""
    batches = all(r["same_batches"] for r in paired)
    init = all(r["init_agree"] for r in paired)
    return (f"Paired runs start from identical weights (initial outputs agree: {'yes' if init else 'NO'}) and see "
            f"identical batches (hashed on both sides: {'yes' if batches else 'NO'}).")


def markdown_report(results: list[dict[str, Any]], command: str) -> str:
    rows = summarise(results)
    loads = [v for r in results for v in (r.get("load_start"), r.get("load_end")) if v is not None]
    load = f"{min(loads):.1f}-{max(loads):.1f}" if loads else "unknown"
    threads = sorted({r["threads"] for r in results if r.get("threads")})
    return "\n".join([
        f"Measured {datetime.date.today().isoformat()} on {machine_description('/'.join(map(str, threads)) or None)}"
        f"; 1-minute load average {load} during the runs. Values are the mean (min-max) over seeds; times are per "
        "run.",
        "",
        format_table(rows, markdown=True),
        "",
        checks_line(rows) + f" Reproduce with `{command}`.",
    ])


def replace_section(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` between the realdata markers in ``path`` (atomically; the markers must be there once)."""
    path = Path(path)
    content = path.read_text(encoding="utf-8")
    if content.count(START_MARKER) != 1 or content.count(END_MARKER) != 1 or \
            content.index(START_MARKER) > content.index(END_MARKER):
        raise ValueError(f"{path} must contain {START_MARKER!r} once, followed by {END_MARKER!r} once; add them where "
                         "the ledger should go")
    head, rest = content.split(START_MARKER)
    _, tail = rest.split(END_MARKER)
    atomic_write(path, f"{head}{START_MARKER}\n{text.strip()}\n{END_MARKER}{tail}".encode())
