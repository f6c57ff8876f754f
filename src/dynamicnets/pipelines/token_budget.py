"""`dynamicnets eval --budget` and `export --budget` for token-pruning transformers (DynamicViT,
EViT): the keep ratio whose cost fits a mean-FLOPs budget (`calibrate_token_policy`), bound
to the model.

A keep ratio gives every sample the same token counts, so its cost is the same for every
input: the ratio is fitted on one calibration sample and needs no spread, and the model it
gives deploys as one graph. (Score thresholds, which spend more tokens on hard images, are
`calibrate_token_policy(by="threshold")`; they cannot be deployed as one graph.)
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from ..inference.token_calibration import calibrate_token_policy
from .early_exit import EarlyExitRequest, timed_batches
from .policy_budget import PolicyBound


def fit_token_budget(model: nn.Module, calibration, request: EarlyExitRequest, input_shape: tuple[int, ...],
                     batch_size: int, device) -> tuple[PolicyBound, dict[str, Any]]:
    """Fit the keep ratio (one for every pruning stage) to `request`'s FLOPs budget.

    Args:
        model: a token-pruning model in eval mode.
        calibration: a dataset of `(x, y)`; its first sample prices the ratios.
        request: `budget_flops`, or `budget_fraction` of `model.full_flops` (every token kept).
        input_shape: per-sample input shape.
        batch_size: unused (one sample is priced); kept for the fits' common signature.
        device: where the model runs.

    Returns:
        `(model bound to the policy, what to report)`: `budget_flops`, `budget_fraction`,
        `policy` (in words), `token_policy` (plain data), `calibration_samples` (1).

    Raises:
        ConfigError: `--budget-ms` / `--thresholds` / `--max-flops` / a confidence (a keep
            ratio's cost does not vary), or a budget below the cheapest ratio.
    """
    name = getattr(model, "name", type(model).__name__)
    if request.budget_flops is None and request.budget_fraction is None:
        raise ConfigError(f"--budget-ms/--thresholds: model {name!r} prunes tokens and has no exits; give a "
                          f"FLOPs budget (--budget 60M or --budget 60%)")
    if request.max_flops is not None or request.confidence is not None:
        raise ConfigError(f"--max-flops/--confidence: model {name!r} is fitted a keep ratio, which costs every "
                          f"sample the same; the budget alone fixes it")
    full = float(model.full_flops(tuple(input_shape)))
    budget = request.budget_flops if request.budget_flops is not None else request.budget_fraction * full
    sample = [b.to(device) for b in timed_batches(calibration, 1, 1)]
    fitted = calibrate_token_policy(model, sample, budget, by="keep_ratio", iterations=20)
    policy = fitted.policy
    report = {"budget_flops": float(budget), "budget_fraction": request.budget_fraction,
              "policy": f"keep ratio {policy.keep_ratio:.4g} at every stage ({fitted.mean_flops:,.0f} FLOPs "
                        f"per sample)",
              "token_policy": {"keep_ratio": policy.keep_ratio, "min_tokens": policy.min_tokens},
              "calibration_samples": 1}
    return PolicyBound(model, policy), report
