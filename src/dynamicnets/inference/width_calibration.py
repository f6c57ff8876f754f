"""Fitting a DS-Net gate's `WidthPolicy` to a mean-FLOPs budget.

The gate scores every width; `calibrate_width_policy` adds the cost-proportional bias
`-lam * cost[w] / cost[-1]` (`dynamicnets.inference.cost_bias`) whose mean per-sample
FLOPs on calibration data is the largest within the budget. Unlike a resolution
predictor's calibration, `lam` may be negative: a gate trained to be frugal (DS-Net's
gate sparsification sends every sample the narrowest width gets right to it) is pushed
to spend the budget on the samples it scores as hardest. The fitted policy keeps any
compute cap it is given, so the worst case stays bounded.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from ..errors import ConfigError
from .cost_bias import collect_scores, cost_bias, fit_cost_multiplier, mean_chosen_cost
from .width_policy import WidthPolicy


def calibrate_width_policy(model: nn.Module, data: Tensor | Iterable, budget_flops: float, *,
                           max_flops: float | None = None, max_width: float | None = None,
                           steps: int = 60) -> WidthPolicy:
    """The `WidthPolicy` whose mean per-sample FLOPs on `data` is the largest within `budget_flops`.

    Args:
        model: a gated width model (DS-Net: `gate_logits(x)`, `width_costs(shape)`,
            `gate_flops(shape)`, `widths`).
        data: a `(N, C, H, W)` tensor, or an iterable of batches (tensors or `(x, y)` pairs).
        budget_flops: the mean per-sample FLOPs to stay within (gate included).
        max_flops: a per-sample cap to keep in the policy (applied before the fit).
        max_width: a width cap to keep in the policy.
        steps: bisection steps.

    Returns:
        a `WidthPolicy` with `bias` (one per width, narrowest first) and the caps; `meta`
        holds `budget_flops`, `lam`, the calibration data's `mean_flops` and `samples`.

    Raises:
        ConfigError: a model without a width gate, empty `data`, or a budget below the
            narrowest width's cost (gate included).
    """
    if not all(hasattr(model, name) for name in ("gate_logits", "width_costs", "gate_flops", "widths")):
        raise ConfigError(f"calibrate_width_policy: {type(model).__name__} has no width gate (expected a DS-Net "
                          f"with gate_logits, width_costs, gate_flops and widths)")
    scores, shape = collect_scores(model, data, model.gate_logits, "calibrate_width_policy")
    costs = model.width_costs(shape).double() + float(model.gate_flops(shape))
    caps = WidthPolicy(max_flops=max_flops, max_width=max_width)
    cap = caps.widest_allowed(model.widths, costs.tolist(), type(model).__name__)
    if budget_flops < costs[0]:
        raise ConfigError(f"calibrate_width_policy: budget_flops {budget_flops:,.0f} is below the narrowest "
                          f"width's cost ({float(costs[0]):,.0f} FLOPs per sample, gate included)")
    lam = fit_cost_multiplier(scores, costs, budget_flops, cap, spend_budget=True, steps=steps)
    meta = {"budget_flops": float(budget_flops), "lam": lam,
            "mean_flops": mean_chosen_cost(scores, costs, lam, cap), "samples": int(scores.shape[0])}
    return WidthPolicy(max_flops, max_width, tuple(cost_bias(costs, lam).tolist()), meta)
