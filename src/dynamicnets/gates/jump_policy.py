"""`JumpPolicy`: the inference decision rule of a jump softmax (LSTM-Jump), as an explicit object.

A jump head scores the choices `0..K` (0 = stop reading, `k` = move `k` tokens ahead).
Training samples from its softmax; at inference the rule that turns the scores into one
choice is a policy passed to the model (`model(x, policy=JumpPolicy(...))`), saved with
`to_dict` / `from_dict`, as `GatePolicy` is for threshold gates:

- greedy (the default): the most likely choice, `argmax`;
- `stop_threshold=s`: stop where `p(stop) >= s`, else the most likely jump `1..K`
  (a lower `s` stops earlier: fewer tokens read);
- `max_reads=n`: a compute cap, a sample stops once it has read `n` tokens whatever the
  head says (a bounded worst case: no input can make it read more).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class JumpPolicy:
    """How a jump head's scores become a choice at inference.

    Attributes:
        stop_threshold: `None` for the greedy argmax over `0..K`; a number in `(0, 1]`:
            stop where the stop probability is at least this, else the argmax over `1..K`.
        max_reads: optional cap (an int >= 1) on the tokens a sample reads.
        meta: free-form provenance, kept when saved.

    Raises:
        ConfigError: a value out of range, naming its key.
    """

    stop_threshold: float | None = None
    max_reads: int | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        s = self.stop_threshold
        if s is not None:
            if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s) or not 0 < s <= 1:
                raise ConfigError(f"JumpPolicy: key 'stop_threshold' must be a number in (0, 1] or null, got {s!r}")
            object.__setattr__(self, "stop_threshold", float(s))
        n = self.max_reads
        if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ConfigError(f"JumpPolicy: key 'max_reads' must be an int >= 1 (tokens per sample) or null, "
                              f"got {n!r}")

    def choose(self, logits: Tensor) -> Tensor:
        """`(n, K + 1)` jump scores -> `(n,)` int64 choices in `0..K`."""
        if self.stop_threshold is None:
            return logits.argmax(dim=-1)
        p_stop = torch.softmax(logits.float(), dim=-1)[:, 0]
        jump = logits[:, 1:].argmax(dim=-1) + 1
        return torch.where(p_stop >= self.stop_threshold, torch.zeros_like(jump), jump)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint or JSON (loads with `weights_only=True`)."""
        return {"kind": "jump_policy", "stop_threshold": self.stop_threshold, "max_reads": self.max_reads,
                "meta": dict(self.meta)}

    @classmethod
    def from_dict(cls, data: Any, source: str = "jump policy") -> JumpPolicy:
        """Inverse of `to_dict`.

        Raises:
            ConfigError: naming `source`, when `data` is not a saved jump policy.
        """
        if not isinstance(data, dict) or data.get("kind") != "jump_policy":
            raise ConfigError(f"{source}: expected a saved jump policy {{kind: jump_policy, ...}}, got {data!r}")
        return cls(data.get("stop_threshold"), data.get("max_reads"), dict(data.get("meta") or {}))
