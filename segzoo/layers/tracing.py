"""One answer to "is this forward being traced or compiled?" for the whole library."""

from __future__ import annotations

import torch


def is_tracing() -> bool:
    """True under ``torch.compile``, ``torch.export``, TorchScript tracing/scripting or ONNX export.

    Data-dependent checks (input values, target labels) are skipped then: they would need a
    host sync, which tracing cannot express, and the traced graph is checked eagerly first.
    """
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


__all__ = ["is_tracing"]
