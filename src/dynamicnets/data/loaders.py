"""``DataLoader``s for a :class:`DataBundle`, single-process or data-parallel (DDP)."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..errors import ConfigError
from .bundle import DataBundle
from .in_memory import collate_batch


def _check(batch_size: int, num_workers: int, rank: int, world_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank={rank} must lie in [0, world_size={world_size})")


def make_eval_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    num_workers: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """An in-order loader for evaluation (validation or test split).

    With ``world_size > 1`` each rank gets a ``DistributedSampler`` shard (no shuffling).
    ``DistributedSampler`` pads the data set with repeated samples so that every rank gets
    the same number, so up to ``world_size - 1`` samples are counted twice across ranks.

    Args:
        dataset: yields ``(x, y)``.
        batch_size: samples per batch per process.
        num_workers: worker processes (0: load in the main process).
        rank, world_size: this process's rank and the number of processes.

    Returns:
        a loader of ``(x (B, *input_shape), y (B,))`` batches; the last batch may be
        smaller.
    """
    _check(batch_size, num_workers, rank, world_size)
    sampler = None
    if world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        collate_fn=collate_batch,
    )


def make_loaders(
    bundle: DataBundle,
    batch_size: int,
    *,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders for a bundle.

    ``batch_size`` is **per process**: under DDP the effective global batch is
    ``batch_size * world_size``.

    - Training loader: shuffled. With ``world_size == 1`` the order comes from a
      ``torch.Generator`` seeded with ``seed``, so two runs see the same batches. With
      ``world_size > 1`` it uses ``DistributedSampler(num_replicas=world_size, rank=rank,
      shuffle=True, seed=seed)``, whose shards are disjoint across ranks; the caller **must**
      call ``set_epoch(train_loader, epoch)`` (i.e. ``train_loader.sampler.set_epoch(epoch)``)
      before every epoch, or every epoch repeats the same order.
    - Validation loader: in order, never shuffled nor augmented; a ``DistributedSampler``
      shard per rank when ``world_size > 1`` (see :func:`make_eval_loader`).

    Random augmentation draws from torch's global generator: in worker processes
    ``DataLoader`` seeds it from the loader's seeded generator; with ``num_workers=0`` seed
    it yourself (``torch.manual_seed``) for runs that repeat exactly.

    Args:
        bundle: from :func:`load_data`.
        batch_size: samples per batch per process.
        num_workers: worker processes (0: load in the main process; the in-memory datasets
            fetch whole batches at once, so 0 is usually fast enough).
        seed: seed of the shuffling.
        rank, world_size: this process's rank and the number of processes.
        drop_last: drop the last, smaller training batch.

    Returns:
        ``(train_loader, val_loader)`` yielding ``x`` float32
        ``(B, *bundle.input_shape)`` and ``y`` int64 ``(B,)``.
    """
    _check(batch_size, num_workers, rank, world_size)
    generator = torch.Generator().manual_seed(seed)
    if world_size > 1:
        sampler = DistributedSampler(
            bundle.train, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )
        shuffle = False
    else:
        sampler, shuffle = None, True
    train_loader = DataLoader(
        bundle.train,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
        collate_fn=collate_batch,
    )
    val_loader = make_eval_loader(
        bundle.val, batch_size, num_workers=num_workers, rank=rank, world_size=world_size
    )
    return train_loader, val_loader


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell a loader's sampler which epoch starts (reshuffles a ``DistributedSampler``).

    Does nothing when the sampler has no ``set_epoch`` (single-process loaders, whose
    seeded generator already gives a new order each epoch).
    """
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
