"""`dynamicnets eval --budget` for a dynamic-resolution network: fit a `ResolutionPolicy` (a
bias per resolution on the predictor's logits, `calibrate_resolution_policy`) to a mean-FLOPs
budget on calibration samples, then score and time the model under it (`policy_budget`)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..inference.resolution_policy import calibrate_resolution_policy
from .early_exit import EarlyExitRequest
from .policy_budget import PolicyBound, choice_histogram, fit_policy_budget


def fit_resolution_budget(model: nn.Module, calibration, request: EarlyExitRequest,
                          input_shape: tuple[int, ...], batch_size: int, device) -> tuple[PolicyBound, dict[str, Any]]:
    """`fit_policy_budget` for a dynamic-resolution network in eval mode (`resolution_costs`,
    `full_flops`); a `budget_fraction` is of the cost at the largest resolution. The report's
    policy data is under `resolution_policy`."""
    return fit_policy_budget(model, calibration, request, float(model.full_flops(tuple(input_shape))),
                             calibrate=calibrate_resolution_policy, option="resolution", batch_size=batch_size,
                             device=device)


def resolution_histogram(model: nn.Module, dataset, batch_size: int, device) -> list[int]:
    """Samples of `dataset` per resolution (smallest first) that `model` (bound to its
    policy or not) picks."""
    count = len(getattr(model, "model", model).resolutions)
    return choice_histogram(model, dataset, batch_size, device, "resolution_index", count)
