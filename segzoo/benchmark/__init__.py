"""Benchmarks: segzoo models against the closest anchor on the same input, in one process.

A *case* pairs a segzoo model with its anchor (torchvision, timm, ...) and an input.
Cases live in ``cases_*.py`` modules and register themselves with :func:`register_case`;
``tools/benchmark.py`` is a thin CLI over :func:`run` and :func:`format_table`.
Times are medians over several runs after warm-up; the ratio is segzoo / anchor, so
below 1.0 means segzoo is faster.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gc
import importlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

CASE_MODULES = (
    "segzoo.benchmark.cases_semantic",
    "segzoo.benchmark.cases_hrnet",
    "segzoo.benchmark.cases_detection",
    "segzoo.benchmark.cases_centernet",
)


@dataclasses.dataclass
class Case:
    """One benchmark row.

    Attributes:
        name: row label, e.g. ``"fcn_resnet50"``.
        build: returns the segzoo model.
        make_input: returns the input (anything the step function takes), given a device.
        anchor: returns the anchor model, or None when there is none.
        anchor_name: label of the anchor, e.g. ``"torchvision fcn_resnet50"``.
        step: ``step(model, inputs)`` runs one timed call; inference by default.
        anchor_step: the same for the anchor (defaults to ``step``).
        anchor_input: input transform for the anchor (e.g. normalisation), given the input.
        mode: ``"infer"`` (eval, no grad) or ``"train"`` (train mode, with grad).
        size: a short description of the input, e.g. ``"1x3x512x512"``.
    """

    name: str
    build: Callable[[], nn.Module]
    make_input: Callable[[torch.device], Any]
    anchor: Callable[[], nn.Module] | None = None
    anchor_name: str = ""
    step: Callable[[nn.Module, Any], Any] | None = None
    anchor_step: Callable[[nn.Module, Any], Any] | None = None
    anchor_input: Callable[[Any], Any] | None = None
    mode: str = "infer"
    size: str = ""


_CASES: dict[str, Callable[..., list[Case]]] = {}


def register_case(name: str):
    """Register a function ``fn(size=None) -> list[Case]`` under ``name``."""

    def deco(fn):
        if name in _CASES:
            raise ValueError(f"benchmark case {name!r} registered twice")
        _CASES[name] = fn
        return fn

    return deco


def _import_cases() -> None:
    for m in CASE_MODULES:
        try:
            importlib.import_module(m)
        except ModuleNotFoundError as e:
            if e.name != m:  # a missing dependency inside an existing module is an error
                raise


def list_cases(pattern: str = "*") -> list[str]:
    _import_cases()
    return [n for n in _CASES if fnmatch.fnmatch(n, pattern)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _default_step(model: nn.Module, inputs: Any) -> Any:
    return model(inputs)


def _read_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak(device: torch.device) -> int | None:
    """Reset the peak-memory counter; returns the current baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:  # Linux: writing 5 to clear_refs resets VmHWM (peak resident memory) to VmRSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    rss = _read_status_kb("VmRSS")
    return None if rss is None else rss * 1024


def _peak_since(device: torch.device, baseline: int | None) -> int | None:
    """Peak memory above ``baseline`` in bytes (CUDA allocator, or process RSS on CPU)."""
    if baseline is None:
        return None
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) - baseline
    hwm = _read_status_kb("VmHWM")
    return None if hwm is None else max(hwm * 1024 - baseline, 0)


def count_flops(model: nn.Module, step, inputs, mode: str) -> int | None:
    """FLOPs of one step (convolutions and matrix products; 1 multiply-add = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        if mode == "infer":
            model.eval()
            with torch.no_grad(), counter:
                step(model, inputs)
        else:
            model.train()
            with counter:
                step(model, inputs)
            model.zero_grad(set_to_none=True)
    except Exception:  # an op the counter cannot trace: report no FLOPs rather than fail
        return None
    return int(counter.get_total_flops())


def machine_peak_gflops(device: torch.device | str = "cpu", runs: int = 5) -> float:
    """Measured dense 3x3-convolution throughput of this machine (GFLOP/s), float32."""
    device = torch.device(device)
    conv = nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device).eval()
    x = torch.rand(4, 256, 64, 64, device=device)
    flops = 2 * 4 * 256 * 256 * 9 * 64 * 64

    def fn():
        with torch.inference_mode():
            conv(x)

    return flops / time_call(fn, device, warmup=2, runs=runs) / 1e9


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, runs: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _measure(model: nn.Module, step, inputs, mode: str, device, warmup, runs) -> tuple[float, int | None]:
    """Median seconds of one step and the peak memory it used above the resting state."""
    model = model.to(device)
    if mode == "infer":
        model.eval()

        def fn():
            with torch.inference_mode():
                return step(model, inputs)
    else:
        model.train()

        def fn():
            out = step(model, inputs)
            model.zero_grad(set_to_none=True)
            return out
    seconds = time_call(fn, device, warmup, runs)
    gc.collect()
    baseline = _reset_peak(device)
    fn()
    _sync(device)
    return seconds, _peak_since(device, baseline)


def run_case(case: Case, device: torch.device, warmup: int = 2, runs: int = 5) -> dict:
    torch.manual_seed(0)
    inputs = case.make_input(device)
    step = case.step or _default_step
    row = {"name": case.name, "mode": case.mode, "size": case.size, "anchor": case.anchor_name}
    model = case.build()
    row["params"] = sum(p.numel() for p in model.parameters())
    row["segzoo_s"], row["segzoo_mem"] = _measure(model, step, inputs, case.mode, device, warmup, runs)
    row["flops"] = count_flops(model, step, inputs, case.mode)
    del model
    gc.collect()
    if case.anchor is not None:
        anchor = case.anchor()
        a_in = case.anchor_input(inputs) if case.anchor_input else inputs
        row["anchor_s"], row["anchor_mem"] = _measure(anchor, case.anchor_step or step, a_in, case.mode,
                                                      device, warmup, runs)
        row["ratio"] = row["segzoo_s"] / row["anchor_s"]
        del anchor
        gc.collect()
    return row


def run(patterns: list[str] | None = None, device: str | None = None, size: int | None = None,
        warmup: int = 2, runs: int = 5, progress: Callable[[dict], None] | None = None
        ) -> list[dict]:
    """Run every case whose name matches one of ``patterns`` (all when empty)."""
    _import_cases()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows = []
    names = [n for n in _CASES if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    if patterns and not names:
        raise KeyError(f"no benchmark case matches {patterns}; available: {', '.join(_CASES)}")
    for n in names:
        for case in _CASES[n](size=size):
            row = run_case(case, dev, warmup, runs)
            row["device"] = dev.type
            rows.append(row)
            if progress:
                progress(row)
    return rows


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {threads} torch threads{gpu}, torch {torch.__version__}"


def _mb(v: int | None) -> str:
    return "-" if v is None else f"{v / 2**20:.0f}"


def format_table(rows: list[dict], markdown: bool = False, peak_gflops: float | None = None) -> str:
    """Rows as a fixed-width or markdown table.

    Columns: median latency (ms), images/s, peak memory above rest (MiB), parameters,
    GFLOPs of one step, achieved GFLOP/s and its share of the machine's measured dense
    convolution throughput, then the anchor's latency and memory and the ratio
    segzoo / anchor (below 1.0: segzoo is faster).
    """
    header = ["model", "mode", "input", "params (M)", "GFLOPs", "ms", "img/s", "peak MiB",
              "GFLOP/s", "% peak", "anchor", "anchor ms", "anchor MiB", "ratio"]
    lines = []
    for r in rows:
        batch = int(str(r["size"]).split("x")[0]) if str(r["size"])[:1].isdigit() else 1
        gf = r.get("flops")
        achieved = gf / r["segzoo_s"] / 1e9 if gf else None
        lines.append([
            r["name"], r["mode"], r["size"], f"{r['params'] / 1e6:.2f}",
            f"{gf / 1e9:.1f}" if gf else "-",
            f"{r['segzoo_s'] * 1e3:.1f}", f"{batch / r['segzoo_s']:.2f}", _mb(r.get("segzoo_mem")),
            f"{achieved:.0f}" if achieved else "-",
            f"{100 * achieved / peak_gflops:.0f}%" if achieved and peak_gflops else "-",
            r.get("anchor") or "-",
            f"{r['anchor_s'] * 1e3:.1f}" if "anchor_s" in r else "-",
            _mb(r.get("anchor_mem")),
            f"{r['ratio']:.2f}" if "ratio" in r else "-",
        ])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*c) for c in lines])
