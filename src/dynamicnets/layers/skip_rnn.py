"""Skip-RNN (Campos, Jou, Giró-i-Nieto, Torres, Chang, "Skip RNN: Learning to Skip State
Updates in Recurrent Neural Networks", ICLR 2018) over an LSTM cell (`SkipLSTM`) or a GRU
cell (`SkipGRU`); both share the skip logic of `SkipRNN`.

At every step the network either updates its state with the LSTM cell or copies it
unchanged. A scalar accumulates the probability of updating:

    u_t      = [u~_t > 0.5]                      (binary; straight-through gradient)
    s_t      = u_t * cell(x_t, s_{t-1}) + (1 - u_t) * s_{t-1}   (s = (h, c) or s = h)
    du_t     = sigmoid(w . c_t + b)       (c_t: the LSTM's cell state, the GRU's h_t)
    u~_{t+1} = u_t * du_t + (1 - u_t) * (u~_t + min(du_t, 1 - u~_t)),   u~_1 = 1

so after an update `du_t` says how soon the next one comes (`1 / du_t` steps, roughly),
and while skipping the probability grows by the same `du_t` each step. A skipped step's
state is the last one, so its `du_t` is the last update's and needs no computation.

Execution:

- `masked` (training): the cell runs on every sample at every step and the result is
  mixed with the old state by `u_t`, so `u_t` gets a gradient (`h_new - h_old`).
- `compact` (inference): at each step the cell runs only on the samples that update
  (gathered, computed, written back); a step nobody updates costs no cell call, a step
  everybody updates needs no gather. Same decisions and states as `masked` (the mixing
  above is exact for 0/1 gates): bit for bit where a step runs the whole batch or nobody;
  where it runs some rows only, the matrix products on fewer rows may round differently
  (a few ulps). The update gate gets no gradient here.
  `u~` and `du` are kept on the host as NumPy arrays of the input's precision (whose
  float32 / float64 arithmetic rounds like the tensor ops of `masked`), so the rows of
  every step are known before it runs: a skipped step costs no tensor op, an update step
  a gather, the fused cell op (`torch.lstm_cell` / `torch.gru_cell`), the gate's one
  matrix product, an in-place write-back and one host read of the new `du`.

Per-sample FLOPs (counted like `FlopCounterMode`: the cell's two matrix products and the
update gate's dot product; activations free) are `steps run x step_flops()`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..gates.straight_through import ste_threshold
from ..flops import gru_cell_flops, linear_flops, lstm_cell_flops
from ..compact import rows_where, scatter_rows
from ..execution import Execution, ExecutionLike, resolve_execution


@dataclass
class SkipRNNResult:
    """What `SkipRNN.forward` returns.

    Attributes:
        hidden: `(B, hidden_size)` the last hidden state `h_T`.
        updates: `(B, T)` 0/1 in `x`'s dtype, 1 where the state was updated (with the
            straight-through gradient in `masked` execution).
        flops: `(B,)` float64 per-sample FLOPs of the steps that ran.
    """

    hidden: Tensor
    updates: Tensor
    flops: Tensor


class SkipRNN(nn.Module):
    """The Skip-RNN logic over a recurrent cell; `SkipLSTM` and `SkipGRU` give the cell.

    A subclass passes its cell (an `nn.LSTMCell` / `nn.GRUCell`-like module with
    `input_size` and `hidden_size`) and defines `_state_size`, `_cell_fn` and
    `_cell_flops`. The state is a tuple of `(B, hidden_size)` tensors: the first is the
    hidden state `h`, the last feeds the update gate.

    Args:
        cell: the recurrent cell.
        update_bias_init: initial bias of the update gate `du = sigmoid(w . c + b)`
            (positive: update at most steps at first).

    Shapes:
        `forward(x (B, T, input_size)) -> SkipRNNResult` with `hidden (B, hidden_size)`,
        `updates (B, T)`, `flops (B,)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    _state_size: int

    def __init__(self, cell: nn.Module, update_bias_init: float, device=None, dtype=None) -> None:
        super().__init__()
        self.cell = cell
        self.update_gate = nn.Linear(cell.hidden_size, 1, device=device, dtype=dtype)
        nn.init.constant_(self.update_gate.bias, update_bias_init)

    @staticmethod
    def _check_sizes(name: str, input_size: int, hidden_size: int) -> None:
        if input_size < 1 or hidden_size < 1:
            raise ConfigError(f"{name}: input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")

    def _cell_fn(self) -> Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]:
        """The cell step `(x (n, input_size), state of (n, hidden_size)) -> next state`: the
        fused op the cell module calls, its weights bound once per forward (no module call
        and no attribute lookups per step)."""
        raise NotImplementedError

    def _cell_flops(self) -> int:
        """Per-sample FLOPs of one cell step."""
        raise NotImplementedError

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    def step_flops(self) -> int:
        """Per-sample FLOPs of one updating step: the cell's two products and the gate."""
        return self._cell_flops() + linear_flops(self.update_gate)

    def _check(self, x: Tensor, updates: Tensor | None) -> None:
        name = type(self).__name__
        if x.dim() != 3 or x.shape[2] != self.cell.input_size:
            raise ConfigError(
                f"{name}: expected input (B, T, {self.cell.input_size}), got {tuple(x.shape)}"
            )
        if x.shape[1] < 1:
            raise ConfigError(f"{name}: input x must have at least one step (T >= 1), got shape {tuple(x.shape)}")
        if updates is not None and tuple(updates.shape) != tuple(x.shape[:2]):
            raise ConfigError(f"{name}: updates must have shape (B, T) = {tuple(x.shape[:2])}, "
                              f"got {tuple(updates.shape)}")

    def _delta_fn(self) -> Callable[[Tensor], Tensor]:
        """`c (n, H) -> du (n,)`, `du = sigmoid(w . c + b)`: one `addmm` (what `nn.Linear`
        runs), the weights bound once per forward, the sigmoid in place without autograd."""
        bias, weight_t = self.update_gate.bias, self.update_gate.weight.t()
        if torch.is_grad_enabled():
            return lambda c: torch.addmm(bias, c, weight_t).view(-1).sigmoid()
        return lambda c: torch.addmm(bias, c, weight_t).view(-1).sigmoid_()

    def _initial_delta(self) -> float:
        """`du` of the zero state, `sigmoid(b)`: what a sample that skips the first step carries."""
        return float(torch.sigmoid(self.update_gate.bias.detach()).item())

    def forward(self, x: Tensor, *, execution: ExecutionLike = None, updates: Tensor | None = None,
                threshold: float = 0.5) -> SkipRNNResult:
        """Run the sequence, updating the state only where the update gate decides so.

        Args:
            x: `(B, T, input_size)`.
            execution: `"masked"` or `"compact"` (see the module docstring); default masked
                in training, compact in eval.
            updates: optional `(B, T)` 0/1 decisions to apply instead of the gate's.
            threshold: the decision rule, `u_t = [u~_t > threshold]` (0.5 rounds, as in
                training; a model passes its `GatePolicy` here).

        Returns:
            `SkipRNNResult`.
        """
        self._check(x, updates)
        if resolve_execution(execution, self.training) is Execution.COMPACT:
            return self._compact(x, updates, float(threshold))
        return self._masked(x, updates, float(threshold))

    def _initial(self, x: Tensor) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
        batch = x.shape[0]
        zeros = x.new_zeros(batch, self.cell.hidden_size)
        u_tilde = x.new_ones(batch)
        # the du of the zero state (w . 0 + b = b), what a sample that skips the first step carries
        delta = torch.sigmoid(self.update_gate.bias).expand(batch)
        return (zeros,) * self._state_size, u_tilde, delta

    def _masked(self, x: Tensor, forced: Tensor | None, threshold: float) -> SkipRNNResult:
        state, u_tilde, delta = self._initial(x)
        seq = x.transpose(0, 1).contiguous()  # (T, B, I)
        cell, gate = self._cell_fn(), self._delta_fn()
        taken = []
        for t in range(x.shape[1]):
            u = ste_threshold(u_tilde, threshold) if forced is None else forced[:, t].to(x.dtype)
            new = cell(seq[t], state)
            w = u.unsqueeze(1)
            # exact for u in {0, 1}: 1*a + 0*b == a
            state = tuple(w * s_new + (1 - w) * s for s_new, s in zip(new, state))
            delta = u * gate(state[-1]) + (1 - u) * delta  # a skip keeps the last update's du
            u_tilde = u * delta + (1 - u) * (u_tilde + torch.minimum(delta, 1 - u_tilde))
            taken.append(u)
        updates = torch.stack(taken, dim=1)
        flops = torch.full((x.shape[0],), float(x.shape[1] * self.step_flops()), dtype=torch.float64,
                           device=x.device)
        return SkipRNNResult(hidden=state[0], updates=updates, flops=flops)

    def _compact(self, x: Tensor, forced: Tensor | None, threshold: float) -> SkipRNNResult:
        scalar = _SCALAR_TYPES.get(x.dtype)
        if scalar is None:  # no NumPy twin of this dtype (bfloat16, ...): decide with tensor ops
            return self._compact_tensors(x, forced, threshold)
        if x.shape[0] == 1:
            return self._compact_single(x, forced, threshold, scalar)
        return self._compact_scheduled(x, forced, threshold, scalar)

    def _compact_scheduled(self, x: Tensor, forced: Tensor | None, threshold: float, scalar) -> SkipRNNResult:
        """The batch, decided on the host (`_UpdateSchedule`): each step's rows are known
        before it runs, a skipped step costs no tensor op, an update step gathers its rows,
        runs the fused cell on them, writes them back into the state (in place without
        autograd) and reads their new `du` (its one host sync)."""
        batch, steps = x.shape[:2]
        seq = x.transpose(0, 1).contiguous().unbind(0)  # T views (B, I): each step's rows contiguous
        state = tuple(x.new_zeros(batch, self.hidden_size) for _ in range(self._state_size))
        given = None if forced is None else (forced > 0.5).T.cpu().numpy()  # (T, B)
        schedule = None if given is not None else _UpdateSchedule(batch, scalar, threshold, self._initial_delta())
        given_rows = None if given is None else _rows_per_step(given, x.device)
        taken = given if given is not None else np.zeros((steps, batch), dtype=bool)
        inplace = not torch.is_grad_enabled()
        cell, gate = self._cell_fn(), self._delta_fn()
        for t, x_t in enumerate(seq):
            if schedule is None:
                count, index = given_rows[t]
            else:
                on = schedule.decide()
                rows = on.nonzero()[0]
                count, index = rows.size, None
            delta = None
            if count == batch:
                state = cell(x_t, state)
                delta = gate(state[-1])
            elif count:
                if index is None:
                    index = torch.from_numpy(rows).to(x.device)
                run = cell(x_t.index_select(0, index), tuple([s.index_select(0, index) for s in state]))
                state = tuple([scatter_rows(s, index, s_run, inplace=inplace) for s, s_run in zip(state, run)])
                delta = gate(run[-1])
            if schedule is not None:
                taken[t] = on
                schedule.advance(on, rows, delta)
        return self._compact_result(state[0], np.ascontiguousarray(taken.T), x)

    def _compact_tensors(self, x: Tensor, forced: Tensor | None, threshold: float) -> SkipRNNResult:
        """The batch, decided with tensor ops (dtypes NumPy has no twin of)."""
        batch, steps = x.shape[:2]
        state, u_tilde, delta = self._initial(x)
        seq = x.transpose(0, 1).contiguous()
        cell, gate = self._cell_fn(), self._delta_fn()
        taken = []
        for t in range(steps):
            on = (u_tilde > threshold) if forced is None else (forced[:, t] > 0.5)
            rows = rows_where(on)
            if rows.numel() == batch:
                state = cell(seq[t], state)
                delta = gate(state[-1])
            elif rows.numel() > 0:
                run = cell(seq[t][rows], tuple(s[rows] for s in state))
                state = tuple(scatter_rows(s, rows, s_run) for s, s_run in zip(state, run))
                delta = scatter_rows(delta, rows, gate(run[-1]))
            u_tilde = torch.where(on, delta, u_tilde + torch.minimum(delta, 1 - u_tilde))
            taken.append(on)
        updates = torch.stack(taken, dim=1).to(x.dtype)
        return SkipRNNResult(hidden=state[0], updates=updates,
                             flops=updates.double().sum(dim=1) * float(self.step_flops()))

    def _compact_result(self, hidden: Tensor, taken: np.ndarray, x: Tensor) -> SkipRNNResult:
        """`taken (B, T)` bool decisions -> the result; compact execution costs one step per update."""
        flops = taken.sum(axis=1, dtype=np.float64) * float(self.step_flops())
        return SkipRNNResult(hidden=hidden, updates=torch.from_numpy(taken).to(device=x.device, dtype=x.dtype),
                             flops=torch.from_numpy(flops).to(x.device))

    def _compact_single(self, x: Tensor, forced: Tensor | None, threshold: float, scalar) -> SkipRNNResult:
        """One sample: `u~` and `du` kept as NumPy scalars of `x`'s precision, so a skipped
        step costs no tensor op at all and an update one sync (`du`). NumPy's float32 /
        float64 scalar arithmetic rounds like the tensor ops of `_masked`, so the decisions
        are the same, bit for bit."""
        one, cut = scalar(1.0), scalar(threshold)
        state = tuple(x.new_zeros(1, self.hidden_size) for _ in range(self._state_size))
        u_tilde, delta = one, scalar(self._initial_delta())
        given = None if forced is None else (forced[0] > 0.5).tolist()
        cell, gate = self._cell_fn(), self._delta_fn()
        taken = []
        for x_t in x.unbind(1):  # (1, I) views
            on = bool(u_tilde > cut) if given is None else given[len(taken)]
            if on:
                state = cell(x_t, state)
                new_delta = gate(state[-1])  # computed (and counted) with given decisions too
                if given is None:
                    delta = u_tilde = scalar(new_delta.item())
            elif given is None:
                u_tilde = u_tilde + min(delta, one - u_tilde)
            taken.append(on)
        return self._compact_result(state[0], np.array([taken], dtype=bool), x)


def _rows_per_step(given: np.ndarray, device: torch.device) -> list[tuple[int, Tensor]]:
    """`given (T, B)` bool -> for each step, `(n, rows (n,) int64 on device)` of the
    samples that update: one `nonzero` and one transfer for the whole sequence."""
    step_of, rows = np.nonzero(given)  # row-major: sorted by step, then by sample
    counts = np.bincount(step_of, minlength=given.shape[0]).tolist()
    return list(zip(counts, torch.split(torch.from_numpy(rows).to(device), counts)))


class _UpdateSchedule:
    """`u~` and `du` of every sample of a batch as NumPy arrays of the input's precision.

    NumPy's float32 / float64 elementwise ops round like the tensor ops of the masked
    path, so `decide` gives the masked decisions bit for bit, without a tensor op.

    Args:
        batch: samples `B`.
        scalar: `np.float32` or `np.float64`.
        threshold: update where `u~ > threshold`.
        delta: `du` of the zero state, carried by samples that skip the first step.
    """

    def __init__(self, batch: int, scalar, threshold: float, delta: float) -> None:
        self.u_tilde = np.ones(batch, dtype=scalar)
        self.delta = np.full(batch, delta, dtype=scalar)
        self.cut, self.one = scalar(threshold), scalar(1.0)

    def decide(self) -> np.ndarray:
        """`(B,)` bool: the samples that update at this step."""
        return self.u_tilde > self.cut

    def advance(self, on: np.ndarray, rows: np.ndarray, delta: Tensor | None) -> None:
        """After a step: `on (B,)` who updated, `rows (n,)` their indices, `delta (n,)` their new `du`."""
        if delta is not None:
            delta = delta.detach()
            if delta.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16; float64 stays float64
                delta = delta.float()
            self.delta[rows] = delta.cpu().numpy()
        grown = self.u_tilde + np.minimum(self.delta, self.one - self.u_tilde)
        self.u_tilde = np.where(on, self.delta, grown)


class SkipLSTM(SkipRNN):
    """An LSTM that learns to skip state updates (Skip-RNN); the update gate reads the
    cell state `c`.

    Args:
        input_size, hidden_size: of the `nn.LSTMCell`.
        update_bias_init: initial bias of the update gate `du = sigmoid(w . c + b)`
            (positive: update at most steps at first).

    Shapes:
        `forward(x (B, T, input_size)) -> SkipRNNResult` with `hidden (B, hidden_size)`,
        `updates (B, T)`, `flops (B,)`.
    """

    _state_size = 2

    def __init__(
        self, input_size: int, hidden_size: int, *, update_bias_init: float = 2.0, device=None, dtype=None
    ) -> None:
        self._check_sizes("SkipLSTM", input_size, hidden_size)
        cell = nn.LSTMCell(input_size, hidden_size, device=device, dtype=dtype)
        super().__init__(cell, update_bias_init, device=device, dtype=dtype)

    def _cell_fn(self) -> Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]:
        weights = (self.cell.weight_ih, self.cell.weight_hh, self.cell.bias_ih, self.cell.bias_hh)
        return lambda x, state: torch.lstm_cell(x, state, *weights)  # what `nn.LSTMCell` runs

    def _cell_flops(self) -> int:
        return lstm_cell_flops(self.cell)


class SkipGRU(SkipRNN):
    """A GRU that learns to skip state updates (Skip-RNN); the update gate reads `h`.

    Args:
        input_size, hidden_size: of the `nn.GRUCell`.
        update_bias_init: initial bias of the update gate `du = sigmoid(w . h + b)`
            (positive: update at most steps at first).

    Shapes:
        `forward(x (B, T, input_size)) -> SkipRNNResult` with `hidden (B, hidden_size)`,
        `updates (B, T)`, `flops (B,)`.
    """

    _state_size = 1

    def __init__(
        self, input_size: int, hidden_size: int, *, update_bias_init: float = 2.0, device=None, dtype=None
    ) -> None:
        self._check_sizes("SkipGRU", input_size, hidden_size)
        cell = nn.GRUCell(input_size, hidden_size, device=device, dtype=dtype)
        super().__init__(cell, update_bias_init, device=device, dtype=dtype)

    def _cell_fn(self) -> Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]:
        weights = (self.cell.weight_ih, self.cell.weight_hh, self.cell.bias_ih, self.cell.bias_hh)
        return lambda x, state: (torch.gru_cell(x, state[0], *weights),)  # what `nn.GRUCell` runs

    def _cell_flops(self) -> int:
        return gru_cell_flops(self.cell)


_SCALAR_TYPES = {torch.float32: np.float32, torch.float64: np.float64}
