"""Data-parallel set-up from torchrun's environment, and the few collectives we need.

`torchrun --nproc-per-node N ...` starts N processes and sets `RANK`, `WORLD_SIZE`,
`LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT` in each; without them we are one process.
"""
from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}: expected an integer, got {raw!r}") from None


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(backend: str | None = None) -> tuple[int, int, int]:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: `gloo` or `nccl`; None picks `nccl` when CUDA is available, else `gloo`.
            Under `nccl` the process's CUDA device is set to `cuda:LOCAL_RANK` first.

    Returns:
        `(rank, world_size, local_rank)`; `(0, 1, 0)` without `WORLD_SIZE > 1` (nothing
        is initialised then). An already initialised group is reused as it is: the default
        group cannot be created twice in one torchrun job, so it lives until `cleanup()`
        or the end of the process (`cleanup` is registered with `atexit`).

    Raises:
        ConfigError: a torchrun variable is not an integer, or `MASTER_ADDR`/`MASTER_PORT`
            are missing for a multi-process run.
    """
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return rank, dist.get_world_size(), _env_int("LOCAL_RANK", rank)
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return 0, 1, 0
    if not dist.is_available():
        raise ConfigError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"environment variable {name} is not set (launch with torchrun)")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    atexit.register(cleanup)
    return rank, world_size, local_rank


def is_main(rank: int) -> bool:
    """Whether this process writes files and prints (rank 0)."""
    return rank == 0


def cleanup() -> None:
    """Leave the process group (no-op when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum of `values` over all processes (the tensor itself when not distributed).

    Args:
        values: any-shape tensor on this process's device (float64 keeps counts exact).

    Returns:
        tensor of the same shape holding the sum over ranks.
    """
    if is_distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()
