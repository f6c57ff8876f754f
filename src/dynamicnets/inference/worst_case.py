"""`worst_case_flops`: the per-sample cost no input can exceed under a policy's compute cap.

Every dynamic family's inference policy can carry a cap (a bounded worst case, against
inputs crafted to defeat the gates, such as the DeepSloth slowdown attack):

- early exits: `ExitPolicy(max_flops=...)`: no sample runs past the deepest exit whose
  cost, exit decisions included, is `<= max_flops`;
- layer skipping: `GatePolicy(max_flops=..., max_blocks=...)`: greedy in block order, a
  gate that would take its sample over the cap is forced off;
- width: `WidthPolicy(max_flops=..., max_width=...)`: a sample's width is clamped to the
  widest one that fits;
- spatial gates: `GatePolicy(max_density=...)`: each gated block runs at most that
  fraction of a sample's positions (the highest-scoring ones); a density, not FLOPs;
- mixtures of experts: bounded by construction (`k` experts per token), and a
  `capacity_factor` bounds every expert's rows per batch.

`worst_case_flops` returns the FLOPs bound of the first three: for early exits computed
here, for the others by the model (the `BoundedWorstCase` protocol).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from ..protocols import BoundedWorstCase, MultiExit
from .executor import capped_last_exit, costs_with_decisions
from .policy import ExitPolicy


def worst_case_flops(model: nn.Module, input_shape: tuple[int, ...], policy: Any = None) -> float:
    """The most per-sample FLOPs inference of `model` on any `(*input_shape)` input can cost.

    Args:
        model: a multi-exit model (with an `ExitPolicy`), or a model with
            `worst_case_flops(input_shape, policy)` (layer skipping with a `GatePolicy`,
            `GatedModel`, slimmable and DS-Net models with a `WidthPolicy`).
        input_shape: per-sample input shape, e.g. `(3, 32, 32)`.
        policy: the inference policy and its cap; None: no cap (the full network).

    Returns:
        FLOPs per sample (compact inference): an upper bound that the executor holds.

    Raises:
        ConfigError: a model that states no worst case, or a cap below the cheapest
            execution (naming the key).
    """
    shape = tuple(int(s) for s in input_shape)
    if policy is None and isinstance(model, MultiExit) and not isinstance(model, BoundedWorstCase):
        return float(model.exit_costs(shape)[-1])
    if isinstance(policy, ExitPolicy):
        if not isinstance(model, MultiExit):
            raise ConfigError(f"worst_case_flops: an ExitPolicy needs a multi-exit model, got {type(model).__name__}")
        criterion = policy.check(model.num_exits)
        costs = list(model.exit_costs(shape))
        last = capped_last_exit(policy, costs, criterion)
        return float(costs_with_decisions(costs, last, criterion)[last])
    if not isinstance(model, BoundedWorstCase):
        raise ConfigError(f"worst_case_flops: {type(model).__name__} states no worst case (no "
                          f"worst_case_flops(input_shape, policy) method)")
    return float(model.worst_case_flops(shape, policy))
