"""Distributed helpers: process-group setup under torchrun, barriers and reductions (the sharded, resumable
samplers are data's: :mod:`segzoo.data.samplers`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist


def world_info() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)``: from the process group when there is one, else torchrun's env."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> bool:
    """Start the process group when launched by torchrun with more than one process.

    Uses NCCL for CUDA devices and gloo otherwise. Returns whether training is distributed.
    """
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of ``t`` over ranks (``t`` itself when not distributed)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t / dist.get_world_size()


def all_reduce_min(t: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t


def run_on_main(fn: Callable[[], Any]) -> None:
    """Call ``fn`` on the main process; when it raises, every process raises.

    The main process re-raises its own exception; the others raise a RuntimeError with its
    message, so no process is left waiting in a collective call for one that gave up.
    """
    rank = world_info()[0]
    error: BaseException | None = None
    if rank == 0:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (re-raised below, after telling the other processes)
            error = e
    if is_distributed():
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(box, src=0)
        if rank != 0 and box[0] is not None:
            raise RuntimeError(f"the main process stopped: {box[0]}")
    if error is not None:
        raise error
