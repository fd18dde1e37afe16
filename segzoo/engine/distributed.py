"""Distributed helpers: process-group setup under torchrun, sharded resumable sampling, reductions."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

from segzoo.data.samplers import group_batches


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


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, index)."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SeededDataset(Dataset):
    """Wraps a dataset so each item's random augmentation depends only on (seed, epoch, index).

    Keys are ``(index, epoch)`` pairs (as :class:`ShardSampler` yields them). The global
    torch RNG of the calling process is left untouched, so results do not depend on the
    number of workers, the number of processes, or where a resumed run restarts.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class ShardSampler(Sampler):
    """Epoch-seeded shuffling, sharded over ranks, that can start part-way through an epoch.

    Training (``shuffle=True``): the epoch's permutation is cut to ``num_samples_per_rank *
    world_size`` items and rank ``r`` takes every ``world_size``-th item from ``r``, so the
    first global batch of a 2-process run holds the same samples as the first batch of a
    1-process run with twice the batch size. Evaluation (``shuffle=False``): every sample
    exactly once over all ranks (ranks may get one sample more than others).

    Yields ``(index, epoch)`` pairs for :class:`SeededDataset`.

    Args:
        size: dataset length.
        rank: this process's rank.
        world_size: number of processes.
        shuffle: shuffle each epoch (training) or keep the order (evaluation).
        seed: shuffling seed.
        num_samples_per_rank: training only: samples each rank takes per epoch.
    """

    def __init__(self, size: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 num_samples_per_rank: int | None = None) -> None:
        self.size, self.rank, self.world_size = size, rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.num_samples_per_rank = num_samples_per_rank
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch and how many of this rank's samples to skip (for resuming)."""
        self.epoch, self.skip = epoch, skip

    def indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.rank, self.size, self.world_size))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        return perm[: self._taken()][self.rank :: self.world_size]

    def _taken(self) -> int:
        """How many of the epoch's permutation all ranks take together (training)."""
        n = self.num_samples_per_rank if self.num_samples_per_rank is not None else self.size // self.world_size
        return min(n * self.world_size, self.size)

    def count(self) -> int:
        """``len(self.indices())`` without drawing the permutation."""
        end = self._taken() if self.shuffle else self.size
        return len(range(self.rank, end, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.indices()[self.skip :]:
            yield i, self.epoch

    def __len__(self) -> int:
        return max(self.count() - self.skip, 0)


class GroupedShardBatches(Sampler):
    """A :class:`ShardSampler`'s epoch shard cut into batches of one group each (``data.aspect_ratio_groups``).

    The shard (same shuffle, same ranks, same sample count) is walked in order and a batch is
    emitted whenever a group has ``batch_size`` samples (:func:`segzoo.data.samplers.group_batches`),
    so every rank gets ``len(shard) // batch_size`` batches and a resumed epoch skips the batches
    already trained (``shard.skip`` samples). Yields lists of ``(index, epoch)`` pairs.
    """

    def __init__(self, shard: ShardSampler, group_ids: list[int], batch_size: int) -> None:
        if len(group_ids) != shard.size:
            raise ValueError(f"{len(group_ids)} group ids for a dataset of {shard.size} samples")
        self.shard, self.group_ids, self.batch_size = shard, group_ids, batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.shard.indices()
        batches = group_batches(order, self.group_ids, self.batch_size, len(order) // self.batch_size)
        for batch in batches[self.shard.skip // self.batch_size:]:
            yield [(i, self.shard.epoch) for i in batch]

    def __len__(self) -> int:
        return max(self.shard.count() // self.batch_size - self.shard.skip // self.batch_size, 0)


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
