"""Distributed helpers: process-group setup under torchrun, barriers and reductions (the sharded, resumable
samplers are data's: :mod:`segzoo.data.samplers`)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from segzoo.data.samplers import GroupedShardBatches, SeededDataset, ShardSampler


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


class EpochLoader:
    """The training batches, epoch by epoch: each epoch a fresh DataLoader over :class:`SeededDataset`
    and the :class:`ShardSampler` (cut into one-group batches by :class:`GroupedShardBatches` with
    ``group_ids``), with a private generator seeded by ``seed``; so an epoch, or the rest of one after a
    resume, yields the batches an uninterrupted run gets, and creating a loader never touches the global RNG.

    Args:
        dataset: the training items ``(image, target)``.
        sampler: this rank's shard (``shuffle=True``).
        batch_size: the per-process micro-batch.
        collate_fn: the task's collate.
        seed: ``train.seed``.
        num_workers, pin_memory: as :class:`~torch.utils.data.DataLoader`'s.
        group_ids: each item's aspect-ratio group (``data.aspect_ratio_groups``), or None.
    """

    def __init__(self, dataset: Dataset, sampler: ShardSampler, batch_size: int, collate_fn: Callable, seed: int,
                 num_workers: int = 0, pin_memory: bool = False, group_ids: list[int] | None = None) -> None:
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.collate_fn, self.seed = collate_fn, seed
        self.num_workers, self.pin_memory, self.group_ids = num_workers, pin_memory, group_ids

    def epoch(self, epoch: int, skip: int = 0) -> Iterator:
        """The batches of ``epoch``, after the first ``skip`` samples of this rank's shard (a resumed epoch)."""
        self.sampler.set_epoch(epoch, skip=skip)
        return iter(self.loader())

    def loader(self) -> DataLoader:
        """A DataLoader over the sampler's current epoch."""
        seeded = SeededDataset(self.dataset, self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        if self.group_ids is not None:
            return DataLoader(seeded, batch_sampler=GroupedShardBatches(self.sampler, self.group_ids, self.batch_size),
                              collate_fn=self.collate_fn, num_workers=self.num_workers, pin_memory=self.pin_memory,
                              generator=generator)
        return DataLoader(seeded, batch_size=self.batch_size, sampler=self.sampler, collate_fn=self.collate_fn,
                          num_workers=self.num_workers, drop_last=True, pin_memory=self.pin_memory,
                          generator=generator)


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
