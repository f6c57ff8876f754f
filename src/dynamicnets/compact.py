"""Compact-execution primitives: gather the rows that need work, run, scatter back.

Every compact path of the library (gated blocks, the exit executor, Skip-RNN, DS-Net's
width groups, trees, ACT, MoE dispatch) is built from these few functions, so their
behaviour is the same everywhere:

- rows are int64 `(n,)` indices along the batch dim 0;
- gathers use advanced indexing, which keeps a `channels_last` layout (`index_select`
  returns a contiguous tensor, and every later convolution would pay a conversion);
- scatters write into a copy unless `inplace=True` and autograd is off.

A *state* is one tensor or a (nested) list/tuple of tensors (MSDNet hands a list of
feature maps, one per scale, from stage to stage); `tree_map` and `gather_rows` accept
either.
"""
from __future__ import annotations

from typing import Callable, Iterator, Union

import torch
from torch import Tensor

State = Union[Tensor, list, tuple]


def tree_map(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply `fn` to every tensor of `state`, keeping the list/tuple structure."""
    if isinstance(state, Tensor):
        return fn(state)
    if isinstance(state, (list, tuple)):
        return type(state)(tree_map(fn, s) for s in state)
    raise TypeError(f"expected a Tensor or a list/tuple of them, got {type(state).__name__}")


def rows_where(mask: Tensor) -> Tensor:
    """Indices `(n,)` int64 of the True (nonzero) entries of a `(B,)` mask."""
    return torch.nonzero(mask).flatten()


def gather_rows(state: State, rows: Tensor) -> State:
    """Rows `rows` `(n,)` of every tensor of `state` along dim 0 (layout kept)."""
    return tree_map(lambda t: t[rows], state)


def scatter_rows(dest: Tensor, rows: Tensor, values: Tensor, *, inplace: bool = False) -> Tensor:
    """`dest` with rows `rows` replaced by `values` `(n, *dest.shape[1:])`.

    Writes into `dest` itself when `inplace` and autograd is off (saves copying the whole
    batch); otherwise into a copy that keeps `dest`'s memory format.
    """
    if inplace and not torch.is_grad_enabled():
        return dest.index_put_((rows,), values)
    return dest.index_put((rows,), values)


def add_rows(dest: Tensor, rows: Tensor, values: Tensor, *, inplace: bool = False) -> Tensor:
    """`dest` with `values` added at rows `rows` (repeated rows accumulate)."""
    if inplace and not torch.is_grad_enabled():
        return dest.index_add_(0, rows, values)
    return dest.index_add(0, rows, values)


def run_on_rows(fn: Callable[[Tensor], Tensor], x: Tensor, keep: Tensor, *,
                inplace: bool = False) -> Tensor:
    """`fn` applied to the rows of `x` where `keep` `(B,)` is true; the other rows pass unchanged.

    `fn` must preserve shape, `(n, *S) -> (n, *S)`. No gather when every row is kept, no
    call when none is.
    """
    rows = rows_where(keep)
    count = rows.numel()
    if count == 0:
        return x
    if count == x.shape[0]:
        return fn(x)
    return scatter_rows(x, rows, fn(x[rows]), inplace=inplace)


def group_rows(choice: Tensor, num_groups: int) -> Iterator[tuple[int, Tensor]]:
    """For each value `g` in `0..num_groups-1` that `choice` `(B,)` takes, `(g, rows)`.

    Groups that no sample chose are not yielded, so each group runs once, on its own rows.
    """
    for group in range(num_groups):
        rows = rows_where(choice == group)
        if rows.numel():
            yield group, rows


def assemble_rows(pieces: list[tuple[Tensor, Tensor]], batch: int) -> Tensor:
    """One `(batch, *S)` tensor from `(rows, values)` pieces that cover every row once."""
    rows = torch.cat([r for r, _ in pieces])
    values = torch.cat([v for _, v in pieces])
    out = values.new_empty((batch, *values.shape[1:]))
    return out.index_copy_(0, rows, values)
