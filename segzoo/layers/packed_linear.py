"""Fully connected layers with their weights kept in oneDNN's layout, for float32 CPU inference.

Used by the R-CNN box head (its ``fold_for_inference``) and by :class:`segzoo.prepack.PrepackedLinear`
(every ``nn.Linear`` of the families :data:`segzoo.optimize.PREPACK_LINEAR` lists). The box head's
``fc6`` (``256 * 7 * 7 -> 1024`` on up to 1000 regions) is most of a Faster R-CNN's arithmetic at small
inputs. PyTorch's eager ``nn.Linear`` on the CPU runs the BLAS ``sgemm``; oneDNN's
matrix product with the weight reordered once into its blocked layout
(``torch.ops.mkldnn._reorder_linear_weight``) computes the same product (float rounding aside) in
about half the time on one thread of the AMD EPYC measured (docs/performance-optimize.md), with the
ReLU fused. :class:`PackedLinears` holds the packed copies of a few layers; it is used only where it
computes what the layers compute: float32 CPU inputs, gradients off, no autocast, no tracing, and the
layers' weights unchanged since packing (checked by their version counters). Anything else runs the
layers themselves. It is not part of the ``state_dict``; a deep copy or pickle packs the copied layers'
weights again.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segzoo.layers.tracing import is_tracing

__all__ = ["PackedLinears", "can_pack"]


def can_pack(layers: Sequence[nn.Linear]) -> bool:
    """Whether every layer is a float32 CPU ``nn.Linear`` and this PyTorch has oneDNN's packed matmul."""
    return (
        bool(torch.backends.mkldnn.is_available())
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and all(type(fc) is nn.Linear and fc.weight.dtype == torch.float32 and fc.weight.device.type == "cpu"
                for fc in layers)
    )


def _repacked(params: list, attr: str, rows: int | None) -> PackedLinears | None:
    """A copy's packed layers, packed again from its parameters (None where they cannot be: not float32 CPU
    tensors, or no oneDNN here); the module then runs its plain layers."""
    if not (bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and all(w.dtype == torch.float32 and w.device.type == "cpu" for w, _ in params)):
        return None
    packed = PackedLinears.__new__(PackedLinears)
    packed._pack(list(params), attr, rows)
    return packed


class PackedLinears:
    """oneDNN-packed copies of a chain of ``nn.Linear`` layers, each followed by a ReLU when ``relu``.

    Args:
        layers: the layers, in the order they apply.
        relu: whether a ReLU follows each layer (fused into the oneDNN call).
        rows: a typical number of input rows (a hint to oneDNN's choice of layout; any count works),
            or None for no hint.
    """

    def __init__(self, layers: Sequence[nn.Linear], relu: bool = True, rows: int | None = 512) -> None:
        if not can_pack(layers):
            raise ValueError("PackedLinears takes float32 CPU nn.Linear layers and a PyTorch with oneDNN")
        self._pack([(fc.weight, fc.bias) for fc in layers], "relu" if relu else "none", rows)

    def _pack(self, params: list, attr: str, rows: int | None) -> None:
        self.params, self.attr, self.rows = params, attr, rows
        self.versions = self._versions()
        with torch.no_grad():
            hint = () if rows is None else (rows,)
            self.packed = [torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), *hint) for w, _ in params]

    def _versions(self) -> list[int]:
        return [t._version for w, b in self.params for t in (w, b) if t is not None]

    def usable(self, x: torch.Tensor) -> bool:
        """Whether the packed path computes exactly what the layers would, for this input now."""
        return (
            x.dtype == torch.float32 and x.device.type == "cpu" and x.dim() >= 2 and x.numel() > 0
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and not is_tracing()
            and all(w.device.type == "cpu" and w.dtype == torch.float32 for w, _ in self.params)
            and self._versions() == self.versions
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]  # any leading dimensions, as nn.Linear
        x = x.reshape(-1, x.shape[-1])
        for packed, (_, bias) in zip(self.packed, self.params):
            x = torch.ops.mkldnn._linear_pointwise(x, packed, bias, self.attr, [], "")
        return x.view(*lead, x.shape[-1])

    # oneDNN tensors have no storage to copy: deep copies and pickles carry the layers' parameters (shared with the
    # copied layers through the copy's memo) and pack them again, or hold None where they cannot be packed
    def __reduce__(self):
        return (_repacked, (self.params, self.attr, self.rows))

