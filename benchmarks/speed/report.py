"""Benchmark tables: the main table, the scaling tables, the markdown report and its README slot."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch

from segzoo.checkpoint import atomic_write

START_MARKER = "<!-- benchmark:start -->"
END_MARKER = "<!-- benchmark:end -->"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(threads: str | int | None = None) -> str:
    """CPU model, logical cores, torch threads (this process's unless given), GPU if any, torch version."""
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    threads = torch.get_num_threads() if threads is None else threads
    return (f"{cpu_model()} ({os.cpu_count()} logical cores), torch threads {threads}{gpu}, "
            f"torch {torch.__version__}")


def _mb(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def _render(header: list[str], lines: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*c) for c in lines])


def _batch(size: str) -> int:
    return int(str(size).split("x")[0]) if str(size)[:1].isdigit() else 1


def format_table(rows: list[dict], markdown: bool = False, peak_gflops: float | None = None) -> str:
    """Rows as a fixed-width or markdown table.

    Columns: median latency (ms), images/s, peak memory above rest (MiB), parameters,
    GFLOPs of one step, achieved GFLOP/s and its share of the machine's measured dense
    convolution throughput, then the anchor's latency and memory and the ratio
    segzoo / anchor (below 1.0: segzoo is faster); last the anchor's achieved GFLOP/s and
    segzoo's as a share of it (work per second, for models that add FLOPs to a bare body).
    """
    header = ["model", "mode", "input", "params (M)", "GFLOPs", "ms", "img/s", "peak MiB",
              "GFLOP/s", "% peak", "anchor", "anchor ms", "anchor MiB", "ratio", "anchor GFLOP/s", "GFLOP/s / anchor's"]
    lines = []
    for r in rows:
        if "error" in r:  # a failed case keeps its row, with the error where the anchor would be
            lines.append([r["name"], r["mode"], r["size"], *["-"] * 7, f"failed: {r['error'][:80]}", *["-"] * 5])
            continue
        gf = r.get("flops")
        achieved = gf / r["segzoo_s"] / 1e9 if gf else None
        agf = r.get("anchor_flops")  # the anchor's achieved GFLOP/s (a bare body's: the work-rate target)
        anchor_achieved = agf / r["anchor_s"] / 1e9 if agf and r.get("anchor_s") else None
        lines.append([
            r["name"], r["mode"], r["size"], f"{r['params'] / 1e6:.2f}",
            f"{gf / 1e9:.1f}" if gf else "-",
            f"{r['segzoo_s'] * 1e3:.1f}", f"{_batch(r['size']) / r['segzoo_s']:.2f}", _mb(r.get("segzoo_mem")),
            f"{achieved:.0f}" if achieved else "-",
            f"{100 * achieved / peak_gflops:.0f}%" if achieved and peak_gflops else "-",
            r.get("anchor") or "-",
            f"{r['anchor_s'] * 1e3:.1f}" if "anchor_s" in r else "-",
            _mb(r.get("anchor_mem")),
            f"{r['ratio']:.2f}" if "ratio" in r else "-",
            f"{anchor_achieved:.0f}" if anchor_achieved else "-",
            f"{achieved / anchor_achieved:.2f}" if achieved and anchor_achieved else "-",
        ])
    return _render(header, lines, markdown)


def _per(seconds: float | None, amount: float) -> str:
    return "-" if seconds is None else f"{seconds * 1e3 / amount:.2f}"


def _marginal(seconds: float | None, prev_seconds: float | None, x: float, prev_x: float | None) -> str:
    """Cost of each unit added since the previous point: constant for linear growth."""
    if seconds is None or prev_seconds is None or prev_x is None or x == prev_x:
        return "-"
    return f"{(seconds - prev_seconds) * 1e3 / (x - prev_x):.2f}"


def format_scaling(rows: list[dict], markdown: bool = False) -> str:
    """One table per series (rows with ``series`` and ``x``), per model in the given order.

    Input side: latency per megapixel and the marginal cost of each added megapixel
    (constant when time grows linearly with pixels). Detections kept: latency per
    detection and the marginal cost of each added detection (constant when linear,
    growing when superlinear), for both sides.
    """
    out = []
    for series in dict.fromkeys(r["series"] for r in rows if "series" in r):
        pts = [r for r in rows if r.get("series") == series and "error" not in r]
        unit = "MPix" if series == "input side" else "det"
        header = ["model", "input", series, "ms", f"ms/{unit}", f"marginal ms/{unit}", "peak MiB", "anchor",
                  "anchor ms", f"anchor ms/{unit}", f"anchor marginal ms/{unit}", "ratio"]
        lines, prev = [], {}
        for r in pts:
            amount = _pixels(r["size"]) / 1e6 if series == "input side" else float(r["x"])
            p = prev.get(r["name"], {})
            lines.append([
                r["name"], r["size"], str(r["x"]), f"{r['segzoo_s'] * 1e3:.1f}", _per(r["segzoo_s"], amount),
                _marginal(r["segzoo_s"], p.get("segzoo_s"), amount, p.get("amount")), _mb(r.get("segzoo_mem")),
                r.get("anchor") or "-", f"{r['anchor_s'] * 1e3:.1f}" if "anchor_s" in r else "-",
                _per(r.get("anchor_s"), amount),
                _marginal(r.get("anchor_s"), p.get("anchor_s"), amount, p.get("amount")),
                f"{r['ratio']:.2f}" if "ratio" in r else "-",
            ])
            prev[r["name"]] = {**r, "amount": amount}
        out.append(f"{'### ' if markdown else ''}Scaling over {series}\n\n" + _render(header, lines, markdown))
    return "\n\n".join(out)


def _pixels(size: str) -> int:
    """Pixels per image of an ``NxCxHxW`` size string."""
    *_, h, w = (int(v) for v in str(size).split("x"))
    return h * w


def markdown_report(rows: list[dict], scaling_rows: list[dict] | None = None, peak_gflops: float | None = None,
                    date: datetime.date | None = None) -> str:
    """The README section: machine, date, measured conv peak, the main table and the scaling tables."""
    date = date or datetime.date.today()
    parts = [
        f"Measured on {machine_description()}, {date.isoformat()}"
        + (f"; dense 3x3 convolution peak {peak_gflops:.0f} GFLOP/s (float32)" if peak_gflops else "")
        + (f"; both sides run {rows[0]['options']}." if rows and rows[0].get("options") else "."),
        "Latency is the median of alternating segzoo/anchor runs (batch 1 inference unless noted); "
        "ratio = segzoo / anchor (below 1.0: segzoo is faster). GFLOPs count convolutions and matrix "
        "products (`torch.utils.flop_counter`); % peak compares the achieved GFLOP/s with the measured "
        "dense convolution. Peak MiB is the growth of memory (resident set on CPU, allocator on CUDA) "
        "during the last timed run: on CPU, memory that earlier runs freed and the allocator kept is "
        "not counted again. An anchor marked \"bare backbone\" is a lower bound, not a peer.",
        format_table(rows, markdown=True, peak_gflops=peak_gflops),
    ]
    if scaling_rows:
        parts.append(format_scaling(scaling_rows, markdown=True))
    return "\n\n".join(parts)


def replace_section(path: str | os.PathLike, text: str) -> None:
    """Replace what lies between the benchmark markers of ``path`` with ``text``, atomically.

    Raises:
        ValueError: the file lacks a marker, or has them out of order or more than once.
    """
    path = Path(path)
    content = path.read_text(encoding="utf-8")
    starts, ends = content.count(START_MARKER), content.count(END_MARKER)
    if starts != 1 or ends != 1 or content.index(START_MARKER) > content.index(END_MARKER):
        raise ValueError(
            f"{path} must contain {START_MARKER!r} once, followed by {END_MARKER!r} once (found {starts} and "
            f"{ends}); add the two lines where the benchmark table should go and run again")
    head, rest = content.split(START_MARKER)
    _, tail = rest.split(END_MARKER)
    atomic_write(path, f"{head}{START_MARKER}\n{text.strip()}\n{END_MARKER}{tail}".encode())
