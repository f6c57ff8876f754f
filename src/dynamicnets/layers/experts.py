"""MLP experts with batched weights, run expert by expert on their own tokens only."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}


class MLPExperts(nn.Module):
    """`num_experts` two-layer MLPs `act(x @ w1[e] + b1[e]) @ w2[e] + b2[e]`, weights stacked.

    Args:
        num_experts: `E`.
        d_model: token features `d`.
        hidden: hidden units `h` of each expert.
        activation: `"gelu"`, `"relu"` or `"silu"`.
        bias: learn `b1`, `b2`.

    Attributes:
        w1 `(E, d, h)`, b1 `(E, h)`, w2 `(E, h, d)`, b2 `(E, d)`.

    Shapes:
        `forward_grouped(x, counts)`: `(N, d)` rows sorted by expert (`counts[e]` rows for
        expert `e`) -> `(N, d)`. `forward_expert(e, x)`: `(n, d) -> (n, d)`.
        `forward_dense(x)`: `(T, d) -> (E, T, d)` (every expert on every token).
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        hidden: int,
        *,
        activation: str = "gelu",
        bias: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        sizes = {"num_experts": num_experts, "d_model": d_model, "hidden": hidden}
        for key, value in sizes.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"MLPExperts: {key} must be a positive int, got {value!r}")
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"MLPExperts: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.num_experts, self.d_model, self.hidden = num_experts, d_model, hidden
        self.activation = activation
        self.w1 = nn.Parameter(torch.empty(num_experts, d_model, hidden, **factory))
        self.w2 = nn.Parameter(torch.empty(num_experts, hidden, d_model, **factory))
        self.b1 = nn.Parameter(torch.empty(num_experts, hidden, **factory)) if bias else None
        self.b2 = nn.Parameter(torch.empty(num_experts, d_model, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """`nn.Linear`'s default init, per expert."""
        for w, fan_in in ((self.w1, self.d_model), (self.w2, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
        for b, fan_in in ((self.b1, self.d_model), (self.b2, self.hidden)):
            if b is not None:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(b, -bound, bound)

    def forward_expert(self, e: int, x: Tensor) -> Tensor:
        """Expert `e` on its rows `(n, d) -> (n, d)`."""
        act = ACTIVATIONS[self.activation]
        if self.b1 is None:
            return act(x @ self.w1[e]) @ self.w2[e]
        return torch.addmm(self.b2[e], act(torch.addmm(self.b1[e], x, self.w1[e])), self.w2[e])

    def forward_grouped(self, x: Tensor, counts: Sequence[int]) -> Tensor:
        """Rows sorted by expert, `counts[e]` of them for expert `e`: `(N, d) -> (N, d)`.

        Each expert's rows are a view of `x`; experts with no rows are skipped.
        """
        if len(counts) != self.num_experts or sum(counts) != x.shape[0]:
            raise ConfigError(
                f"MLPExperts: counts must give {self.num_experts} row counts summing to "
                f"{x.shape[0]}, got {list(counts)}"
            )
        outputs, start = [], 0
        for e, n in enumerate(counts):
            if n:
                outputs.append(self.forward_expert(e, x[start : start + n]))
            start += n
        if not outputs:
            return x.new_zeros(0, self.d_model)
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def forward_dense(self, x: Tensor) -> Tensor:
        """Every expert on every token: `(T, d) -> (E, T, d)` (batched matmuls)."""
        act = ACTIVATIONS[self.activation]
        h = torch.matmul(x, self.w1)  # (E, T, h)
        if self.b1 is not None:
            h = h + self.b1[:, None]
        y = torch.bmm(act(h), self.w2)
        return y if self.b2 is None else y + self.b2[:, None]

    def flops(self, rows: int) -> int:
        """FLOPs of running `rows` token-expert rows (two matmuls; biases not counted)."""
        return 4 * rows * self.d_model * self.hidden

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, d_model={self.d_model}, hidden={self.hidden}, "
            f"activation={self.activation!r}, bias={self.b1 is not None}"
        )
