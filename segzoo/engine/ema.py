"""An exponential moving average of a model's weights (``train.ema``), as timm's ``ModelEmaV3``.

torch's ``AveragedModel`` with ``get_ema_multi_avg_fn`` is the other obvious choice; it is not
used because it reads its update counter back from the device twice per update (a host sync
per step on GPUs) and blends integer buffers (BatchNorm's ``num_batches_tracked``) as if they
were weights. Here the counter lives on the host and integer buffers are copied.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn


class ModelEma:
    """A copy of ``model`` whose floating-point parameters and buffers follow the model's.

    After each :meth:`update`, ``ema = decay * ema + (1 - decay) * weights`` for every
    floating-point tensor of the state dict (BatchNorm running statistics included, as in
    timm); integer buffers are copied. The copy stays in eval mode without gradients, on
    the model's device and in its memory format.

    Args:
        model: the model to average (the unwrapped module, not its DDP or compiled wrapper).
        decay: the decay per update, in (0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so that the
            average follows the weights closely at first (short runs, fine-tuning).

    Attributes:
        module: the averaged model; evaluate or save it like any segzoo model.
        updates: how many updates were applied (saved in the training state for resume).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = False) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}; 0.999-0.9999 are usual (train.ema_decay)")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay, self.warmup = float(decay), bool(warmup)
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The decay of the update that follows ``updates`` earlier ones."""
        if self.warmup:
            return min(self.decay, (1 + updates) / (10 + updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights (no host sync)."""
        weight = 1.0 - self.decay_at(self.updates)
        ema_state, state = self.module.state_dict(), model.state_dict()
        if ema_state.keys() != state.keys():
            raise ValueError("the model's state dict no longer has the keys of its EMA copy; the EMA must be "
                             "created from the model it follows")
        floats, targets = [], []
        for key, e in ema_state.items():
            w = state[key].detach()
            if e.is_floating_point():
                floats.append(e)
                targets.append(w.to(e.dtype))
            else:
                e.copy_(w)
        if floats:
            torch._foreach_lerp_(floats, targets, weight)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (the keys of ``model.state_dict()``)."""
        return self.module.state_dict()

    def load_state_dict(self, state: Mapping[str, torch.Tensor], updates: int) -> None:
        """Restore the averaged weights and the update count (strict: every key must match)."""
        self.module.load_state_dict(state, strict=True)
        self.updates = int(updates)


__all__ = ["ModelEma"]
