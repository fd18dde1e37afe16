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


def _measure(model: nn.Module, step, inputs, mode: str, device, warmup, runs) -> float:
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
    return time_call(fn, device, warmup, runs)


def run_case(case: Case, device: torch.device, warmup: int = 2, runs: int = 5) -> dict:
    torch.manual_seed(0)
    inputs = case.make_input(device)
    step = case.step or _default_step
    row = {"name": case.name, "mode": case.mode, "size": case.size, "anchor": case.anchor_name}
    model = case.build()
    row["params"] = sum(p.numel() for p in model.parameters())
    row["segzoo_s"] = _measure(model, step, inputs, case.mode, device, warmup, runs)
    del model
    gc.collect()
    if case.anchor is not None:
        anchor = case.anchor()
        a_in = case.anchor_input(inputs) if case.anchor_input else inputs
        row["anchor_s"] = _measure(anchor, case.anchor_step or step, a_in, case.mode, device,
                                   warmup, runs)
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


def format_table(rows: list[dict], markdown: bool = False) -> str:
    """Rows as a fixed-width or markdown table (times in milliseconds)."""
    header = ["model", "mode", "input", "params (M)", "segzoo ms", "anchor", "anchor ms", "ratio"]
    lines = []
    for r in rows:
        lines.append([
            r["name"], r["mode"], r["size"], f"{r['params'] / 1e6:.2f}",
            f"{r['segzoo_s'] * 1e3:.1f}", r.get("anchor") or "-",
            f"{r['anchor_s'] * 1e3:.1f}" if "anchor_s" in r else "-",
            f"{r['ratio']:.2f}" if "ratio" in r else "-",
        ])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*c) for c in lines])
