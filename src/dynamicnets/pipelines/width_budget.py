"""`dynamicnets eval --budget` for DS-Net: fit a `WidthPolicy` (a cost-proportional bias on
the gate's scores, `calibrate_width_policy`) to a mean-FLOPs budget on calibration samples,
then score and time the model under it.

The bias is fitted on samples the model is not scored on, as exit thresholds are;
`--max-flops` adds a per-sample cap that no input can exceed.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..data import make_eval_loader
from ..errors import ConfigError
from ..inference.width_calibration import calibrate_width_policy
from .early_exit import EarlyExitRequest
from .resolution_budget import PolicyBound, choice_histogram


def fit_width_budget(model: nn.Module, calibration, request: EarlyExitRequest, input_shape: tuple[int, ...],
                     batch_size: int, device) -> tuple[PolicyBound, dict[str, Any]]:
    """Fit the policy on `calibration` and bind it to the model.

    Args:
        model: a DS-Net in eval mode.
        calibration: a dataset of `(x, y)` the policy is fitted on.
        request: `budget_flops` or `budget_fraction` (of the widest width's cost), and an
            optional `max_flops` cap.
        input_shape: per-sample input shape.
        batch_size: batch for the calibration passes.
        device: where the model runs.

    Returns:
        `(model bound to the policy, what to report)`: `budget_flops`, `budget_fraction`,
        `policy` (in words), `width_policy` (its plain data) and `calibration_samples`.

    Raises:
        ConfigError: `--budget-ms` / `--thresholds` (exit rules, not width budgets), or a
            budget below the narrowest width's cost.
    """
    name = getattr(model, "name", type(model).__name__)
    if request.budget_flops is None and request.budget_fraction is None:
        raise ConfigError(f"--budget-ms/--thresholds: model {name!r} picks a width per sample, it has no exits; "
                          f"give a FLOPs budget (--budget 40M or --budget 50%) and optionally --max-flops")
    widest = float(model.backbone.flops(tuple(input_shape), 1.0))
    budget = request.budget_flops if request.budget_flops is not None else request.budget_fraction * widest
    batches = [x.to(device) for x, _ in make_eval_loader(calibration, batch_size)]
    policy = calibrate_width_policy(model, batches, budget, max_flops=request.max_flops)
    words = "bias " + ", ".join(f"{b:.4g}" for b in policy.bias or ()) + (
        "" if policy.max_flops is None else f"; cap {policy.max_flops:.4g} FLOPs")
    report = {"budget_flops": float(budget), "budget_fraction": request.budget_fraction,
              "policy": f"width policy: {words}", "width_policy": policy.to_dict(),
              "calibration_samples": len(calibration)}
    return PolicyBound(model, policy), report


def width_histogram(model: nn.Module, dataset, batch_size: int, device) -> list[int]:
    """Samples of `dataset` per configured width (narrowest first) that `model` (a DS-Net,
    bound to its policy or not) runs."""
    count = len(getattr(model, "model", model).widths)
    return choice_histogram(model, dataset, batch_size, device, "width_index", count)
