"""Skim-RNN (Seo, Min, Farhadi, Hajishirzi, "Neural Speed Reading via Skim-RNN", ICLR 2018)
over LSTM cells: at every step a sample either *reads* (a big LSTM cell, hidden size `d`,
updates the whole state) or *skims* (a small LSTM cell, hidden size `d' << d`, updates
only the first `d'` dimensions of the state; the other `d - d'` are copied).

With the state `s = (h, c)`, both `(B, d)`, and the input `x_t`:

    p_t = softmax(W [x_t; h_{t-1}] + b)              (2-way: p_t[0] read, p_t[1] skim)
    Q_t ~ p_t                                        (the choice; 1 = read in `choices`)
    s_t = big(x_t, s_{t-1})                                      if read
    s_t = [small(x_t, s_{t-1}[:d']); s_{t-1}[d':]]               if skim

(the small cell's state is the first `d'` dimensions of `h` and of `c`, as in the
authors' code). Training relaxes the choice with Gumbel-softmax, `r_t =
softmax((log p_t + g_t) / tau)`, and mixes the two candidate states, `s_t = r_t[0] *
read + r_t[1] * skim`; the paper anneals `tau` towards 0.5. Its skim loss (added by the
model) is `gamma * mean over samples of (1/T) sum_t -log p_t[1]`, pulling towards
skimming.

Execution:

- `masked` (training): both cells run on every sample at every step and their states
  are mixed by `r_t` (soft, or straight-through one-hot with `hard=True`); in eval mode,
  or with `choices` given, by the exact 0/1 choice (`1 * a + 0 * b == a`).
- `compact` (inference): at each step the batch is split by the choice; the read rows
  run the big cell once and the skim rows the small cell once (gathered, computed,
  written back). A step where every sample makes the same choice needs no gather. The
  choice layer runs on every sample (it decides).

The inference decision rule is a threshold on the probability of reading: read where
`p_t[0] > threshold` (0.5: the more likely choice; lower reads more), compared as
`l_read - l_skim > log(threshold / (1 - threshold))` on the choice logits. Without `choices`
both executions in eval mode take these decisions.

Per-sample FLOPs (counted like `FlopCounterMode`: the cells' two matrix products and the
choice layer's, whose input part is one product over all steps and whose state part one
per step; activations, softmax and mixing free): `compact` costs
`sum_t (read ? big : small) + T * choice`; `masked` runs both cells at every step,
`T * (big + small + choice)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..compact import rows_where
from ..errors import ConfigError
from ..execution import Execution, ExecutionLike, resolve_execution
from ..flops import linear_flops, lstm_cell_flops
from ..gates.gumbel import gumbel_softmax

READ, SKIM = 0, 1  # columns of the choice logits and probabilities, in the paper's order


@dataclass
class SkimRNNResult:
    """What `SkimLSTM.forward` returns.

    Attributes:
        hidden: `(B, hidden_size)` the last hidden state `h_T`.
        choices: `(B, T)` 0/1 in `x`'s dtype, 1 where the big cell read the step (in
            masked training: the hard choice of the relaxed sample; its weight `r_t[0]`
            carries the gradient).
        log_probs: `(B, T, 2)` `log p_t` (read, skim) of the choice layer (with gradient
            in `masked` execution).
        flops: `(B,)` float64 per-sample FLOPs of what ran.
    """

    hidden: Tensor
    choices: Tensor
    log_probs: Tensor
    flops: Tensor


class SkimLSTM(nn.Module):
    """An LSTM that skims: a big cell reads the important steps, a small one skims the rest.

    Args:
        input_size: features per step.
        hidden_size: `d`, the big cell's (and the state's) size.
        small_hidden_size: `d'`, the small cell's size, `1 <= d' < d`.
        tau: default Gumbel-softmax temperature `> 0` of training (a call may pass another).
        hard: train with straight-through one-hot choices instead of the paper's soft
            relaxed mixture.

    Shapes:
        `forward(x (B, T, input_size)) -> SkimRNNResult` with `hidden (B, hidden_size)`,
        `choices (B, T)`, `log_probs (B, T, 2)`, `flops (B,)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, input_size: int, hidden_size: int, small_hidden_size: int, *, tau: float = 0.5,
                 hard: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        if input_size < 1 or hidden_size < 1:
            raise ConfigError(f"SkimLSTM: input_size and hidden_size must be >= 1, got {input_size}, {hidden_size}")
        if not 1 <= small_hidden_size < hidden_size:
            raise ConfigError(f"SkimLSTM: small_hidden_size must be >= 1 and < hidden_size ({hidden_size}), "
                              f"got {small_hidden_size}")
        _check_tau(tau)
        factory = {"device": device, "dtype": dtype}
        self.big = nn.LSTMCell(input_size, hidden_size, **factory)
        self.small = nn.LSTMCell(input_size, small_hidden_size, **factory)
        self.choice = nn.Linear(input_size + hidden_size, 2, **factory)
        self.tau, self.hard = float(tau), bool(hard)

    @property
    def hidden_size(self) -> int:
        return self.big.hidden_size

    @property
    def small_hidden_size(self) -> int:
        return self.small.hidden_size

    def read_flops(self) -> int:
        """Per-sample FLOPs of a step the big cell reads (cell + choice layer)."""
        return lstm_cell_flops(self.big) + linear_flops(self.choice)

    def skim_flops(self) -> int:
        """Per-sample FLOPs of a step the small cell skims (cell + choice layer)."""
        return lstm_cell_flops(self.small) + linear_flops(self.choice)

    def masked_step_flops(self) -> int:
        """Per-sample FLOPs of a masked step: both cells and the choice layer."""
        return lstm_cell_flops(self.big) + lstm_cell_flops(self.small) + linear_flops(self.choice)

    def flops_of(self, choices: Tensor) -> Tensor:
        """`(B, T)` 0/1 choices -> `(B,)` float64 compact FLOPs of those choices."""
        reads = choices.detach().double().sum(dim=1)
        return reads * float(self.read_flops()) + (choices.shape[1] - reads) * float(self.skim_flops())

    def forward(self, x: Tensor, *, execution: ExecutionLike = None, choices: Tensor | None = None,
                threshold: float = 0.5, tau: float | None = None,
                generator: torch.Generator | None = None) -> SkimRNNResult:
        """Run the sequence, reading or skimming each step.

        Args:
            x: `(B, T, input_size)`, `T >= 1`.
            execution: `"masked"` or `"compact"` (see the module docstring); default masked
                in training, compact in eval.
            choices: optional `(B, T)` 0/1 decisions (1 = read with the big cell) to apply
                instead of the choice layer's.
            threshold: the inference rule, read where `p_t[0] > threshold` (used in eval
                mode and in `compact`; masked training samples instead).
            tau: Gumbel-softmax temperature of masked training (default `self.tau`).
            generator: optional `torch.Generator` for reproducible training draws.

        Returns:
            `SkimRNNResult`.
        """
        self._check(x, choices, threshold)
        tau = self.tau if tau is None else float(tau)
        _check_tau(tau)
        if resolve_execution(execution, self.training) is Execution.COMPACT:
            return self._compact(x, choices, float(threshold))
        return self._masked(x, choices, float(threshold), tau, generator)

    def _check(self, x: Tensor, choices: Tensor | None, threshold: float) -> None:
        if x.dim() != 3 or x.shape[2] != self.big.input_size:
            raise ConfigError(f"SkimLSTM: expected input x of shape (B, T, {self.big.input_size}), "
                              f"got {tuple(x.shape)}")
        if x.shape[1] < 1:
            raise ConfigError(f"SkimLSTM: input x must have at least one step (T >= 1), got shape {tuple(x.shape)}")
        if choices is not None and tuple(choices.shape) != tuple(x.shape[:2]):
            raise ConfigError(f"SkimLSTM: choices must have shape (B, T) = {tuple(x.shape[:2])}, "
                              f"got {tuple(choices.shape)}")
        if math.isnan(threshold):
            raise ConfigError(f"SkimLSTM: threshold must be a number (read where p_read > threshold), got {threshold!r}")

    def _choice_parts(self, seq: Tensor) -> tuple[Tensor, Tensor]:
        """`(T, B, I)` -> the input's part of the choice logits `(T, B, 2)` (with the bias),
        every step in one product, and the state's weight `(d, 2)`, which `torch.addmm(
        x_part[t], h, w_state)` turns into the step's logits `(B, 2)` (read, skim)."""
        inputs = self.big.input_size
        return (nn.functional.linear(seq, self.choice.weight[:, :inputs], self.choice.bias),
                self.choice.weight[:, inputs:].t())

    @staticmethod
    def _reads(logits: Tensor, threshold: float) -> Tensor:
        """`(n, 2) -> (n,)` bool: `p_read = sigmoid(l_read - l_skim) > threshold`, compared
        as logits (`threshold <= 0` always reads, `>= 1` never)."""
        return (logits[:, READ] - logits[:, SKIM]) > _logit_cut(threshold)

    @staticmethod
    def _reads_one(logits: Tensor, threshold: float) -> bool:
        """`_reads` of a `(1, 2)` float32/float64 row with one host sync and no tensor op:
        NumPy scalars of the logits' precision round like the tensor ops, so the decision
        is the same bit for bit."""
        scalar = _SCALAR_TYPES[logits.dtype]
        l_read, l_skim = logits[0].tolist()
        return bool(scalar(l_read) - scalar(l_skim) > scalar(_logit_cut(threshold)))

    def _skim(self, x_t: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The skim candidate state: the small cell on the first `d'` dimensions, the rest copied."""
        k = self.small.hidden_size
        h_small, c_small = self.small(x_t, (h[:, :k], c[:, :k]))
        return torch.cat([h_small, h[:, k:]], dim=1), torch.cat([c_small, c[:, k:]], dim=1)

    def _skim_all(self, x_t: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """`_skim` for a whole batch; without autograd it writes into the state in place."""
        if torch.is_grad_enabled():
            return self._skim(x_t, h, c)
        k = self.small.hidden_size
        h_head, c_head = h[:, :k], c[:, :k]
        h_small, c_small = self.small(x_t, (h_head, c_head))
        h_head.copy_(h_small)
        c_head.copy_(c_small)
        return h, c

    def _masked(self, x: Tensor, forced: Tensor | None, threshold: float, tau: float,
                generator: torch.Generator | None) -> SkimRNNResult:
        batch, steps = x.shape[:2]
        h = c = x.new_zeros(batch, self.hidden_size)
        seq = x.transpose(0, 1)  # (T, B, I)
        x_logits, w_state = self._choice_parts(seq)
        taken, all_logits = [], []
        for t in range(steps):
            logits = torch.addmm(x_logits[t], h, w_state)
            if forced is not None:
                read = forced[:, t].to(x.dtype)
                weights = torch.stack([read, 1 - read], dim=1)
            elif self.training:
                weights = gumbel_softmax(logits, tau, self.hard, generator)
                read = (weights[:, READ] > weights[:, SKIM]).to(x.dtype)
            else:
                read = self._reads(logits, threshold).to(x.dtype)
                weights = torch.stack([read, 1 - read], dim=1)
            h_read, c_read = self.big(seq[t], (h, c))
            h_skim, c_skim = self._skim(seq[t], h, c)
            w_read, w_skim = weights[:, READ:READ + 1], weights[:, SKIM:SKIM + 1]
            h = w_read * h_read + w_skim * h_skim  # exact for 0/1 weights
            c = w_read * c_read + w_skim * c_skim
            taken.append(read)
            all_logits.append(logits)
        flops = torch.full((batch,), float(steps * self.masked_step_flops()), dtype=torch.float64, device=x.device)
        return SkimRNNResult(hidden=h, choices=torch.stack(taken, dim=1).detach(),
                             log_probs=torch.log_softmax(torch.stack(all_logits, dim=1), dim=2), flops=flops)

    def _compact(self, x: Tensor, forced: Tensor | None, threshold: float) -> SkimRNNResult:
        batch, steps = x.shape[:2]
        h, c = x.new_zeros(batch, self.hidden_size), x.new_zeros(batch, self.hidden_size)  # written in place
        seq = x.transpose(0, 1).contiguous()  # (T, B, I): each step's rows contiguous for the gathers
        x_logits, w_state = self._choice_parts(seq)
        forced_reads = None if forced is None else (forced > 0.5).t()  # (T, B)
        forced_counts = None if forced is None else forced_reads.sum(dim=1).tolist()  # reads per step
        single = batch == 1 and forced is None and x.dtype in _SCALAR_TYPES
        taken, all_logits = [], []
        for t in range(steps):
            logits = torch.addmm(x_logits[t], h, w_state)
            if single:  # one sample: the decision as a Python bool, no tensor op
                read, reads = None, int(self._reads_one(logits, threshold))
            else:
                read = self._reads(logits, threshold) if forced is None else forced_reads[t]
                reads = int(read.sum()) if forced is None else forced_counts[t]
            if reads == batch:
                h, c = self.big(seq[t], (h, c))
            elif reads == 0:
                h, c = self._skim_all(seq[t], h, c)
            else:
                h, c = self._split_step(seq[t], h, c, read)
            taken.append(reads if single else read)
            all_logits.append(logits)
        if single:
            choices = torch.tensor([taken], dtype=x.dtype, device=x.device)
        else:
            choices = torch.stack(taken, dim=1).to(x.dtype)
        return SkimRNNResult(hidden=h, choices=choices, flops=self.flops_of(choices),
                             log_probs=torch.log_softmax(torch.stack(all_logits, dim=1), dim=2))

    def _split_step(self, x_t: Tensor, h: Tensor, c: Tensor, read: Tensor) -> tuple[Tensor, Tensor]:
        """One step of a batch that both reads and skims: each cell runs once, on its own
        rows (gathered); the results are written back into the state (a copy of it under
        autograd), the skim rows' into their first `d'` columns only."""
        k = self.small.hidden_size
        rows_read, rows_skim = rows_where(read), rows_where(~read)
        h_read, c_read = self.big(x_t[rows_read], (h[rows_read], c[rows_read]))
        h_small, c_small = self.small(x_t[rows_skim], (h[rows_skim, :k], c[rows_skim, :k]))
        # without autograd the old state is dead after this step: write into it
        h_new, c_new = (h, c) if not torch.is_grad_enabled() else (h.clone(), c.clone())
        h_new[rows_read], c_new[rows_read] = h_read, c_read
        h_new[rows_skim, :k], c_new[rows_skim, :k] = h_small, c_small
        return h_new, c_new

    def extra_repr(self) -> str:
        return f"tau={self.tau}, hard={self.hard}"


def _logit_cut(threshold: float) -> float:
    """`p > threshold` as `logit(p) > _logit_cut(threshold)`."""
    if threshold <= 0:
        return -math.inf
    if threshold >= 1:
        return math.inf
    return math.log(threshold / (1 - threshold))


_SCALAR_TYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ConfigError(f"SkimLSTM: Gumbel temperature tau must be > 0, got {tau!r}")
