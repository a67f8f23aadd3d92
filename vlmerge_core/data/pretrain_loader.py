"""The pre-training DataLoader: workers, pinned memory, a distributed sampler, a seed per epoch.

:func:`make_pretrain_loader` always samples through ``torch.utils.data.DistributedSampler``: under
``torchrun`` (``torch.distributed`` initialised) with the process group's size and rank, otherwise
with the ``num_replicas``/``rank`` given (default one replica), so one process and N processes
draw from one permutation of the pairs, ``seed + epoch``, each rank a disjoint slice of it. The
workers' RNGs (numpy, ``random``, torch; for random augmentations) derive from the loader's seeded
generator, and the augmentation of an item on (seed, epoch, item) (:meth:`PretrainPairs.image`), so a
batch depends on the seed, the epoch and the rank only.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from vlmerge_core.data.pretrain_data import PretrainPairs


def seed_worker(worker_id: int) -> None:
    """Seed numpy and ``random`` in a DataLoader worker from its torch seed (torch's recipe)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class SkipSampler(Sampler):
    """A sampler's order without its first ``skip`` indices (a resume inside an epoch)."""

    def __init__(self, sampler: DistributedSampler, skip: int = 0):
        self.sampler, self.skip = sampler, skip
        self.num_replicas, self.rank = sampler.num_replicas, sampler.rank

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class PretrainLoader(DataLoader):
    """A DataLoader over :class:`PretrainPairs` that knows its source and sets its epoch.

    Attributes:
        data_format: the source's format (``"arrow"``, ``"coco_karpathy"``, ``"released"``, ``"micro"``).
        seed: the base RNG seed; epoch ``e`` shuffles with ``seed + e``.
    """

    def __init__(self, dataset: PretrainPairs, seed: int, **kw: Any):
        super().__init__(dataset, **kw)
        self.data_format = dataset.data_format
        self.seed = self.dataset.aug_seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Shuffle epoch ``epoch``'s order (``seed + epoch``) and reseed the workers alike."""
        self.epoch = self.dataset.epoch = epoch  # the items' augmentation draws follow the epoch
        self.sampler.set_epoch(epoch)
        self.generator.manual_seed(self.seed + epoch)

    def describe(self) -> dict[str, Any]:
        """What the loader reads, for metrics: the source's description, world size and rank."""
        s = self.sampler
        return {**self.dataset.describe(), "world_size": s.num_replicas, "rank": s.rank, "seed": self.seed}


def make_pretrain_loader(
    dataset: PretrainPairs,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    num_workers: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool | None = None,
    start: int = 0,
) -> PretrainLoader:
    """A :class:`PretrainLoader` of per-rank batches of ``batch_size`` pairs.

    Args:
        dataset: a :class:`PretrainPairs` source.
        batch_size: pairs per batch on this rank.
        seed: base RNG seed of the order and of the workers.
        epoch: the epoch to start at (:meth:`PretrainLoader.set_epoch`).
        num_workers: decoding processes (0 = in this process).
        shuffle: draw a permutation (else the pairs in order).
        drop_last: drop the last incomplete batch and make the ranks' shares equal.
        num_replicas, rank: the share of this process; default the process group's (if initialised)
            or one replica.
        pin_memory: page-locked batches; default when CUDA is available.
        start: batches of ``epoch`` to skip (a run resumed inside an epoch sees the rest of it).
    """
    if batch_size < 1:
        raise ValueError(f"make_pretrain_loader: batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:
        raise ValueError(f"make_pretrain_loader: the {dataset.data_format!r} source has no pairs")
    if dist.is_available() and dist.is_initialized():
        num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
        rank = dist.get_rank() if rank is None else rank
    sampler = DistributedSampler(
        dataset,
        num_replicas=num_replicas or 1,
        rank=rank or 0,
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
    loader = PretrainLoader(
        dataset,
        seed,
        batch_size=batch_size,
        sampler=SkipSampler(sampler, start * batch_size),
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        worker_init_fn=seed_worker,
        generator=torch.Generator(),
        persistent_workers=False,
    )
    loader.set_epoch(epoch)
    return loader
