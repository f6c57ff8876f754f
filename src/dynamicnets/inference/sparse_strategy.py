"""Choose, per gated block, the fastest exact execution of a spatially sparse model on the
machine at hand.

Whether gathering pays depends on the block (channels, map size), the density of its
masks, the batch size and the hardware: on a CPU a ResNet-50 bottleneck at 56x56 runs
faster at gathered positions down to high densities, while a CIFAR block with 16
channels runs slower sparse than dense at any density (`SparseBranch`'s module docstring).
`fastest_block_strategies` measures instead of guessing: it records each gated block's
real input and masks on a calibration batch, times every candidate strategy on them
(`torch.utils.benchmark`, warmed up, interleaved), and returns the fastest per block.
All candidates compute the same outputs, so the choice changes time, never results.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils import benchmark

from ..errors import ConfigError
from ..execution import Execution
from ..layers.spatial_block import SparseStrategy
from ..profiling.allocator import keep_freed_memory


def fastest_block_strategies(
    model: nn.Module,
    x: Tensor,
    candidates: Sequence[str] = ("dense", "positions", "tiles"),
    *,
    policy=None,
    min_run_time: float = 0.1,
    rounds: int = 3,
) -> tuple[list[str], list[dict[str, float]]]:
    """Time each candidate strategy on each gated block of `model` and pick the fastest.

    Args:
        model: a spatially gated model (`gated_block_inputs`, `branches`, `strategies`,
            `sparse_tile`; e.g. `dynconv_resnet32`).
        x: `(B, C, H, W)` calibration batch, at the batch size you will run.
        candidates: strategy names to try.
        policy: the inference `GatePolicy` you will run with (the masks depend on it).
        min_run_time: seconds per measurement (`blocked_autorange`).
        rounds: interleaved rounds; the median time per candidate is kept.

    Returns:
        `(strategies, times)`: the fastest name per gated block (pass as
        `model(x, strategy=strategies)` or set `model.strategies =
        model.parse_strategies(strategies)`), and per block the median seconds of
        every candidate.

    Raises:
        ConfigError: `model` has no spatial gates, or a candidate is unknown.
    """
    if not hasattr(model, "gated_block_inputs"):
        raise ConfigError(f"{type(model).__name__}: not a spatially gated model (no gated_block_inputs)")
    names = [SparseStrategy(c).value if c in {s.value for s in SparseStrategy} else None for c in candidates]
    if not names or None in names:
        raise ConfigError(f"candidates must be names among {[s.value for s in SparseStrategy]}, got {list(candidates)!r}")
    inputs = model.gated_block_inputs(x, policy=policy)
    keep_freed_memory()
    chosen, table = [], []
    with torch.no_grad():
        for index, (h, mask) in zip(model.gated_index, inputs):
            branch = model.branches[index]
            scratch = h.clone(memory_format=torch.channels_last)
            times: dict[str, list[float]] = {name: [] for name in names}

            def run(name: str) -> None:
                scratch.copy_(h)  # every candidate pays the same copy: inplace runs overwrite it
                branch(scratch, mask, Execution.COMPACT, strategy=SparseStrategy(name),
                       tile=model.sparse_tile, inplace=True)

            for _ in range(rounds):
                for name in names:
                    timer = benchmark.Timer("run(name)", globals={"run": run, "name": name},
                                            num_threads=torch.get_num_threads())
                    times[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
            medians = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
            table.append(medians)
            chosen.append(min(medians, key=medians.get))
    return chosen, table
