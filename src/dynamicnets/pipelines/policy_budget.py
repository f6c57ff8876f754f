"""`dynamicnets eval --budget` for models whose predictor picks one option per sample (a
resolution, a width): fit the predictor's policy to a mean-FLOPs budget on calibration
samples, bind it to the model, and count what the model then picks.

The policy is the model's inference decision rule (a bias per option on the predictor's
scores, and an optional per-sample cap, `--max-flops`); it is fitted on samples the model
is not scored on, as exit thresholds are.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..data import make_eval_loader
from ..errors import ConfigError
from ..outputs import DynamicOutput
from ..inference.cost_spread import CostSpread
from .early_exit import EarlyExitRequest, spread_report


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


def fit_policy_budget(model: nn.Module, calibration, request: EarlyExitRequest, full_flops: float, *,
                      calibrate: Callable[..., Any], option: str, batch_size: int,
                      device) -> tuple[PolicyBound, dict[str, Any]]:
    """Fit a predictor's policy on `calibration` and bind it to the model.

    Args:
        model: the model in eval mode.
        calibration: a dataset of `(x, y)` the policy is fitted on.
        request: `budget_flops` or `budget_fraction` (of `full_flops`), an optional
            `max_flops` cap, and `confidence` / `eval_size` (the budget then holds on a
            fresh batch of that size with about that probability).
        full_flops: the per-sample cost a `budget_fraction` is a fraction of.
        calibrate: `calibrate(model, batches, budget_flops, max_flops=..., confidence=...,
            eval_size=...)` -> a policy with `bias`, `max_flops`, `meta["spread"]` and
            `to_dict()`.
        option: what the predictor picks, in words (`"resolution"`, `"width"`).
        batch_size: batch for the calibration passes.
        device: where the model runs.

    Returns:
        `(model bound to the policy, what to report)`: `budget_flops`, `budget_fraction`,
        `policy` (in words), `<option>_policy` (its plain data), `calibration_samples`,
        `budget_confidence` and the spread it expects on fresh data (`expected_cost`,
        `cost_spread`).

    Raises:
        ConfigError: `--budget-ms` / `--thresholds` (exit rules, not FLOPs budgets), or a
            budget the calibration refuses.
    """
    name = getattr(model, "name", type(model).__name__)
    if request.budget_flops is None and request.budget_fraction is None:
        raise ConfigError(f"--budget-ms/--thresholds: model {name!r} picks a {option} per sample, it has no "
                          f"exits; give a FLOPs budget (--budget 40M or --budget 50%) and optionally --max-flops")
    budget = request.budget_flops if request.budget_flops is not None else request.budget_fraction * full_flops
    batches = (x.to(device) for x, _ in make_eval_loader(calibration, batch_size))  # read once, streamed
    policy = calibrate(model, batches, budget, max_flops=request.max_flops, confidence=request.confidence,
                       eval_size=request.eval_size)
    words = "bias " + ", ".join(f"{b:.4g}" for b in policy.bias or ()) + (
        "" if policy.max_flops is None else f"; cap {policy.max_flops:.4g} FLOPs")
    report = {"budget_flops": float(budget), "budget_fraction": request.budget_fraction,
              "policy": f"{option} policy: {words}", f"{option}_policy": policy.to_dict(),
              "calibration_samples": len(calibration), "budget_confidence": request.confidence,
              **spread_report(CostSpread(**policy.meta["spread"]), float(budget))}
    return PolicyBound(model, policy), report


def choice_histogram(model: nn.Module, dataset, batch_size: int, device, key: str, count: int) -> list[int]:
    """Samples of `dataset` per option `0..count-1` of `model`'s `decisions[key]` `(B,)`."""
    counts = torch.zeros(count, dtype=torch.int64)
    with torch.no_grad():
        for x, _ in make_eval_loader(dataset, batch_size):
            counts += torch.bincount(model(x.to(device)).decisions[key].cpu(), minlength=count)
    return counts.tolist()


def samples_per_width(chosen: Tensor, widths) -> list[int]:
    """How many of the `(N,)` widths in `chosen` equal each of `widths` (ascending)."""
    chosen = chosen.double()
    return [int(torch.isclose(chosen, torch.tensor(float(w), dtype=torch.float64)).sum()) for w in widths]
