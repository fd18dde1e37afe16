"""Gradient checkpointing of a block that leaves BatchNorm statistics as a plain forward leaves them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def _restore_buffers(module: nn.Module) -> Iterator[None]:
    """Put the module's buffers back as they were once the block has been recomputed.

    The recomputation in backward runs the block's forward a second time in training mode,
    so BatchNorm would fold the batch into its running statistics twice (and count it
    twice in ``num_batches_tracked``). Buffers are small; copying them is cheap.
    """
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)


def checkpoint_module(module: nn.Module, *args: Any, enabled: bool = True) -> Any:
    """``module(*args)``, its activations recomputed in backward instead of kept (less memory).

    Runs the module plainly when ``enabled`` is False or no gradient is recorded (evaluation). The RNG state is
    replayed for the recomputation (dropout draws the same masks), and the buffers that the
    recomputation changes (BatchNorm running statistics) are restored, so a checkpointed
    training step updates the weights and the statistics exactly as a plain one does.
    """
    if not enabled or not torch.is_grad_enabled():
        return module(*args)
    return checkpoint(module, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), _restore_buffers(module)))


__all__ = ["checkpoint_module"]
