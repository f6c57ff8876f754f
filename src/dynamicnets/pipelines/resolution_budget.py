"""`dynamicnets eval --budget` for a dynamic-resolution network: fit a `ResolutionPolicy` to a
mean-FLOPs budget on calibration samples, then score and time the model under it.

The policy is the network's inference decision rule (a bias per resolution on the
predictor's logits, and an optional per-sample cap, `--max-flops`); it is fitted on samples
the model is not scored on, as exit thresholds are.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..data import make_eval_loader
from ..errors import ConfigError
from ..inference.resolution_policy import calibrate_resolution_policy
from ..outputs import DynamicOutput
from .early_exit import EarlyExitRequest


class PolicyBound(nn.Module):
    """`model(x, policy=policy)` called as `model(x)` (what the evaluation and timing loops do);
    any policy object the model's forward takes (`ResolutionPolicy`, `WidthPolicy`).

    Shapes:
        `(B, C, H, W) -> DynamicOutput` of the model under the policy.
    """

    def __init__(self, model: nn.Module, policy: Any) -> None:
        super().__init__()
        self.model, self.policy = model, policy

    def forward(self, x: Tensor) -> DynamicOutput:
        return self.model(x, policy=self.policy)


def fit_resolution_budget(model: nn.Module, calibration, request: EarlyExitRequest,
                          input_shape: tuple[int, ...], batch_size: int, device) -> tuple[PolicyBound, dict[str, Any]]:
    """Fit the policy on `calibration` and bind it to the model.

    Args:
        model: a dynamic-resolution network in eval mode (`resolution_costs`, `full_flops`).
        calibration: a dataset of `(x, y)` the policy is fitted on.
        request: `budget_flops` or `budget_fraction` (of the cost at the largest
            resolution), and an optional `max_flops` cap.
        input_shape: per-sample input shape.
        batch_size: batch for the calibration passes.
        device: where the model runs.

    Returns:
        `(model bound to the policy, what to report)`: `budget_flops`, `budget_fraction`,
        `policy` (in words), `resolution_policy` (its plain data) and `calibration_samples`.

    Raises:
        ConfigError: `--budget-ms` / `--thresholds` (exit rules, not resolution budgets), or
            a budget below the cheapest resolution's cost.
    """
    name = getattr(model, "name", type(model).__name__)
    if request.budget_flops is None and request.budget_fraction is None:
        raise ConfigError(f"--budget-ms/--thresholds: model {name!r} picks a resolution per sample, it has no "
                          f"exits; give a FLOPs budget (--budget 40M or --budget 50%) and optionally --max-flops")
    full = float(model.full_flops(tuple(input_shape)))
    budget = request.budget_flops if request.budget_flops is not None else request.budget_fraction * full
    batches = ((x.to(device), None) for x, _ in make_eval_loader(calibration, batch_size))
    policy = calibrate_resolution_policy(model, batches, budget, max_flops=request.max_flops)
    words = "bias " + ", ".join(f"{b:.4g}" for b in policy.bias or ()) + (
        "" if policy.max_flops is None else f"; cap {policy.max_flops:.4g} FLOPs")
    report = {"budget_flops": float(budget), "budget_fraction": request.budget_fraction,
              "policy": f"resolution policy: {words}", "resolution_policy": policy.to_dict(),
              "calibration_samples": len(calibration)}
    return PolicyBound(model, policy), report


def resolution_histogram(model: nn.Module, dataset, batch_size: int, device) -> list[int]:
    """Samples of `dataset` per resolution (smallest first) that `model` (bound to its
    policy or not) picks."""
    count = len(getattr(model, "model", model).resolutions)
    return choice_histogram(model, dataset, batch_size, device, "resolution_index", count)


def choice_histogram(model: nn.Module, dataset, batch_size: int, device, key: str, count: int) -> list[int]:
    """Samples of `dataset` per option `0..count-1` of `model`'s `decisions[key]` `(B,)`."""
    counts = torch.zeros(count, dtype=torch.int64)
    with torch.no_grad():
        for x, _ in make_eval_loader(dataset, batch_size):
            counts += torch.bincount(model(x.to(device)).decisions[key].cpu(), minlength=count)
    return counts.tolist()
