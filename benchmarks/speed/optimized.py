"""The ``--optimize`` columns: segzoo eager, ``segzoo.optimize`` and ``segzoo.quantize`` (int8) beside the anchor.

The anchor and segzoo's eager model run the way their READMEs show (``model.eval()`` under
``torch.no_grad()``); the optimized model runs as ``segzoo.optimize`` returns it (BatchNorm folded,
channels_last where :data:`segzoo.optimize.CHANNELS_LAST` says, inference mode) and the int8 model as
``segzoo.quantize`` returns it (PT2E, x86 inductor quantizer, compiled with weight freezing; semantic
models and CenterNet, calibrated on the benchmark input itself: a speed figure, not an accuracy one). All of
them are timed in alternation in one run, so every ratio compares calls made under the same load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import segzoo
from benchmarks.speed.report import _render


def no_grad_call(model: nn.Module, step, inputs) -> Callable[[], Any]:
    """A call as the anchors' READMEs make it: eval mode, ``torch.no_grad()``."""
    model.eval()

    def fn():
        with torch.no_grad():
            return step(model, inputs)

    return fn


def variant_calls(model: nn.Module, step, inputs, int8: bool = True) -> tuple[list[Callable[[], Any]], dict]:
    """Calls of the optimized (and, for semantic models and CenterNet, int8) copies of ``model``, and what they
    applied."""
    fast = segzoo.optimize(model)
    calls = [no_grad_call(fast, step, inputs)]
    info = {"optimized": fast.choices.describe()}
    quantizable = model.task == "semantic" or hasattr(model, "forward_maps")  # CenterNet: QuantizedDetector
    if int8 and quantizable and isinstance(inputs, torch.Tensor) and inputs.device.type == "cpu":
        q = segzoo.quantize(model, inputs)
        calls.append(no_grad_call(q, step, inputs))
        info["int8"] = "PT2E x86 inductor, compiled"
    return calls, info


def _ms(row: dict, key: str) -> str:
    return f"{row[key] * 1e3:.0f}" if key in row else "-"


def _ratio(row: dict, key: str) -> str:
    return f"{row[key] / row['anchor_s']:.2f}" if key in row and row.get("anchor_s") else "-"


def _work_rate(row: dict, key: str) -> str:
    """Achieved GFLOP/s of a variant over the anchor's (1.0: the same work per second)."""
    if key not in row or not row.get("flops") or not row.get("anchor_flops") or not row.get("anchor_s"):
        return "-"
    return f"{(row['flops'] / row[key]) / (row['anchor_flops'] / row['anchor_s']):.2f}"


def format_optimized(rows: list[dict], markdown: bool = False) -> str:
    """Milliseconds and ratio to the anchor of each variant; ``-`` where a variant does not apply.

    The last two columns: eager and optimized achieved GFLOP/s as a share of the anchor's.
    """
    header = ["model", "input", "anchor", "anchor ms", "eager ms", "eager/anchor", "optimized ms",
              "optimized/anchor", "int8 ms", "int8/anchor", "optimized = ", "eager GFLOP/s / anchor's",
              "optimized GFLOP/s / anchor's"]
    lines = []
    for r in rows:
        if "error" in r or "optimized_s" not in r:
            continue
        lines.append([r["name"], r["size"], r.get("anchor") or "-", _ms(r, "anchor_s"), _ms(r, "segzoo_s"),
                      _ratio(r, "segzoo_s"), _ms(r, "optimized_s"), _ratio(r, "optimized_s"), _ms(r, "int8_s"),
                      _ratio(r, "int8_s"), r.get("optimized", "-"), _work_rate(r, "segzoo_s"),
                      _work_rate(r, "optimized_s")])
    return _render(header, lines, markdown)
