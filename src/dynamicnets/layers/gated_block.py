"""Gated residual blocks: run a block on the samples whose gate is on, skip it for the rest.

A gated block computes, per sample `b`,

    y_b = g_b * block(x_b) + (1 - g_b) * x_b

where `block` is the *whole* residual block (`relu(branch(x) + x)` for a post-activation
`BasicBlock`), not only its residual branch. Gating the whole block is what makes a skip an
exact identity: with `g_b = 0` the sample leaves unchanged, with `g_b = 1` it gets exactly
`block(x_b)` (`1 * a + 0 * b == a` in floating point). Gating only the branch,
`relu(x + g * branch(x))`, is an identity only because the input of a post-activation block
is non-negative; the form above needs no such assumption and covers pre-activation blocks
too. It is SkipNet's formulation (Wang et al. 2018); with hard gates it equals ConvNet-AIG's.

A block can only be skipped when its output has its input's shape. Blocks with a
downsampling or widening shortcut are never gated (SkipNet and ConvNet-AIG execute the
first block of every stage as well).

Two executions of the same decisions:

- `masked` (training, static shapes): the block runs on the whole batch and the mix above
  is applied with `g` of shape `(B,)`, hard (0/1, possibly straight-through) or soft. Every
  parameter of the block and of whatever produced `g` gets a gradient.
- `compact` (inference): the samples with `g_b = 1` are gathered, the block runs on them
  only and the results are written back over `x` (`index_put`); the other samples are
  copied through. No gather when every gate is on, no block call when every gate is off.
  Needs hard gates. Gather and write-back keep `channels_last` tensors in that layout;
  without autograd the write-back can go into `x` itself (`inplace=True`), which saves
  copying the whole batch at every block.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..compact import rows_where, scatter_rows
from ..errors import ConfigError
from ..execution import Execution, parse_execution


def _mix(gate: Tensor, on: Tensor, off: Tensor) -> Tensor:
    """`gate * on + (1 - gate) * off` with `gate` `(B,)` broadcast over the sample dims."""
    g = gate.to(on.dtype).view(-1, *([1] * (on.dim() - 1)))
    return g * on + (1 - g) * off


def is_hard(gate: Tensor) -> bool:
    """Whether every value of `gate` is exactly 0 or 1."""
    return bool(((gate == 0) | (gate == 1)).all())


def run_gated(
    block: Callable[[Tensor], Tensor],
    x: Tensor,
    gate: Tensor,
    execution: Execution | str = Execution.MASKED,
    *,
    validate: bool = True,
    inplace: bool = False,
) -> Tensor:
    """Apply `block` to the samples of `x` whose gate is on; the others pass unchanged.

    Args:
        block: a callable `(N, *S) -> (N, *S)` (shape-preserving), applied per sample
            (no interaction between samples other than batch-norm statistics in training).
        x: `(B, *S)` input.
        gate: `(B,)` gate values: in `[0, 1]` for `masked`, exactly 0/1 (float or bool)
            for `compact`. A gate that requires grad keeps its gradient in both executions
            (in `compact` only the executed samples' gates receive one: the others ran
            nothing).
        execution: `"masked"` or `"compact"` (see the module docstring).
        validate: check the gate's shape and, for `compact`, that it is hard. Callers
            that made the gate themselves (e.g. by a comparison) may skip the check, which
            costs a few small tensor ops per block.
        inplace: `compact` only, without autograd: write the executed samples back into
            `x` itself instead of a copy. Saves copying the whole batch per block; use it
            only on an intermediate activation that nothing else reads afterwards.

    Returns:
        `(B, *S)`: `gate * block(x) + (1 - gate) * x` per sample.

    Raises:
        ConfigError: (a `ValueError`) if `gate` is not `(B,)`, is soft with
            `execution="compact"`, or `execution` is unknown (checks skipped with
            `validate=False`, except the last).
    """
    execution = parse_execution(execution)
    if validate and gate.shape != (x.shape[0],):
        raise ConfigError(f"gate must have shape (B,) = ({x.shape[0]},), got {tuple(gate.shape)}")
    if execution is Execution.MASKED:
        return _mix(gate, block(x), x)
    if validate and not is_hard(gate):
        raise ConfigError("compact execution needs hard gates (every value exactly 0 or 1)")
    keep_grad = torch.is_grad_enabled() and gate.requires_grad
    index = rows_where(gate)
    count = index.numel()
    if count == 0:
        return x
    if count == x.shape[0]:
        y = block(x)
        return _mix(gate, y, x) if keep_grad else y
    x_on = x[index]
    y_on = block(x_on)
    if keep_grad:
        y_on = _mix(gate[index], y_on, x_on)
    return scatter_rows(x, index, y_on, inplace=inplace)


class GatedResidual(nn.Module):
    """A shape-preserving block whose execution is decided per sample by a gate argument.

    The module holds no gate: the decision is a forward argument (policy apart from
    mechanism), so any gate network, policy or schedule can drive it.

    Args:
        block: the wrapped module, `(N, *S) -> (N, *S)`.

    Shapes:
        `forward(x (B, *S), gate (B,), execution) -> (B, *S)` (see `run_gated`).
    """

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor, gate: Tensor, execution: Execution | str = Execution.MASKED) -> Tensor:
        return run_gated(self.block, x, gate, execution)


def gated_flops(block_flops: Tensor, gates: Tensor) -> Tensor:
    """Per-sample FLOPs of gated blocks under hard (or, as an expectation, soft) gates.

    Args:
        block_flops: `(G,)` per-sample FLOPs of each gated block.
        gates: `(B, G)` decisions.

    Returns:
        `(B,)` float64: `sum_i gates[b, i] * block_flops[i]`.
    """
    return gates.detach().to(torch.float64) @ block_flops.to(device=gates.device, dtype=torch.float64)
