"""Where a run computes: device selection, the autocast dtype, and moving batches there.

Shared by the trainer, the evaluator and the CLI, so that ``train.device`` and ``train.amp``
mean the same thing everywhere.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["amp_dtype_for", "autocast", "select_device", "to_device"]


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: CUDA (this process's local rank under torchrun), then MPS, then CPU."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            name = f"cuda:{local_rank % torch.cuda.device_count()}"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={name!r} but CUDA is not available; use train.device=auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"train.device={name!r} but this machine has {torch.cuda.device_count()} CUDA devices")
        torch.cuda.set_device(device)
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"train.device={name!r} but MPS is not available; use train.device=auto or cpu")
    return device


def amp_dtype_for(setting: str | bool | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None: full precision).

    ``auto``: bf16 on CUDA GPUs that support it, fp16 (with a GradScaler) on older ones,
    off on CPU and MPS. ``bf16`` and ``fp16`` force a dtype; ``off`` (or false) disables AMP.
    """
    if setting in (False, None, "off", "none", "fp32"):
        return None
    if setting in ("auto", True):
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use train.amp=bf16 or off on CPU")
        return torch.float16
    raise ValueError(f"unknown train.amp={setting!r}; use auto, bf16, fp16 or off")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(images, targets, device: torch.device, channels_last: bool = False):
    """Move a collated batch (tensor or list images; tensor or list-of-dict targets) to ``device``."""
    if isinstance(images, torch.Tensor):
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
    else:
        images = [im.to(device, non_blocking=True) for im in images]
    if isinstance(targets, torch.Tensor):
        targets = targets.to(device, non_blocking=True)
    else:
        targets = [{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
                   for t in targets]
    return images, targets
