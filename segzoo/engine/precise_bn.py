"""Precise BatchNorm statistics (``train.precise_bn``), as detectron2's ``PreciseBN`` hook.

BatchNorm's running statistics follow the training batches at momentum 0.1 from mean 0 and
variance 1. Freshly initialised convolutions before a BatchNorm can output a variance far from 1
(a DeepLabV3+ decoder on an ImageNet body: about 0.02), and after a few tens of steps the running
variance still remembers its start: eval mode then divides by a variance too large and the
network's evaluated output is a fraction of what it computes in training. Recomputing the
statistics over ``N`` training batches just before the weights are evaluated or saved removes
that lag at any run length (Wu & He's "precise BN"; Yuxin Wu and Kaiming He, *Rethinking "Batch"
in BatchNorm*, 2021).

:func:`update_bn_stats` resets the running statistics of every BatchNorm that trains, runs the
model in train mode without gradients over the batches with ``momentum=None`` (PyTorch's
cumulative average: the result is the mean of the batches' means and of their unbiased
variances), then restores each layer's momentum and step counter. FrozenBatchNorm2d
(``train.freeze_backbone_bn``, ``train.freeze_backbone``) is not a BatchNorm and is never touched,
nor is a BatchNorm a model keeps in eval mode while it trains.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from segzoo.engine.distributed import all_reduce_mean


def training_batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers (any dimension, SyncBatchNorm included) whose running statistics training
    updates: those tracking statistics that are in train mode when ``model.train()`` is."""
    mode = model.training
    model.train()
    try:
        return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and m.track_running_stats and m.running_mean is not None and m.training]
    finally:
        model.train(mode)


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable, num_batches: int,
                    forward: Callable[[nn.Module, object], object]) -> int:
    """Recompute the running statistics of ``model``'s training BatchNorm layers over ``num_batches`` batches.

    Args:
        model: the unwrapped model (not its DDP wrapper, whose forward would broadcast rank 0's buffers).
        batches: an iterator of training batches; at most ``num_batches`` are drawn.
        num_batches: how many batches to average over (> 0).
        forward: ``forward(model, batch)`` runs the model on one batch (in train mode; its output is dropped).

    The global torch (CPU and CUDA), Python and NumPy random states are restored afterwards, so the
    passes (dropout, drop-path, samplers) leave the training random stream as it was. Under DDP each
    process averages its own batches and the statistics are then averaged over the processes, so every
    rank keeps the same buffers. The model's mode is restored.

    Returns:
        How many batches were used (fewer than ``num_batches`` when ``batches`` ran out); 0 when the model
        has no training BatchNorm (nothing is run).
    """
    if num_batches < 1:
        raise ValueError(f"precise BN needs at least one batch, got {num_batches}")
    norms = training_batch_norms(model)
    if not norms:
        return 0
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    old_stats = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    mode = model.training
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    used = 0
    try:
        with torch.random.fork_rng(devices=devices):
            for m in norms:
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over the batches seen since the reset
            model.train()
            for batch in batches:
                forward(model, batch)
                used += 1
                if used >= num_batches:
                    break
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        model.train(mode)
        for m, (momentum, tracked), (mean, var) in zip(norms, saved, old_stats):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
            if used == 0:  # nothing was seen: keep the statistics training had
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
    for m in norms:
        m.running_mean.copy_(all_reduce_mean(m.running_mean))
        m.running_var.copy_(all_reduce_mean(m.running_var))
    return used


__all__ = ["training_batch_norms", "update_bn_stats"]
