"""`GatePolicy`: the inference decision rule of threshold gates, as an explicit object.

A threshold gate (SkipNet, ConvNet-AIG and BlockDrop at inference, Skip-RNN's update
gate) turns a score into a hard decision by a comparison. Which threshold is a policy,
not a property of the layer: it is chosen on data (`calibrate_gate_policy`), saved with
a checkpoint (`to_dict` / `from_dict`) and passed at inference
(`model(x, policy=policy)`), as `ExitPolicy` is for early exits. Without a policy a model
uses its trained default (logit > 0 for gate logits, `u~ >= 0.5` for Skip-RNN).

A policy may also carry a compute cap, a bounded worst case that no input can exceed
however its gates decide (an input crafted to switch every gate on, as in the DeepSloth
slowdown attack, then costs at most the cap): `max_flops` and `max_blocks` for layer
skipping (`dynamicnets.gates.block_budget`), `max_density` for spatial gates
(`dynamicnets.gates.spatial.cap_density`). A model states which caps it honours
(`check(..., caps=...)`) and refuses the others.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

CAPS = ("max_flops", "max_blocks", "max_density")


@dataclass(frozen=True)
class GatePolicy:
    """Per-gate thresholds: gate `i` turns on where its score is `> thresholds[i]`.

    Attributes:
        thresholds: one number per gate, in the order the model evaluates its gates (for a
            gated ResNet: its gated blocks, shallowest first). `-inf` always runs a
            block, `+inf` never does.
        meta: free-form provenance (how it was calibrated, on what), kept when saved.
        max_flops: optional per-sample FLOPs cap of a layer-skipping model (everything
            the sample runs: the always-run layers, the gates and its gated blocks); at
            least the cost with every gated block skipped.
        max_blocks: optional cap on the gated blocks a sample runs (an int >= 0).
        max_density: optional cap in `(0, 1]` on the fraction of a spatially gated
            block's decision cells (positions, or tiles) a sample runs.

    Raises:
        ConfigError: empty or NaN thresholds, or a cap out of range, naming its key.
    """

    thresholds: tuple[float, ...]
    meta: dict = field(default_factory=dict, compare=False)
    max_flops: float | None = None
    max_blocks: int | None = None
    max_density: float | None = None

    def __post_init__(self) -> None:
        values = tuple(float(t) for t in self.thresholds)
        if not values or any(math.isnan(t) for t in values):
            raise ConfigError(f"GatePolicy: thresholds must be a non-empty list of numbers, got {self.thresholds!r}")
        object.__setattr__(self, "thresholds", values)
        if self.max_flops is not None:
            if not _is_number(self.max_flops) or not self.max_flops > 0:
                raise ConfigError(f"GatePolicy: key 'max_flops' must be a number > 0 (FLOPs per sample), "
                                  f"got {self.max_flops!r}")
            object.__setattr__(self, "max_flops", float(self.max_flops))
        if self.max_blocks is not None and not (
                isinstance(self.max_blocks, int) and not isinstance(self.max_blocks, bool) and self.max_blocks >= 0):
            raise ConfigError(f"GatePolicy: key 'max_blocks' must be an int >= 0 (gated blocks per sample), "
                              f"got {self.max_blocks!r}")
        if self.max_density is not None:
            if not _is_number(self.max_density) or not 0 < self.max_density <= 1:
                raise ConfigError(f"GatePolicy: key 'max_density' must be a number in (0, 1] (fraction of a "
                                  f"block's positions per sample), got {self.max_density!r}")
            object.__setattr__(self, "max_density", float(self.max_density))

    @classmethod
    def constant(cls, threshold: float, num_gates: int, **caps: Any) -> GatePolicy:
        """The same threshold for every one of `num_gates` gates (`caps`: `max_flops`, ...)."""
        return cls(tuple([float(threshold)] * num_gates), **caps)

    @property
    def caps(self) -> dict[str, float]:
        """The caps that are set, `{key: value}`."""
        return {key: getattr(self, key) for key in CAPS if getattr(self, key) is not None}

    def check(self, num_gates: int, owner: str = "model", caps: tuple[str, ...] = ()) -> GatePolicy:
        """`self`, after checking it has one threshold per gate of `owner` and sets no cap
        but those in `caps` (the ones `owner` honours)."""
        if len(self.thresholds) != num_gates:
            raise ConfigError(
                f"{owner}: the gate policy has {len(self.thresholds)} thresholds, the model has {num_gates} gates"
            )
        refused = [key for key in self.caps if key not in caps]
        if refused:
            takes = f"it takes {', '.join(map(repr, caps))}" if caps else "it takes none"
            raise ConfigError(f"{owner}: key {refused[0]!r}: this model does not honour that compute cap ({takes})")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or JSON (loads with `weights_only=True`); caps only when set."""
        return {"kind": "gate_thresholds", "thresholds": list(self.thresholds), "meta": dict(self.meta), **self.caps}

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
        caps = {key: data[key] for key in CAPS if data.get(key) is not None}
        return cls(tuple(data["thresholds"]), dict(data.get("meta") or {}), **caps)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
