"""Compact early-exit execution: samples that exit leave the batch.

After each exit, the samples whose criterion is met are written to the result and
removed from the activation batch (a gather along dim 0); the next stages run on
the remaining samples only. No masks, nothing computed and then thrown away, so the
FLOPs a sample costs are exactly the cumulative cost of the exit it took, and
`FlopCounterMode` around the whole call sees the sum of those per-sample costs.

`run_all_then_select` is the reference: every exit on every sample (one `forward`),
then the same decisions taken afterwards. Both give the same predictions and exits.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..gates.confidence import ExitCriterion
from ..execution import refuse_tracing
from ..protocols import MultiExit
from ..compact import assemble_rows, gather_rows, rows_where
from ..outputs import DynamicOutput
from .policy import ExitPolicy


@dataclass
class ExitResult:
    """What happened to every sample of a batch run with early exits.

    Attributes:
        predictions: `(B,)` int64 class predicted at the exit taken.
        exit_index: `(B,)` int64 index of that exit.
        flops: `(B,)` float64 FLOPs the sample actually cost (cumulative exit cost).
        logits: `(B, C)` logits of the exit taken.
    """

    predictions: Tensor
    exit_index: Tensor
    flops: Tensor
    logits: Tensor

    def mean_flops(self) -> float:
        return float(self.flops.mean())

    def exit_histogram(self, num_exits: int) -> list[int]:
        """Number of samples that left at each of `num_exits` exits."""
        return torch.bincount(self.exit_index, minlength=num_exits).tolist()

    def as_output(self) -> DynamicOutput:
        """The same record as a `DynamicOutput` (decision `"exit_index"`)."""
        return DynamicOutput(logits=self.logits, decisions={"exit_index": self.exit_index}, flops=self.flops)


def _check_model(model: nn.Module, policy: ExitPolicy) -> ExitCriterion:
    """Raise `ConfigError` unless `model` is a multi-exit model in eval mode and `policy`
    fits it; return the policy's criterion."""
    if not isinstance(model, MultiExit):
        missing = [a for a in ("num_exits", "run_segment", "exit_logits", "exit_costs", "needs_input_after")
                   if not hasattr(model, a)]
        raise ConfigError(
            f"early-exit execution needs a multi-exit model (the MultiExit protocol, e.g. a "
            f"MultiExitNetwork); {type(model).__name__} has no {', '.join(map(repr, missing))}"
        )
    if model.training:
        raise ConfigError(
            "the model is in training mode: call model.eval() before early-exit inference "
            "(batch-norm statistics would depend on which samples are still in the batch)"
        )
    return policy.check(model.num_exits)


def run_early_exit(
    model: nn.Module, x: Tensor, policy: ExitPolicy, *, costs: Sequence[int] | None = None
) -> ExitResult:
    """Run `model` exit by exit, removing the samples that exit from the batch.

    Args:
        model: a `MultiExitNetwork` in eval mode.
        x: `(B, *input_shape)` inputs.
        policy: criterion, `K - 1` thresholds and an optional `max_flops` cap.
        costs: `model.exit_costs(input_shape)` if already known (saves recomputing it).

    Returns:
        `ExitResult` with `(B,)` predictions, exit indices and FLOPs and `(B, C)` logits.
    """
    criterion = _check_model(model, policy)
    refuse_tracing("the early-exit executor")
    costs = list(model.exit_costs(tuple(x.shape[1:]))) if costs is None else list(costs)
    last = capped_last_exit(policy, costs, criterion)
    spent = costs_with_decisions(costs, last, criterion)
    # (original rows or None for "the whole batch", their logits, exit index), per exit taken
    taken: list[tuple[Tensor | None, Tensor, int]] = []
    active: Tensor | None = None  # original rows of the samples still running; None = all
    state, inputs, history = None, x, []
    with torch.no_grad():
        for k in range(last + 1):
            state = model.run_segment(k, state, inputs)
            logits = model.exit_logits(k, state)
            if k == last:
                taken.append((active, logits, k))
                break
            if criterion.uses_history:
                history.append(logits.argmax(dim=1))
                leave = criterion.should_exit(history, policy.thresholds[k])
            else:
                leave = criterion.should_exit(logits, policy.thresholds[k])
            leaving = int(leave.sum())  # the one host sync per exit
            if leaving == 0:
                continue
            if leaving == logits.shape[0]:
                taken.append((active, logits, k))
                break
            going, staying = rows_where(leave), rows_where(~leave)
            taken.append((going if active is None else active[going], logits[going], k))
            active = staying if active is None else active[staying]
            state = gather_rows(state, staying)
            inputs = gather_rows(inputs, staying) if model.needs_input_after(k) else None
            history = [h[staying] for h in history]
    return _assemble(taken, x.shape[0], spent)


def costs_with_decisions(costs: Sequence[float], last: int, criterion: ExitCriterion) -> list[float]:
    """Per-sample cost of leaving at each exit, decisions included.

    A sample leaving at exit `k < last` was judged at exits `0..k`; one reaching `last`
    at `0..last-1`. Each judgement costs `criterion.flops_per_sample()` (0 for the fixed
    confidence scores, the head's FLOPs for a learned exit).
    """
    per_decision = float(criterion.flops_per_sample())
    return [float(c) + per_decision * min(k + 1, last) for k, c in enumerate(costs)]


def capped_last_exit(policy: ExitPolicy, costs: Sequence[float], criterion: ExitCriterion) -> int:
    """The deepest exit `policy.max_flops` lets a sample reach, decisions included.

    A sample that reaches exit `k` as the last one was judged at exits `0..k-1`, so it
    costs `costs[k] + k * criterion.flops_per_sample()` (`costs_with_decisions`); that is
    what the cap is held against (for the fixed confidence scores, `costs[k]` itself).
    """
    per_decision = float(criterion.flops_per_sample())
    return policy.last_exit([float(c) + per_decision * k for k, c in enumerate(costs)])


def _assemble(taken: list[tuple[Tensor | None, Tensor, int]], batch: int, costs: Sequence[int]) -> ExitResult:
    """Scatter the per-exit pieces back to the original sample order."""
    first_rows, first_logits, first_exit = taken[0]
    device = first_logits.device
    if first_rows is None:  # nobody left before: one piece holds the whole batch in order
        return ExitResult(
            predictions=first_logits.argmax(dim=1),
            exit_index=torch.full((batch,), first_exit, dtype=torch.int64, device=device),
            flops=torch.full((batch,), float(costs[first_exit]), dtype=torch.float64, device=device),
            logits=first_logits,
        )
    logits = assemble_rows([(r, lg) for r, lg, _ in taken], batch)
    exit_index = assemble_rows(
        [(r, torch.full((r.shape[0],), k, dtype=torch.int64, device=device)) for r, _, k in taken], batch)
    cost_table = torch.tensor([float(c) for c in costs], dtype=torch.float64, device=device)
    return ExitResult(
        predictions=logits.argmax(dim=1), exit_index=exit_index, flops=cost_table[exit_index], logits=logits
    )


def run_all_then_select(
    model: nn.Module, x: Tensor, policy: ExitPolicy, *, costs: Sequence[int] | None = None
) -> ExitResult:
    """Reference: run every exit on every sample, then pick each sample's first exit.

    Same arguments and result as `run_early_exit`, but `flops` is still the cost of the
    exit taken (what an early exit *would* have cost), not what this reference spent.
    """
    criterion = _check_model(model, policy)
    costs = list(model.exit_costs(tuple(x.shape[1:]))) if costs is None else list(costs)
    last = capped_last_exit(policy, costs, criterion)
    with torch.no_grad():
        all_logits = model(x).exit_logits
    batch = x.shape[0]
    chosen = torch.full((batch,), last, dtype=torch.int64, device=x.device)
    undecided = torch.ones(batch, dtype=torch.bool, device=x.device)
    history = []
    for k in range(last):
        if criterion.uses_history:
            history.append(all_logits[k].argmax(dim=1))
            leave = criterion.should_exit(history, policy.thresholds[k])
        else:
            leave = criterion.should_exit(all_logits[k], policy.thresholds[k])
        take = leave & undecided
        chosen[take] = k
        undecided &= ~take
    stacked = torch.stack(all_logits[: last + 1])  # (K', B, C)
    logits = stacked[chosen, torch.arange(batch, device=x.device)]
    cost_table = torch.tensor(costs_with_decisions(costs, last, criterion), dtype=torch.float64, device=x.device)
    return ExitResult(
        predictions=logits.argmax(dim=1), exit_index=chosen, flops=cost_table[chosen], logits=logits
    )
