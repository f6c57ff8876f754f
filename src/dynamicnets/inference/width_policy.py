"""`WidthPolicy`: how a width-adaptive model picks each sample's width at inference.

A slimmable network runs the width it is asked for, and DS-Net's gate picks one per
sample; neither looks at what that costs. A `WidthPolicy` passed at inference
(`model(x, policy=WidthPolicy(...))`) does two things:

- `bias` (DS-Net): one number per configured width added to the gate's scores before
  the argmax; `calibrate_width_policy` fits a cost-proportional bias to a mean-FLOPs
  budget (`dynamicnets.inference.cost_bias`).
- a compute cap: every sample's width is clamped to the widest one whose per-sample cost
  (for DS-Net the gate included) is `<= max_flops` and that is `<= max_width`: a sample
  whose choice fits keeps it, one whose choice does not runs the widest width that
  fits. An input crafted to make the gate choose the widest width then costs at most
  the cap.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .cost_bias import checked_bias


@dataclass(frozen=True)
class WidthPolicy:
    """A bias on a width gate's scores and a compute cap on the width a sample runs.

    Attributes:
        max_flops: per-sample FLOPs a width may cost (everything the sample runs), or None.
        max_width: the widest width fraction allowed, in `(0, 1]`, or None.
        bias: one number per configured width (narrowest first), added to a gate's
            scores before the argmax; None = zeros. Models without a gate ignore it.
        meta: free-form provenance (how it was calibrated), kept when saved.

    Raises:
        ConfigError: `max_flops <= 0`, `max_width` outside `(0, 1]`, or an empty or NaN
            `bias`, naming the key.
    """

    max_flops: float | None = None
    max_width: float | None = None
    bias: tuple[float, ...] | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bias", checked_bias(self.bias, "WidthPolicy"))
        for key, low, high in (("max_flops", 0.0, math.inf), ("max_width", 0.0, 1.0)):
            value = getattr(self, key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                span = "a number > 0 (FLOPs per sample)" if key == "max_flops" else "a width fraction in (0, 1]"
                raise ConfigError(f"WidthPolicy: key {key!r} must be {span}, got {value!r}")
            object.__setattr__(self, key, float(value))

    def widest_allowed(self, widths: Sequence[float], costs: Sequence[float], owner: str = "model") -> int:
        """Index of the widest of `widths` (ascending) that the caps allow.

        Args:
            widths: width fractions, ascending.
            costs: per-sample FLOPs of running each width (what the model reports).
            owner: names the model in errors.

        Raises:
            ConfigError: no width is allowed (a cap below the narrowest width's cost or
                width), naming the key.
        """
        allowed = [i for i, (w, c) in enumerate(zip(widths, costs))
                   if (self.max_flops is None or c <= self.max_flops)
                   and (self.max_width is None or w <= self.max_width)]
        if allowed:
            return allowed[-1]
        if self.max_width is not None and self.max_width < widths[0]:
            raise ConfigError(f"{owner}: key 'max_width': {self.max_width} is below the narrowest width "
                              f"{widths[0]}")
        cheapest = min(costs)
        raise ConfigError(f"{owner}: key 'max_flops': {self.max_flops:,.0f} FLOPs per sample is below the "
                          f"cheapest width ({cheapest:,.0f} FLOPs); attainable caps are >= {cheapest:,.0f}")

    def biased(self, scores: Tensor, owner: str = "model") -> Tensor:
        """`scores (B, W)` plus `bias`, in float64 (the precision `calibrate_width_policy`
        fits in, so a fitted policy decides exactly as calibrated); unchanged without a bias.

        Raises:
            ConfigError: a bias whose length is not the number of widths `W`.
        """
        if self.bias is None:
            return scores
        if len(self.bias) != scores.shape[-1]:
            raise ConfigError(f"{owner}: key 'bias' has {len(self.bias)} entries, the model has "
                              f"{scores.shape[-1]} widths")
        return scores.double() + torch.tensor(self.bias, dtype=torch.float64, device=scores.device)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or JSON (loads with `weights_only=True`)."""
        return {"kind": "width_cap", "max_flops": self.max_flops, "max_width": self.max_width,
                "bias": None if self.bias is None else list(self.bias), "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "width policy") -> WidthPolicy:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: naming `source`, when `data` is not a saved width policy.
        """
        if not isinstance(data, dict) or data.get("kind") != "width_cap":
            raise ConfigError(f"{source}: expected a saved width policy {{kind: width_cap, max_flops: ..., "
                              f"max_width: ...}}, got {data!r}")
        bias = data.get("bias")
        if isinstance(bias, list):
            bias = tuple(bias)
        return cls(data.get("max_flops"), data.get("max_width"), bias,
                   dict(data.get("meta") or {}))
