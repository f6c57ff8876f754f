"""Scoring clean or attacked inputs: accuracy, efficacy and per-sample FLOPs.

Multi-exit models run the compact early-exit executor (`run_early_exit`) with an
`ExitPolicy`, with or without its `max_flops` cap; gated (layer-skipping) models run
their compact eval forward. Both report what each sample actually executed.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..inference import ExitPolicy, run_early_exit
from ..protocols import MultiExit
from .efficacy import efficacy


def _batches(x: Tensor, y: Tensor, batch_size: int):
    if batch_size < 1:
        raise ConfigError(f"batch_size: expected an integer >= 1, got {batch_size}")
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def score_early_exit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    policy: ExitPolicy,
    *,
    costs: Sequence[float] | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Run a multi-exit model exit by exit on `x` and score it.

    Args:
        model: a `MultiExit` model in eval mode.
        x: `(N, *input_shape)` model inputs; y: `(N,)` labels.
        policy: the exit rule (its `max_flops` cap, if any, applies).
        costs: `model.exit_costs(input_shape)` if already known.
        batch_size: samples per executor call.

    Returns:
        dict with `samples`, `accuracy`, `efficacy` (`dynamicnets.attacks.efficacy`),
        `mean_flops`, `max_flops` (the most one sample cost), `exit_histogram` and `cap`
        (the policy's `max_flops`).
    """
    if not isinstance(model, MultiExit):
        raise ConfigError(f"model: {type(model).__name__} has no early exits (the MultiExit protocol)")
    costs = list(model.exit_costs(tuple(x.shape[1:]))) if costs is None else list(costs)
    exits, flops, correct = [], [], 0
    for xb, yb in _batches(x, y, batch_size):
        result = run_early_exit(model, xb, policy, costs=costs)
        exits.append(result.exit_index)
        flops.append(result.flops)
        correct += int((result.predictions == yb.to(result.predictions.device)).sum())
    exit_index, flops = torch.cat(exits), torch.cat(flops)
    return {"samples": int(y.shape[0]), "accuracy": correct / y.shape[0],
            "efficacy": efficacy(costs, exit_index=exit_index), "mean_flops": float(flops.mean()),
            "max_flops": float(flops.max()), "exit_histogram": torch.bincount(exit_index, minlength=len(costs)).tolist(),
            "cap": policy.max_flops}


@torch.no_grad()
def score_forward(model: nn.Module, x: Tensor, y: Tensor, *, policy: Any = None,
                  batch_size: int = 256) -> dict[str, Any]:
    """Score a dynamic model's own eval forward (compact for gated models).

    Args:
        model: a model in eval mode returning per-sample `flops`.
        x: `(N, *input_shape)` model inputs; y: `(N,)` labels.
        policy: passed as `model(x, policy=policy)` when given (a gated model's
            `GatePolicy`).
        batch_size: samples per forward.

    Returns:
        dict with `samples`, `accuracy`, `mean_flops`, `max_flops` (from the output's
        per-sample `flops`), `efficacy` `None` (defined for early exits only), `cap` (the
        policy's `max_flops`, if it has one) and, for gated models, `executed_fraction`
        (mean of the gates).

    Raises:
        ConfigError: the model reports no per-sample FLOPs.
    """
    correct, flops, executed = 0, [], []
    for xb, yb in _batches(x, y, batch_size):
        out = model(xb) if policy is None else model(xb, policy=policy)
        if out.flops is None:
            raise ConfigError(f"model: {type(model).__name__} reports no per-sample FLOPs")
        correct += int((out.logits.argmax(1) == yb.to(out.logits.device)).sum())
        flops.append(out.flops.double())
        if "executed_fraction" in out.decisions:
            executed.append(out.decisions["executed_fraction"].double())
    flops = torch.cat(flops)
    record = {"samples": int(y.shape[0]), "accuracy": correct / y.shape[0], "efficacy": None,
              "mean_flops": float(flops.mean()), "max_flops": float(flops.max()),
              "cap": getattr(policy, "max_flops", None)}
    if executed:
        record["executed_fraction"] = float(torch.cat(executed).mean())
    return record
