"""Aspect-ratio grouped batches for detection training (torchvision's detection reference
``GroupedBatchSampler`` with ``create_aspect_ratio_groups``), repeatable and shardable.

Batching images of similar shape wastes less padding: a batch of landscape images pads to a
landscape canvas. Image sizes are read from the dataset's annotations or image headers, never
by decoding images.

Usage::

    sizes = image_sizes(dataset)                        # [(height, width), ...]
    sampler = GroupedBatchSampler(aspect_ratio_groups(sizes), batch_size=2, seed=0,
                                  num_replicas=world_size, rank=rank)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_instances)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ...
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, Subset


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]], k: int = 3) -> list[int]:
    """The group of each image by its aspect ratio ``width / height``.

    The bin edges are ``2 ** linspace(-1, 1, 2k + 1)`` (torchvision's reference, where
    ``--aspect-ratio-group-factor 3`` is the default), so there are ``2k + 2`` groups, from
    ratios below 1/2 to ratios of 2 and above; ``k=0`` puts portrait and landscape apart.

    Args:
        sizes: ``(height, width)`` per image.
        k: bins per factor of two.
    """
    if k < 0:
        raise ValueError(f"aspect-ratio group factor must be >= 0, got {k}")
    edges = [2 ** (-1 + 2 * i / (2 * k)) for i in range(2 * k + 1)] if k > 0 else [1.0]
    groups = []
    for i, (h, w) in enumerate(sizes):
        if h <= 0 or w <= 0:
            raise ValueError(f"image {i} has size {(h, w)}; sizes must be positive (height, width)")
        groups.append(bisect.bisect_right(edges, w / h))
    return groups


def _header_size(path: str | Path) -> tuple[int, int]:
    with Image.open(path) as im:  # reads the header only; pixels are decoded on load()
        w, h = im.size
    return h, w


def image_sizes(dataset: Any) -> list[tuple[int, int]]:
    """``(height, width)`` of every image of ``dataset``, without decoding images.

    Read, in this order, from the dataset's ``image_hw(index)`` method (the format readers'
    :class:`~segzoo.data.records.AnnotatedImages` have one), its COCO-style
    ``images`` records (``height``/``width``), its ``image_path(index)`` method or its
    ``samples`` list of ``(image path, ...)`` (image headers); a ``torch.utils.data.Subset``
    is followed to its dataset.
    """
    if isinstance(dataset, Subset):
        inner = image_sizes(dataset.dataset)
        return [inner[int(i)] for i in dataset.indices]
    n = len(dataset)
    if callable(getattr(dataset, "image_hw", None)):
        return [tuple(int(v) for v in dataset.image_hw(i)) for i in range(n)]
    records = getattr(dataset, "images", None)
    if isinstance(records, Sequence) and len(records) == n and all(
            isinstance(r, dict) and "height" in r and "width" in r for r in records):
        return [(int(r["height"]), int(r["width"])) for r in records]
    if callable(getattr(dataset, "image_path", None)):
        return [_header_size(dataset.image_path(i)) for i in range(n)]
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, Sequence) and len(samples) == n:
        return [_header_size(s[0] if isinstance(s, (tuple, list)) else s) for s in samples]
    raise TypeError(
        f"cannot read image sizes from {type(dataset).__name__} without loading it; give the dataset an "
        "image_hw(index) -> (height, width) or image_path(index) method, or pass the sizes yourself"
    )


def _repeat_to(items: list[int], n: int) -> list[int]:
    return (items * math.ceil(n / len(items)))[:n]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images all come from one group (e.g. :func:`aspect_ratio_groups`).

    Each epoch shuffles the indices with ``seed + epoch`` (the same on every process), shards
    them as ``DistributedSampler`` does (padded to a multiple of ``num_replicas`` by repeating
    the first indices, then every ``num_replicas``-th from ``rank``), and walks the shard,
    yielding a batch whenever a group has ``batch_size`` images. At the end, the fullest
    incomplete groups are topped up with repeats of their own images until the epoch has
    ``len(self)`` batches, the same number on every process (DDP needs that); images of
    incomplete groups beyond that are left out of the epoch, as in torchvision's reference.

    Args:
        group_ids: the group of each dataset index.
        batch_size: images per batch (per process).
        shuffle: shuffle every epoch; otherwise the dataset order.
        seed: base seed of the shuffle.
        num_replicas: number of processes (default: the DDP world size, else 1).
        rank: this process (default: the DDP rank, else 0).
        drop_last: ``len = shard // batch_size`` batches instead of ``ceil(shard / batch_size)``.
    """

    def __init__(self, group_ids: Sequence[int], batch_size: int, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(group_ids) == 0:
            raise ValueError("GroupedBatchSampler got no images (empty group_ids)")
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.num_replicas = num_replicas if num_replicas is not None else (
            torch.distributed.get_world_size() if dist else 1)
        self.rank = rank if rank is not None else (torch.distributed.get_rank() if dist else 0)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is not in [0, {self.num_replicas})")
        self.group_ids = [int(g) for g in group_ids]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Call before each epoch so that every epoch (and every process alike) shuffles anew."""
        self.epoch = epoch

    def shard_size(self) -> int:
        return math.ceil(len(self.group_ids) / self.num_replicas)

    def __len__(self) -> int:
        n = self.shard_size()
        return max(1, n // self.batch_size) if self.drop_last else math.ceil(n / self.batch_size)

    def _shard(self) -> list[int]:
        n = len(self.group_ids)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        order = _repeat_to(order, self.shard_size() * self.num_replicas)
        return order[self.rank::self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        yield from group_batches(self._shard(), self.group_ids, self.batch_size, len(self))


def group_batches(order: Sequence[int], group_ids: Sequence[int], batch_size: int, num_batches: int) -> list[list[int]]:
    """``num_batches`` batches of ``batch_size`` indices of one group each, in the order of ``order``.

    Walks ``order`` and emits a batch whenever a group has ``batch_size`` indices; then tops up
    the fullest incomplete groups with repeats of their own indices until there are
    ``num_batches`` (images of incomplete groups beyond that are left out, as in torchvision's
    reference). Used by :class:`GroupedBatchSampler` and by the trainer (``data.aspect_ratio_groups``).
    """
    buffers: dict[int, list[int]] = defaultdict(list)
    seen: dict[int, list[int]] = defaultdict(list)
    out: list[list[int]] = []
    for idx in order:
        group = group_ids[idx]
        buffers[group].append(idx)
        seen[group].append(idx)
        if len(buffers[group]) == batch_size:
            if len(out) == num_batches:
                return out
            out.append(buffers.pop(group))
    for group in sorted(buffers, key=lambda g: (-len(buffers[g]), g)):
        if len(out) >= num_batches:
            break
        batch = buffers[group]
        out.append(batch + _repeat_to(seen[group], batch_size - len(batch)))
    return out


# ---------------------------------------------------------------- the trainer's sharded, resumable sampling


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
            # the CPU generator only, which fork_rng restores: torch.manual_seed would also seed every
            # accelerator (left changed after the block) and costs about 1 ms per item on a CUDA build
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
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
    emitted whenever a group has ``batch_size`` samples (:func:`group_batches`),
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
