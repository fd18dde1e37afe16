"""Benchmarks: segzoo models against the closest anchor on the same input, in one process.

A *case* pairs a segzoo model with its anchor (torchvision, smp, timm, ...) and an input.
Cases live in ``cases_*.py`` modules and register themselves with :func:`register_case`;
``python -m benchmarks.speed`` (:mod:`benchmarks.speed.main`) is a thin CLI over :func:`run`, :func:`run_scaling` and
:mod:`benchmarks.speed.report`. Both models are held in memory and called alternately
(segzoo, anchor, segzoo, anchor, ...) so that a change in machine load hits both sides
alike; each side's time is the median of its runs. The ratio is segzoo / anchor, so
below 1.0 means segzoo is faster.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import gc
import importlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.speed.optimized import format_optimized, no_grad_call, variant_calls
from benchmarks.speed.report import format_scaling, format_table, machine_description, markdown_report

CASE_MODULES = (
    "benchmarks.speed.cases_semantic",
    "benchmarks.speed.cases_hrnet",
    "benchmarks.speed.cases_detection",
    "benchmarks.speed.cases_centernet",
    "benchmarks.speed.cases_transformer",
    "benchmarks.speed.cases_mobilenetv2",
    "benchmarks.speed.cases_universal",
)
# the input-size series: a representative model of each family (every model would cost too much CPU)
SCALING_CASES = ("fcn_resnet50", "deeplabv3_resnet50", "unet_resnet34", "hrnet_w18", "maskrcnn_resnet50_fpn",
                 "centernet_resnet18")
SCALING_SIDES = (256, 512, 768, 1024)


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
        extra: values copied into the result row (e.g. the point of a series).
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
    extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Options:
    """How both sides of every case run (the same for segzoo and the anchor).

    Attributes:
        amp: ``"bf16"`` or ``"fp16"`` to run under ``torch.autocast``; None for float32.
        channels_last: convert models and 4-d input tensors to channels_last memory format.
        compile: a ``torch.compile`` backend (e.g. ``"inductor"``) applied to both models; None for eager.
        optimize: inference cases: the anchor and segzoo eager under ``torch.no_grad()`` (their READMEs'
            usage) beside ``segzoo.optimize`` and ``segzoo.quantize`` copies (:mod:`benchmarks.speed.optimized`);
            excludes the three options above.
        int8: with ``optimize``, also time the int8 model (semantic cases; compiling costs minutes).
    """

    amp: str | None = None
    channels_last: bool = False
    compile: str | None = None
    optimize: bool = False
    int8: bool = True

    def __post_init__(self) -> None:
        if self.amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be 'bf16', 'fp16' or None, got {self.amp!r}")
        if self.optimize and (self.amp or self.channels_last or self.compile):
            raise ValueError("optimize compares segzoo.optimize with plain models; it excludes amp, channels_last "
                             "and compile")

    def describe(self) -> str:
        if self.optimize:
            return "float32; anchor and segzoo eager under torch.no_grad(), beside segzoo.optimize" + (
                " and segzoo.quantize" if self.int8 else "")
        parts = [f"autocast {self.amp}" if self.amp else "float32"]
        parts += ["channels_last"] if self.channels_last else []
        parts += [f"torch.compile({self.compile})"] if self.compile else []
        return ", ".join(parts)


def _channels_last(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.contiguous(memory_format=torch.channels_last) if inputs.dim() == 4 else inputs
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_channels_last(v) for v in inputs)
    return inputs


_CASES: dict[str, Callable[..., list[Case]]] = {}
_SERIES: dict[str, Callable[[], list[Case]]] = {}


def register_case(name: str):
    """Register a function ``fn(size=None) -> list[Case]`` under ``name``."""

    def deco(fn):
        if name in _CASES:
            raise ValueError(f"benchmark case {name!r} registered twice")
        _CASES[name] = fn
        return fn

    return deco


def register_series(name: str):
    """Register a function ``fn() -> list[Case]``: one scaling series whose points carry
    ``extra={"series": ..., "x": ...}`` (run by ``--scaling``)."""

    def deco(fn):
        if name in _SERIES:
            raise ValueError(f"benchmark series {name!r} registered twice")
        _SERIES[name] = fn
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
    """Names of the registered cases matching a shell pattern (nothing is built)."""
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


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def time_call(fn: Callable[[], Any], device: torch.device, warmup: int = 2, runs: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    return statistics.median(_timed(fn, device) for _ in range(runs))


def auto_runs(seconds: float) -> tuple[int, int]:
    """Extra warm-up calls and timed runs for a step that took ``seconds`` on its first call.

    One warm-up call has been made already; slow steps (above 1 s) get 3 runs, medium ones 5,
    fast ones another warm-up and 7, so that a case costs seconds, not minutes.
    """
    if seconds > 1.0:
        return 0, 3
    if seconds > 0.25:
        return 0, 5
    return 1, 7


def time_interleaved(fns: list[Callable[[], Any]], device: torch.device, warmup: int | None = None,
                     runs: int | None = None, first: list[float] | None = None, memory: bool = False
                     ) -> tuple[list[float], list[int | None]]:
    """Median seconds of each function, timed in alternation: ``f0, f1, f0, f1, ...``.

    Args:
        fns: the calls to time (segzoo's and the anchor's).
        warmup: untimed calls of each before timing, the first call included; None: one, plus
            :func:`auto_runs`'s choice.
        runs: timed calls of each; None: chosen by :func:`auto_runs` from the first call.
        first: seconds of a first call of each already made (e.g. under the FLOP counter).
        memory: read each function's peak memory during its last timed run (the counter is
            reset outside the timed region, so no extra call is needed).

    Returns:
        The median seconds and the peak memory (bytes above the resting state, or None) of each.
    """
    if first is None:
        first = [_timed(fn, device) for fn in fns]
    extra, auto = auto_runs(max(first))
    warmup = 1 + extra if warmup is None else warmup
    runs = max(1, auto if runs is None else runs)
    for _ in range(warmup - 1):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    peaks: list[int | None] = [None] * len(fns)
    for i in range(runs):
        for k, fn in enumerate(fns):
            last = memory and i == runs - 1
            baseline = _reset_peak(device) if last else None
            times[k].append(_timed(fn, device))
            if last:
                peaks[k] = _peak_since(device, baseline)
    return [statistics.median(ts) for ts in times], peaks


def _first_call(fn: Callable[[], Any], device: torch.device, flops: bool) -> tuple[float, int | None]:
    """Seconds of a first (untimed, warm-up) call, run under the FLOP counter when ``flops``."""
    if not flops:
        return _timed(fn, device), None
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with counter:
            seconds = _timed(fn, device)
    except Exception:  # an op the counter cannot trace: no FLOPs, and a plain first call
        return _timed(fn, device), None
    return seconds, int(counter.get_total_flops())


def _callable(model: nn.Module, step, inputs, mode: str, device, options: Options | None = None
              ) -> Callable[[], Any]:
    """One call of ``step`` in the case's mode (inference mode, or train mode with backward)."""
    options = options or Options()
    model = model.to(device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
        inputs = _channels_last(inputs)
    model.train(mode != "infer")
    runner = torch.compile(model, backend=options.compile) if options.compile else model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options.amp)

    def call():
        if dtype is None:
            return step(runner, inputs)
        with torch.autocast(device.type, dtype=dtype):
            return step(runner, inputs)

    if mode == "infer":
        def fn():
            with torch.inference_mode():
                return call()
    else:
        def fn():
            out = call()
            model.zero_grad(set_to_none=True)
            return out
    return fn


def run_case(case: Case, device: torch.device, warmup: int | None = None, runs: int | None = None,
             flops: bool = True, options: Options | None = None) -> dict:
    """Time one case: a first call of each (segzoo's under the FLOP counter), then alternate runs;
    peak memory is read during the last run of each.

    Returns:
        A row: ``name, mode, size, anchor, params, segzoo_s, segzoo_mem, flops`` and, with an
        anchor, ``anchor_s, anchor_mem, ratio``; plus ``case.extra``.
    """
    torch.manual_seed(0)
    inputs = case.make_input(device)
    step = case.step or _default_step
    row = {"name": case.name, "mode": case.mode, "size": case.size, "anchor": case.anchor_name, **case.extra}
    model = case.build().to(device)
    row["params"] = sum(p.numel() for p in model.parameters())
    as_readme = options is not None and options.optimize and case.mode == "infer"
    fns = [no_grad_call(model, step, inputs) if as_readme else _callable(model, step, inputs, case.mode, device,
                                                                         options)]
    if case.anchor is not None:
        anchor = case.anchor().to(device)
        a_in = case.anchor_input(inputs) if case.anchor_input else inputs
        a_step = case.anchor_step or step
        fns.append(no_grad_call(anchor, a_step, a_in) if as_readme else _callable(anchor, a_step, a_in, case.mode,
                                                                                   device, options))
    variants: list[str] = []
    if as_readme:
        calls, info = variant_calls(model, step, inputs, int8=options.int8)
        row.update(info)
        variants = ["optimized", "int8"][:len(calls)]
        fns += calls
    first, row["flops"] = _first_call(fns[0], device, flops)  # the FLOP counter's call doubles as warm-up
    rest = fns[1:]
    if case.anchor is not None:  # the anchor's first call counts its FLOPs: its GFLOP/s beside segzoo's
        a_first, row["anchor_flops"] = _first_call(fns[1], device, flops)
        rest = fns[2:]
    first = [first] + ([a_first] if case.anchor is not None else []) + [_timed(fn, device) for fn in rest]
    times, peaks = time_interleaved(fns, device, warmup, runs, first, memory=True)
    row["segzoo_s"], row["segzoo_mem"] = times[0], peaks[0]
    if case.anchor is not None:
        row["anchor_s"], row["anchor_mem"], row["ratio"] = times[1], peaks[1], times[0] / times[1]
    for k, name in enumerate(variants, start=len(fns) - len(variants)):
        row[f"{name}_s"], row[f"{name}_mem"] = times[k], peaks[k]
    del model, fns
    gc.collect()
    return row


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _matching(names, patterns: list[str] | None) -> list[str]:
    return [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]


def _run_cases(cases: list[Case], dev: torch.device, warmup, runs, flops: bool, progress,
               options: Options | None = None) -> list[dict]:
    rows = []
    for case in cases:
        if progress:
            progress(f"{case.name} ({case.mode}, {case.size}{_point(case.extra)}) ...")
        try:
            row = run_case(case, dev, warmup, runs, flops, options)
        except Exception as e:  # one broken case must not lose an hour of measurements
            row = {"name": case.name, "mode": case.mode, "size": case.size, "anchor": case.anchor_name,
                   **case.extra, "error": f"{type(e).__name__}: {e}"}
        row["device"] = dev.type
        row["options"] = (options or Options()).describe()
        rows.append(row)
        if progress and "error" in row:
            progress(f"  FAILED {row['error']}")
        elif progress:
            ratio = f"{row['ratio']:.2f}" if "ratio" in row else "-"
            variants = "".join(f", {k} {row[k + '_s'] * 1e3:.0f} ms" for k in ("optimized", "int8") if k + "_s" in row)
            progress(f"  {row['segzoo_s'] * 1e3:.0f} ms, anchor "
                     f"{row['anchor_s'] * 1e3:.0f} ms, ratio {ratio}{variants}" if "anchor_s" in row
                     else f"  {row['segzoo_s'] * 1e3:.0f} ms (no anchor){variants}")
    return rows


def _point(extra: dict) -> str:
    return f", {extra['series']} {extra['x']}" if "series" in extra else ""


def run(patterns: list[str] | None = None, device: str | None = None, size: int | None = None,
        warmup: int | None = None, runs: int | None = None, progress: Callable[[str], None] | None = None,
        options: Options | None = None) -> list[dict]:
    """Run every case whose name matches one of ``patterns`` (all when empty).

    Args:
        size: input side for every case (default: each case's standard input).
        warmup, runs: fixed counts, or None to choose them from the first call (:func:`auto_runs`).
        progress: called with a line of text before and after each case.
        options: AMP, channels_last and compile for both sides (:class:`Options`).
    """
    _import_cases()
    names = _matching(_CASES, patterns)
    if patterns and not names:
        raise KeyError(f"no benchmark case matches {patterns}; available: {', '.join(_CASES)}")
    cases = [c for n in names for c in _CASES[n](size=size)]
    if options is not None and options.optimize:  # its columns are for inference; training rows would only cost time
        cases = [c for c in cases if c.mode == "infer"]
    return _run_cases(cases, _device(device), warmup, runs, True, progress, options)


def scaling_cases(patterns: list[str] | None = None) -> list[Case]:
    """The points of every scaling series: input side for :data:`SCALING_CASES` (inference
    cases only), then each registered series (e.g. Mask R-CNN's detections kept)."""
    _import_cases()
    cases = []
    for name in _matching(SCALING_CASES, patterns):
        for side in SCALING_SIDES:
            for case in _CASES[name](size=side):
                if case.mode == "infer":
                    case.extra = {**case.extra, "series": "input side", "x": side}
                    cases.append(case)
    for name in _matching(_SERIES, patterns):
        cases += _SERIES[name]()
    return cases


def run_scaling(patterns: list[str] | None = None, device: str | None = None, warmup: int | None = None,
                runs: int | None = None, progress: Callable[[str], None] | None = None,
                reuse: list[dict] | None = None, options: Options | None = None) -> list[dict]:
    """Time every scaling point (no FLOP pass); rows carry ``series`` and ``x``.

    Args:
        options: as in :func:`run`.
        reuse: rows already measured (the main table): a point with the same model, mode,
            input and anchor (e.g. 512 x 512 semantic, Mask R-CNN's 100 detections at 800)
            takes that row instead of being timed again.
    """
    known = {_key(r): r for r in reuse or [] if "error" not in r}
    todo, rows = [], []
    for case in scaling_cases(patterns):
        same = case.extra.get("same_as_main", True)  # False: a setting the main row does not share
        row = known.get((case.name, case.mode, case.size, case.anchor_name)) if same else None
        if row is not None:
            rows.append({**row, **case.extra})
        else:
            todo.append(case)
    rows += _run_cases(todo, _device(device), warmup, runs, False, progress, options)
    order = {(c.name, c.extra["series"], c.extra["x"]): i for i, c in enumerate(scaling_cases(patterns))}
    return sorted(rows, key=lambda r: order[(r["name"], r["series"], r["x"])])


def _key(row: dict) -> tuple:
    return row["name"], row["mode"], row["size"], row["anchor"]


__all__ = ["SCALING_CASES", "SCALING_SIDES", "Case", "Options", "auto_runs", "count_flops", "format_optimized",
           "format_scaling",
           "format_table",
           "list_cases", "machine_description", "machine_peak_gflops", "markdown_report", "register_case",
           "register_series", "run", "run_case", "run_scaling", "scaling_cases", "time_call",
           "time_interleaved"]
