"""`GatePolicy`: the inference decision rule of threshold gates, as an explicit object.

A threshold gate (SkipNet, ConvNet-AIG and BlockDrop at inference, Skip-RNN's update
gate) turns a score into a hard decision by a comparison. Which threshold is a policy,
not a property of the layer: it is chosen on data (`calibrate_gate_policy`), saved with
a checkpoint (`to_dict` / `from_dict`) and passed at inference
(`model(x, policy=policy)`), as `ExitPolicy` is for early exits. Without a policy a model
uses its trained default (logit > 0 for gate logits, `u~ >= 0.5` for Skip-RNN).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class GatePolicy:
    """Per-gate thresholds: gate `i` turns on where its score is `> thresholds[i]`.

    Attributes:
        thresholds: one number per gate, in the order the model evaluates its gates (for a
            gated ResNet: its gated blocks, shallowest first). `-inf` always runs a
            block, `+inf` never does.
        meta: free-form provenance (how it was calibrated, on what), kept when saved.
    """

    thresholds: tuple[float, ...]
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        values = tuple(float(t) for t in self.thresholds)
        if not values or any(math.isnan(t) for t in values):
            raise ConfigError(f"GatePolicy: thresholds must be a non-empty list of numbers, got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", values)

    @classmethod
    def constant(cls, threshold: float, num_gates: int) -> GatePolicy:
        """The same threshold for every one of `num_gates` gates."""
        return cls(tuple([float(threshold)] * num_gates))

    def check(self, num_gates: int, owner: str = "model") -> GatePolicy:
        """`self`, after checking it has one threshold per gate of `owner`."""
        if len(self.thresholds) != num_gates:
            raise ConfigError(
                f"{owner}: the gate policy has {len(self.thresholds)} thresholds, the model has {num_gates} gates"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or JSON (loads with `weights_only=True`)."""
        return {"kind": "gate_thresholds", "thresholds": list(self.thresholds), "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "gate policy") -> GatePolicy:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: naming `source`, when `data` is not a saved gate policy.
        """
        if not isinstance(data, dict) or data.get("kind") != "gate_thresholds" or not isinstance(
                data.get("thresholds"), (list, tuple)):
            raise ConfigError(f"{source}: expected a saved gate policy {{kind: gate_thresholds, thresholds: [...]}}, "
                              f"got {data!r}")
        return cls(tuple(data["thresholds"]), dict(data.get("meta") or {}))
