"""Compact exits decided from a multi-exit model's state, not from its exit logits.

`run_early_exit` scores every running sample's exit logits with a confidence criterion.
Some decisions need no logits: a learned halting unit reading the state, or decisions
given in advance (forced exits, for testing the compact path against the masked one).
`run_decided_exits` runs such a model exit by exit like `run_early_exit` (the samples
that leave are removed from the batch by a gather), but asks `decide(k, state, rows)`
who leaves and runs exit `k`'s head only on them: a sample pays for one head, at the exit
it takes, plus whatever its decisions cost (the caller's `costs` say how much).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..compact import gather_rows, rows_where
from ..errors import ConfigError
from ..execution import refuse_tracing
from ..protocols import MultiExit
from .executor import ExitResult, _assemble

Decide = Callable[[int, Any, "Tensor | None"], Tensor]


def run_decided_exits(model: nn.Module, x: Tensor, decide: Decide, costs: Sequence[float], *,
                      last: int | None = None) -> ExitResult:
    """Run `model` exit by exit; at each exit `decide` says which samples leave.

    Args:
        model: a `MultiExit` model.
        x: `(B, *input_shape)` inputs.
        decide: `decide(k, state, rows) -> (n,) bool`, true for the samples leaving at
            exit `k < last`; `state` is what `model.run_segment(k, ...)` returned for the
            `n` samples still running, `rows` their `(n,)` int64 indices in `x` (`None`
            while every sample is running).
        costs: per-sample cost of leaving at each exit `0..last` (reported as `flops`).
        last: the exit every sample still running takes (default: the last exit).

    Returns:
        `ExitResult` with `(B,)` predictions, exit indices and costs and `(B, C)` logits.
    """
    if not isinstance(model, MultiExit):
        raise ConfigError(f"run_decided_exits needs a multi-exit model (the MultiExit protocol); "
                          f"got {type(model).__name__}")
    refuse_tracing("the decided-exit executor")
    last = model.num_exits - 1 if last is None else int(last)
    if not 0 <= last < model.num_exits or len(costs) <= last:
        raise ConfigError(f"run_decided_exits: last={last} must be an exit index in 0..{model.num_exits - 1} "
                          f"with a cost for every exit up to it (got {len(costs)} costs)")
    taken: list[tuple[Tensor | None, Tensor, int]] = []
    active: Tensor | None = None
    state, inputs = None, x
    with torch.no_grad():
        for k in range(last + 1):
            state = model.run_segment(k, state, inputs)
            if k == last:
                taken.append((active, model.exit_logits(k, state), k))
                break
            leave = decide(k, state, active)
            leaving = int(leave.sum())  # the one host sync per exit
            if leaving == 0:
                continue
            if leaving == leave.shape[0]:
                taken.append((active, model.exit_logits(k, state), k))
                break
            going, staying = rows_where(leave), rows_where(~leave)
            taken.append((going if active is None else active[going],
                          model.exit_logits(k, gather_rows(state, going)), k))
            active = staying if active is None else active[staying]
            state = gather_rows(state, staying)
            inputs = gather_rows(inputs, staying) if model.needs_input_after(k) else None
    return _assemble(taken, x.shape[0], costs)
