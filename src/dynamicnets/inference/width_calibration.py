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
from .cost_bias import budget_check, chosen_costs, collect_scores, cost_bias, fit_cost_multiplier
from .cost_spread import cost_spread
from .width_policy import WidthPolicy


def calibrate_width_policy(model: nn.Module, data: Tensor | Iterable, budget_flops: float, *,
                           max_flops: float | None = None, max_width: float | None = None,
                           steps: int = 60, confidence: float | None = None,
                           eval_size: int | None = None) -> WidthPolicy:
    """The `WidthPolicy` whose mean per-sample FLOPs on `data` is the largest within `budget_flops`.

    Args:
        model: a gated width model (DS-Net: `gate_logits(x)`, `width_costs(shape)`,
            `gate_flops(shape)`, `widths`).
        data: a `(N, C, H, W)` tensor, or an iterable of batches (tensors or `(x, y)` pairs).
        budget_flops: the mean per-sample FLOPs to stay within (gate included).
        max_flops: a per-sample cap to keep in the policy (applied before the fit).
        max_width: a width cap to keep in the policy.
        steps: bisection steps.
        confidence: `None`: the mean cost on `data` meets the budget. A probability in
            `(0, 1)`: its upper confidence bound over `eval_size` fresh samples does
            (`dynamicnets.inference.cost_spread`), so a fresh batch of that size meets it
            with about this probability.
        eval_size: that batch's size; `None`: the expected cost per sample.

    Returns:
        a `WidthPolicy` with `bias` (one per width, narrowest first) and the caps; `meta`
        holds `budget_flops`, `lam`, the calibration data's `mean_flops`, `samples` and
        `spread` (`CostSpread.to_dict()`: the mean cost expected on fresh data).

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
    fits = budget_check(budget_flops, confidence, eval_size, "calibrate_width_policy")
    lam = fit_cost_multiplier(scores, costs, budget_flops, cap, spend_budget=True, steps=steps, fits=fits)
    spent = chosen_costs(scores, costs, lam, cap)
    meta = {"budget_flops": float(budget_flops), "lam": lam, "mean_flops": float(spent.mean()),
            "samples": int(scores.shape[0]),
            "spread": cost_spread(spent, eval_size=eval_size, confidence=confidence).to_dict()}
    return WidthPolicy(max_flops, max_width, tuple(cost_bias(costs, lam).tolist()), meta)
