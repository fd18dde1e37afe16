"""Optimizers with parameter groups and learning-rate schedules (linear warmup, then poly, cosine or
step decay)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

SCHEDULES = ("poly", "cosine", "constant", "step")


def param_groups(model: nn.Module, weight_decay: float, *, backbone_lr_mult: float = 1.0,
                 norm_bias_decay: bool = False) -> list[dict[str, Any]]:
    """Split trainable parameters into groups.

    Norm weights and biases (every parameter with fewer than 2 dimensions) get no weight
    decay unless ``norm_bias_decay`` (then every parameter is decayed, as in the official
    HRNet, mmsegmentation and torchvision reference recipes); parameters under
    ``model.backbone`` get ``lr_mult = backbone_lr_mult``. Frozen parameters
    (``requires_grad=False``) are left out.

    Returns:
        Up to four groups, each with ``params``, ``weight_decay``, ``lr_mult`` and ``name``.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        in_backbone = name.startswith("backbone.")
        decay = p.ndim >= 2 or norm_bias_decay
        groups.setdefault((in_backbone, decay), []).append(p)
    if not groups:
        raise ValueError("the model has no trainable parameters; unset train.freeze_backbone or unfreeze a part")
    out = []
    for (in_backbone, decay), params in sorted(groups.items()):
        out.append({
            "params": params,
            "weight_decay": weight_decay if decay else 0.0,
            "lr_mult": backbone_lr_mult if in_backbone else 1.0,
            "name": f"{'backbone' if in_backbone else 'head'}_{'decay' if decay else 'no_decay'}",
        })
    return out


def build_optimizer(
    model: nn.Module,
    name: str = "sgd",
    *,
    lr: float = 0.01,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    backbone_lr_mult: float = 1.0,
    norm_bias_decay: bool = False,
) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over :func:`param_groups`; each group's lr is ``lr * lr_mult``."""
    groups = param_groups(model, weight_decay, backbone_lr_mult=backbone_lr_mult, norm_bias_decay=norm_bias_decay)
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; train.optimizer must be 'sgd' or 'adamw'")


def lr_factor(
    step: int,
    total_steps: int,
    schedule: str = "poly",
    *,
    warmup_steps: int = 0,
    warmup_factor: float = 0.001,
    poly_power: float = 0.9,
    min_lr_ratio: float = 0.0,
    milestones: tuple[int, ...] = (),
    gamma: float = 0.1,
) -> float:
    """The learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear warmup from ``warmup_factor`` to 1 over ``warmup_steps``, multiplied by the decay:
    ``poly``: ``(1 - step / total) ** power``; ``cosine``: half a cosine from 1 to 0; both
    floored at ``min_lr_ratio`` (``min + (1 - min) * decay``: mmsegmentation's ``eta_min``
    as a fraction of the lr). ``constant``: 1. ``step``: ``gamma ** k`` from step
    ``milestones[k - 1]`` on (torch's ``MultiStepLR``, detectron2's ``STEPS``).
    """
    progress = min(step / max(total_steps, 1), 1.0)
    if schedule == "step":
        decay = gamma ** sum(step >= m for m in milestones)
    elif schedule == "poly":
        decay = (1.0 - progress) ** poly_power
    elif schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "constant":
        decay = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; train.schedule must be one of {SCHEDULES}")
    decay = min_lr_ratio + (1.0 - min_lr_ratio) * decay
    if step < warmup_steps:
        alpha = step / warmup_steps
        decay *= warmup_factor * (1 - alpha) + alpha
    return decay


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, schedule: str = "poly", *,
                    warmup_steps: int = 0, warmup_factor: float = 0.001, poly_power: float = 0.9,
                    min_lr_ratio: float = 0.0, milestones: tuple[int, ...] = (),
                    gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step with :func:`lr_factor` (``milestones`` in steps)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; train.schedule must be one of {SCHEDULES}")
    if schedule == "step" and not milestones:
        raise ValueError("train.schedule=step needs train.milestones (e.g. [16, 22] epochs); or use another schedule")
    if list(milestones) != sorted(set(milestones)):
        raise ValueError(f"train.milestones must increase, got {list(milestones)}")
    fn = functools.partial(lr_factor, total_steps=total_steps, schedule=schedule, warmup_steps=warmup_steps,
                           warmup_factor=warmup_factor, poly_power=poly_power, min_lr_ratio=min_lr_ratio,
                           milestones=tuple(milestones), gamma=gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
