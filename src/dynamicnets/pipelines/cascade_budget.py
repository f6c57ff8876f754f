"""`dynamicnets eval --budget` for a slimmable network: run its widths as a confidence cascade
(`WidthCascade`), the chain of widths and its thresholds fitted to a mean-FLOPs budget on
calibration samples (`fit_width_cascade`), then score and time the compact cascade."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import make_eval_loader
from ..errors import ConfigError
from ..inference.policy import ExitPolicy
from ..inference.width_cascade_fit import collect_width_logits, fit_width_cascade
from ..models.width.width_cascade import WidthCascade
from .early_exit import EarlyExitRequest, spread_report
from .policy_budget import PolicyBound, samples_per_width


def fit_cascade_budget(model: nn.Module, calibration, request: EarlyExitRequest, input_shape: tuple[int, ...],
                       batch_size: int, device) -> tuple[PolicyBound, dict[str, Any]]:
    """Fit a width cascade of `model` (a slimmable network in eval mode) on `calibration`.

    A `budget_fraction` is of the widest width's cost; `max_flops` caps every sample's
    cost (each candidate chain is cut back to the widths it can afford before it is fitted,
    and the executor enforces the cap).

    Returns:
        `(the cascade bound to its ExitPolicy, what to report)`: `budget_flops`,
        `budget_fraction`, `policy` (in words), `cascade_widths`, `thresholds`,
        `cascade_candidates` (every chain tried, with its calibration accuracy),
        `calibration_samples`, `budget_confidence` and the expected spread on fresh data.

    Raises:
        ConfigError: `--budget-ms` or `--thresholds` (the chain is fitted to a FLOPs budget),
            or a budget below the narrowest width.
    """
    if request.policy != "maxprob":
        raise ConfigError(f"--policy {request.policy}: a width cascade is fitted with max-probability thresholds; "
                          "drop --policy (or use maxprob)")
    if request.budget_flops is None and request.budget_fraction is None:
        raise ConfigError("--budget-ms/--thresholds: a slimmable network runs its widths as a cascade whose chain "
                          "and thresholds are fitted to a FLOPs budget; give --budget 40M or --budget 50% "
                          "(and optionally --max-flops)")
    shape = tuple(input_shape)
    costs = {float(w): float(model.flops(shape, w)) for w in model.widths}
    budget = request.budget_flops if request.budget_flops is not None else request.budget_fraction * costs[1.0]
    loader = ((x.to(device), y) for x, y in make_eval_loader(calibration, batch_size))
    logits, targets = collect_width_logits(model, loader)
    fit = fit_width_cascade(logits, targets, costs, budget, max_flops=request.max_flops,
                            confidence=request.confidence, eval_size=request.eval_size)
    cascade = WidthCascade(model, fit.widths).eval()
    policy = ExitPolicy("maxprob", list(fit.calibration.policy.thresholds), max_flops=request.max_flops)
    chain = " -> ".join(f"{w:g}" for w in fit.widths)
    words = f"width cascade {chain}, max-probability thresholds " + ", ".join(f"{t:.4g}" for t in policy.thresholds)
    report = {"budget_flops": float(budget), "budget_fraction": request.budget_fraction,
              "policy": words + ("" if policy.max_flops is None else f"; cap {policy.max_flops:.4g} FLOPs"),
              "cascade_widths": list(fit.widths), "thresholds": list(policy.thresholds),
              "cascade_candidates": list(fit.candidates), "calibration_samples": len(calibration),
              "budget_confidence": request.confidence, **spread_report(fit.calibration.spread, float(budget))}
    return PolicyBound(cascade, policy).eval(), report


def cascade_width_histogram(runner: nn.Module, dataset, batch_size: int, device, widths) -> list[int]:
    """Samples of `dataset` per configured width of the backbone (`widths`, ascending) at
    which the bound cascade `runner` took their prediction."""
    ended = torch.cat([runner(x.to(device)).decisions["width"].cpu() for x, _ in make_eval_loader(dataset, batch_size)])
    return samples_per_width(ended, widths)
