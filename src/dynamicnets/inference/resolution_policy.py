"""`ResolutionPolicy`: how a dynamic-resolution network picks each sample's resolution at inference.

The network's predictor scores every resolution, `(B, R)` logits. The policy adds a bias
per resolution and takes the argmax, then applies an optional compute cap:

    choice = argmax_r (logits[:, r] + bias[r]),   clamped to the largest r whose cost <= max_flops

Without a policy (or with zero bias) this is the predictor's own argmax. A negative bias on
the costly resolutions trades accuracy for compute; `calibrate_resolution_policy` fits
`bias[r] = -lam * cost[r] / cost[-1]` (one Lagrange multiplier `lam >= 0`: the chosen cost
never grows as `lam` grows, so a bisection finds the smallest `lam` whose mean cost on the
calibration data is within a FLOPs budget). The cap bounds the worst case: an input crafted
to make the predictor pick the largest resolution costs at most `max_flops`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .cost_bias import (
    budget_check, checked_bias, chosen_costs, collect_scores, cost_bias, fit_cost_multiplier,
)
from .cost_spread import cost_spread


@dataclass(frozen=True)
class ResolutionPolicy:
    """Per-resolution bias on the predictor's logits, and an optional per-sample FLOPs cap.

    Attributes:
        bias: one number per resolution (smallest first), added to the logits; None = zeros.
        max_flops: per-sample FLOPs a resolution may cost (predictor included), or None.
        meta: free-form provenance (how it was calibrated), kept when saved.

    Raises:
        ConfigError: a NaN or empty bias, or `max_flops <= 0`, naming the key.
    """

    bias: tuple[float, ...] | None = None
    max_flops: float | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bias", checked_bias(self.bias, "ResolutionPolicy"))
        if self.max_flops is not None:
            if isinstance(self.max_flops, bool) or not isinstance(self.max_flops, (int, float)) or not self.max_flops > 0:
                raise ConfigError(f"ResolutionPolicy: key 'max_flops' must be a number > 0 (FLOPs per sample), "
                                  f"got {self.max_flops!r}")
            object.__setattr__(self, "max_flops", float(self.max_flops))

    def largest_allowed(self, costs: Sequence[float], owner: str = "model") -> int:
        """Index of the largest resolution whose per-sample cost is `<= max_flops` (the last
        without a cap). `costs` ascending, one per resolution.

        Raises:
            ConfigError: the cap is below the cheapest resolution, naming `max_flops`.
        """
        if self.max_flops is None:
            return len(costs) - 1
        allowed = [i for i, c in enumerate(costs) if c <= self.max_flops]
        if not allowed:
            raise ConfigError(f"{owner}: key 'max_flops': {self.max_flops:,.0f} FLOPs per sample is below the "
                              f"cheapest resolution ({min(costs):,.0f} FLOPs)")
        return allowed[-1]

    def choose(self, logits: Tensor, costs: Sequence[float], owner: str = "model") -> tuple[Tensor, Tensor]:
        """Each sample's resolution index.

        Args:
            logits: `(B, R)` predictor scores.
            costs: `R` per-sample FLOPs of each resolution (everything the sample runs).
            owner: names the model in errors.

        Returns:
            `(choice (B,) int64, capped (B,) bool)`: capped marks samples the cap moved down.

        Raises:
            ConfigError: a bias of the wrong length, or an unattainable cap.
        """
        count = logits.shape[-1]
        if self.bias is not None and len(self.bias) != count:
            raise ConfigError(f"{owner}: key 'bias' has {len(self.bias)} entries, the model has {count} resolutions")
        scores = logits if self.bias is None else logits + torch.tensor(self.bias, dtype=logits.dtype,
                                                                            device=logits.device)
        wanted = scores.argmax(dim=-1)
        chosen = wanted.clamp(max=self.largest_allowed(costs, owner))
        return chosen, chosen != wanted

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or JSON (loads with `weights_only=True`)."""
        return {"kind": "resolution", "bias": None if self.bias is None else list(self.bias),
                "max_flops": self.max_flops, "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "resolution policy") -> ResolutionPolicy:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: naming `source`, when `data` is not a saved resolution policy.
        """
        if not isinstance(data, dict) or data.get("kind") != "resolution":
            raise ConfigError(f"{source}: expected a saved resolution policy {{kind: resolution, bias: [...], "
                              f"max_flops: ...}}, got {data!r}")
        bias = data.get("bias")
        if isinstance(bias, list):
            bias = tuple(bias)
        return cls(bias, data.get("max_flops"), dict(data.get("meta") or {}))


def calibrate_resolution_policy(model, data: Tensor | Iterable, budget_flops: float, *,
                                max_flops: float | None = None, steps: int = 60, confidence: float | None = None,
                                eval_size: int | None = None) -> ResolutionPolicy:
    """The policy whose mean per-sample FLOPs on `data` is at most `budget_flops`, giving up as
    little of the predictor's choice as it can (the smallest `lam`, see the module docstring).

    Args:
        model: a dynamic-resolution model (`resolution_logits(x)`, `resolution_costs(shape)`).
        data: a `(N, C, H, W)` tensor, or an iterable of batches (tensors or `(x, y)` pairs).
        budget_flops: the mean per-sample FLOPs to stay within (predictor included).
        max_flops: a per-sample cap to put in the policy too (applied before the fit).
        steps: bisection steps.
        confidence: `None`: the mean cost on `data` meets the budget; a probability in
            `(0, 1)`: its upper confidence bound over `eval_size` fresh samples does.
        eval_size: that batch's size; `None`: the expected cost per sample.

    Returns:
        a `ResolutionPolicy`; `meta` holds `budget_flops`, `lam`, the calibration data's
        `mean_flops`, `samples` and `spread` (`CostSpread.to_dict()`).

    Raises:
        ConfigError: an empty `data`, or a budget below the cheapest resolution's cost.
    """
    logits, shape = collect_scores(model, data, model.resolution_logits, "calibrate_resolution_policy")
    costs = torch.tensor(model.resolution_costs(shape), dtype=torch.float64)
    cap = ResolutionPolicy(max_flops=max_flops).largest_allowed(costs.tolist(), type(model).__name__)
    if budget_flops < costs[0]:
        raise ConfigError(f"calibrate_resolution_policy: budget_flops {budget_flops:,.0f} is below the cheapest "
                          f"resolution's cost ({float(costs[0]):,.0f} FLOPs per sample)")
    fits = budget_check(budget_flops, confidence, eval_size, "calibrate_resolution_policy")
    lam = fit_cost_multiplier(logits, costs, budget_flops, cap, steps=steps, fits=fits)
    bias = tuple(cost_bias(costs, lam).tolist())
    spent = chosen_costs(logits, costs, lam, cap)
    meta = {"budget_flops": float(budget_flops), "lam": lam, "mean_flops": float(spent.mean()),
            "samples": int(logits.shape[0]),
            "spread": cost_spread(spent, eval_size=eval_size, confidence=confidence).to_dict()}
    return ResolutionPolicy(bias, max_flops, meta)
