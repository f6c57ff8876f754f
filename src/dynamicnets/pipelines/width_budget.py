"""`dynamicnets eval --budget` for DS-Net: fit a `WidthPolicy` (a cost-proportional bias on the
gate's scores, `calibrate_width_policy`) to a mean-FLOPs budget on calibration samples, then
score and time the model under it (`policy_budget`)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..inference.width_calibration import calibrate_width_policy
from .early_exit import EarlyExitRequest
from .policy_budget import PolicyBound, choice_histogram, fit_policy_budget


def fit_width_budget(model: nn.Module, calibration, request: EarlyExitRequest, input_shape: tuple[int, ...],
                     batch_size: int, device) -> tuple[PolicyBound, dict[str, Any]]:
    """`fit_policy_budget` for a DS-Net in eval mode; a `budget_fraction` is of its full cost
    (the gate plus the widest width, `DSNet.full_flops`). The report's policy data is under
    `width_policy`."""
    return fit_policy_budget(model, calibration, request, model.full_flops(tuple(input_shape)),
                             calibrate=calibrate_width_policy, option="width", batch_size=batch_size,
                             device=device)


def width_histogram(model: nn.Module, dataset, batch_size: int, device) -> list[int]:
    """Samples of `dataset` per configured width (narrowest first) that `model` (a DS-Net,
    bound to its policy or not) runs."""
    count = len(getattr(model, "model", model).widths)
    return choice_histogram(model, dataset, batch_size, device, "width_index", count)
