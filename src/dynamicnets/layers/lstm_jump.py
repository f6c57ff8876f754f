"""LSTM-Jump (Yu, Lee, Le, "Learning to Skim Text", ACL 2017): an LSTM that reads a few
tokens, then decides how far to jump.

Hyper-parameters: `R` (`read_steps`) tokens read between decisions, `K` (`max_jump`) the
largest jump, `N` (`max_jumps`) the number of jumps allowed (`None`: as many as the
sequence holds). Every sample starts at token 0 and runs:

1. read the next token: `(h, c) = cell(x_t, (h, c))`;
2. stop if that was the last token of the sequence (or, at inference, the policy's
   `max_reads` cap is reached);
3. after `R` tokens read since the last jump: if `N` jumps were made already, stop;
   else the jump head scores `softmax(W h + b)` over `0..K` and a choice `k` is made
   (sampled in training, `JumpPolicy` at inference, or given):
   `k = 0` stops; `k >= 1` skips the next `k - 1` tokens, so the next token read is
   `x_{t + k}` (the paper's "next token to read is `x_{R + k}`" after reading `x_1..x_R`),
   and stops if that is past the end;
4. otherwise read on (step 1).

The final state is the hidden state `h` when the sample stopped. A sample makes at most
`max_decisions(T) = min(N, ceil((T - 1) / R))` decisions; the choices are returned as
`jumps (B, D)` (`-1` where no decision was made) and can be given back as forced
decisions.

Execution:

- `masked` (training): static shapes, no host sync. At every step the cell runs on the
  whole batch and only the samples that read this step take the new state (`torch.where`);
  a sample that stopped or is jumping carries its state unchanged. The jump head runs on
  the whole batch at every step that can hold a decision; only the deciding samples use
  it. The decisions get no gradient through the state; the head learns by REINFORCE from
  `log_prob` (see `models.temporal.lstm_jump`).
- `compact` (inference): read by read, not step by step. Samples are independent, so
  in round `k` every live sample reads its own `k`-th token wherever it stands
  (`x[b, nxt_b]`, one gather): the cell runs once per round on the live rows only (no
  step of the sequence that nobody reads costs anything, and samples reading different
  steps share one call), the jump head only on the rows that decide, and samples that
  stop leave the batch (their final `h` is written out, the live state shrinks). Cell
  calls = the most tokens any sample reads. Same decisions and states as `masked` for
  the same choices.

Per-sample FLOPs (counted like `FlopCounterMode`: the cell's two matrix products and the
jump head's; activations free): compact `reads x cell + decisions x jump head`;
masked `T x cell + (T - 1) x jump head` (all that runs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..compact import scatter_rows
from ..errors import ConfigError
from ..execution import Execution, ExecutionLike, resolve_execution
from ..flops import linear_flops, lstm_cell_flops
from ..gates.jump_policy import JumpPolicy
from ..gates.policy import CategoricalPolicy


@dataclass
class LSTMJumpResult:
    """What `LSTMJump.forward` returns.

    Attributes:
        hidden: `(B, hidden_size)` the hidden state when each sample stopped.
        reads: `(B, T)` 0/1 in `x`'s dtype, 1 at the tokens each sample read.
        jumps: `(B, D)` int64 choices in `0..K` at each decision, `-1` where none was made.
        log_prob: `(B,)` summed log-probability of the choices made (differentiable in the
            jump head), or `None` (compact execution without sampling).
        entropy: `(B,)` summed entropy of the jump softmax at the decisions made, or `None`
            like `log_prob`.
        flops: `(B,)` float64 per-sample FLOPs of what ran.
    """

    hidden: Tensor
    reads: Tensor
    jumps: Tensor
    log_prob: Tensor | None
    entropy: Tensor | None
    flops: Tensor


class LSTMJump(nn.Module):
    """An LSTM cell that reads `R` tokens, then jumps `0..K` tokens ahead (module docstring).

    Args:
        input_size, hidden_size: of the `nn.LSTMCell`.
        read_steps: `R`, tokens read between jump decisions, `>= 1`.
        max_jump: `K`, the largest jump, `>= 1` (the head scores `K + 1` choices).
        max_jumps: `N`, jumps allowed per sample (`>= 1`), or `None` for no limit but the
            sequence's end.

    Shapes:
        `forward(x (B, T, input_size)) -> LSTMJumpResult` with `hidden (B, hidden_size)`,
        `reads (B, T)`, `jumps (B, max_decisions(T))`, `flops (B,)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, input_size: int, hidden_size: int, *, read_steps: int = 1, max_jump: int = 10,
                 max_jumps: int | None = None, device=None, dtype=None) -> None:
        super().__init__()
        for key, value in (("input_size", input_size), ("hidden_size", hidden_size), ("read_steps", read_steps),
                           ("max_jump", max_jump)):
            _require_int(key, value)
        if max_jumps is not None:
            _require_int("max_jumps", max_jumps)
        self.read_steps, self.max_jump, self.max_jumps = read_steps, max_jump, max_jumps
        self.cell = nn.LSTMCell(input_size, hidden_size, device=device, dtype=dtype)
        self.jump = nn.Linear(hidden_size, max_jump + 1, device=device, dtype=dtype)

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    def read_flops(self) -> int:
        """Per-sample FLOPs of reading one token (the cell's two matrix products)."""
        return lstm_cell_flops(self.cell)

    def jump_flops(self) -> int:
        """Per-sample FLOPs of one evaluation of the jump head."""
        return linear_flops(self.jump)

    def max_decisions(self, steps: int) -> int:
        """The most decisions a sample can make on `steps` tokens: `min(N, ceil((T - 1) / R))`."""
        most = math.ceil((steps - 1) / self.read_steps)
        return most if self.max_jumps is None else min(self.max_jumps, most)

    def masked_flops(self, steps: int) -> float:
        """Per-sample FLOPs of `masked` execution on `steps` tokens (the cell at every step,
        the head at every step that can hold a decision)."""
        head_steps = steps - 1 if self.max_decisions(steps) > 0 else 0
        return float(steps * self.read_flops() + head_steps * self.jump_flops())

    def worst_case_flops(self, steps: int, max_reads: int | None = None) -> float:
        """The most per-sample FLOPs `compact` execution can cost on `steps` tokens, whatever
        the input and the choices: at most `n = min(T, max_reads, (N + 1) R)` tokens read
        (`N` jumps, each after `R` reads, then `R` more) and `min(floor((n - 1) / R), N)`
        jump-head evaluations (one after every `R` reads but the last read, none once `N`
        jumps are made).

        Args:
            steps: `T`, tokens per sequence (>= 1).
            max_reads: the policy's cap on tokens read (`JumpPolicy.max_reads`), or None.
        """
        reads = steps if max_reads is None else min(steps, max_reads)
        decisions = (reads - 1) // self.read_steps
        if self.max_jumps is not None:
            reads = min(reads, (self.max_jumps + 1) * self.read_steps)
            decisions = min((reads - 1) // self.read_steps, self.max_jumps)
        return float(reads * self.read_flops() + decisions * self.jump_flops())

    def _check(self, x: Tensor, jumps: Tensor | None) -> None:
        if x.dim() != 3 or x.shape[2] != self.cell.input_size:
            raise ConfigError(f"LSTMJump: expected input x (B, T, {self.cell.input_size}), got {tuple(x.shape)}")
        if x.shape[1] < 1:
            raise ConfigError(f"LSTMJump: input x must have at least one step (T >= 1), got shape {tuple(x.shape)}")
        if jumps is not None:
            expected = (x.shape[0], self.max_decisions(x.shape[1]))
            if tuple(jumps.shape) != expected or jumps.is_floating_point():
                raise ConfigError(f"LSTMJump: jumps must be an integer tensor of shape (B, max_decisions(T)) = "
                                  f"{expected}, got {tuple(jumps.shape)} {jumps.dtype}")
            if jumps.numel() and (int(jumps.min()) < -1 or int(jumps.max()) > self.max_jump):
                raise ConfigError(f"LSTMJump: jumps must lie in 0..max_jump={self.max_jump} (-1: no decision), "
                                  f"got values in {int(jumps.min())}..{int(jumps.max())}")

    def forward(self, x: Tensor, *, execution: ExecutionLike = None, jumps: Tensor | None = None,
                policy: JumpPolicy | None = None, sample: bool = False,
                generator: torch.Generator | None = None) -> LSTMJumpResult:
        """Read the sequence, jumping where the decisions say.

        Args:
            x: `(B, T, input_size)`.
            execution: `"masked"` or `"compact"` (module docstring); default masked in training,
                compact in eval.
            jumps: optional `(B, max_decisions(T))` int64 forced choices: the `j`-th
                decision of sample `b` is `jumps[b, j]` (`-1` reads as 0, stop). Entries
                after a sample's last decision are ignored, so a result's `jumps` can be
                given back.
            policy: the inference rule (`JumpPolicy`, default greedy argmax, no cap); its
                `max_reads` cap also holds with `sample` or `jumps`.
            sample: draw the choices from the jump softmax (training) instead of `policy`.
            generator: optional `torch.Generator` for the draws.

        Returns:
            `LSTMJumpResult`.
        """
        self._check(x, jumps)
        policy = JumpPolicy() if policy is None else policy
        if not isinstance(policy, JumpPolicy):
            raise ConfigError(f"LSTMJump: policy must be a JumpPolicy, got {type(policy).__name__}")
        if resolve_execution(execution, self.training) is Execution.COMPACT:
            return self._compact(x, jumps, policy, sample, generator)
        return self._masked(x, jumps, policy, sample, generator)

    def _choose(self, logits: Tensor, forced: Tensor | None, index: Tensor, policy: JumpPolicy, sample: bool,
                generator: torch.Generator | None) -> Tensor:
        """`(n,)` int64 choices for the rows of `logits`; `index` `(n,)` is each row's decision number."""
        if forced is not None:
            return forced.gather(1, index.unsqueeze(1)).squeeze(1).clamp(min=0)
        if sample:
            return CategoricalPolicy().sample(logits.detach(), generator)[0]
        return policy.choose(logits)

    def _masked(self, x: Tensor, forced: Tensor | None, policy: JumpPolicy, sample: bool,
                generator: torch.Generator | None) -> LSTMJumpResult:
        """The reading position `nxt` says everything: a sample reads `x_t` where `nxt == t`;
        a stop sets `nxt` to a step already past (`t`, for choice 0 or no jump left) or
        beyond the end, so that it never reads again."""
        batch, steps = x.shape[:2]
        decisions = self.max_decisions(steps)
        seq = x.transpose(0, 1).contiguous()  # (T, B, I)
        h = c = x.new_zeros(batch, self.hidden_size)
        nxt, run, jumped, reads = (torch.zeros(batch, dtype=torch.int64, device=x.device) for _ in range(4))
        read_steps, deciding, chosen, scores = [], [], [], []
        for t in range(steps):
            r = nxt == t
            h_new, c_new = self.cell(seq[t], (h, c))
            keep = r.unsqueeze(1)
            h, c = torch.where(keep, h_new, h), torch.where(keep, c_new, c)
            read_steps.append(r)
            if t == steps - 1 or decisions == 0:  # the last token ends every reader
                continue
            nxt, run = nxt + r, run + r  # a reader moves on to t + 1
            chunk = r & (run == self.read_steps)
            if policy.max_reads is not None:
                reads = reads + r
                capped = r & (reads >= policy.max_reads)
                nxt = torch.where(capped, steps, nxt)
                chunk = chunk & ~capped
            logits = self.jump(h)
            kappa = self._choose(logits, forced, jumped.clamp(max=decisions - 1), policy, sample, generator)
            decide = chunk
            if self.max_jumps is not None:  # out of jumps: stop (nxt = t, a step already past)
                decide = chunk & (jumped < self.max_jumps)
                kappa = torch.where(decide, kappa, 0)
            nxt = torch.where(chunk, t + kappa, nxt)  # choice 0 gives t: never read again
            run = torch.where(chunk, 0, run)
            jumped = jumped + decide
            deciding.append(decide)
            chosen.append(kappa)
            scores.append(logits)
        log_prob, entropy, taken = self._decisions_made(deciding, chosen, scores, x, decisions)
        flops = torch.full((batch,), self.masked_flops(steps), dtype=torch.float64, device=x.device)
        return LSTMJumpResult(hidden=h, reads=torch.stack(read_steps, dim=1).to(x.dtype), jumps=taken,
                              log_prob=log_prob, entropy=entropy, flops=flops)

    @staticmethod
    def _decisions_made(deciding: list[Tensor], chosen: list[Tensor], scores: list[Tensor], x: Tensor,
                        decisions: int) -> tuple[Tensor, Tensor, Tensor]:
        """Per-step `(B,)` decide masks, choices and `(B, K + 1)` scores -> summed
        log-probability and entropy `(B,)` of the choices made, and `jumps (B, D)`."""
        batch = x.shape[0]
        if not deciding:
            zeros = x.new_zeros(batch)
            return zeros, zeros, torch.full((batch, decisions), -1, dtype=torch.int64, device=x.device)
        decide, kappa = torch.stack(deciding), torch.stack(chosen)  # (S, B)
        log_p = torch.log_softmax(torch.stack(scores), dim=-1)  # (S, B, K + 1)
        log_prob = torch.where(decide, log_p.gather(2, kappa.unsqueeze(2)).squeeze(2), 0.0).sum(dim=0)
        entropy = torch.where(decide, -(log_p.exp() * log_p).sum(dim=2), 0.0).sum(dim=0)
        slot = torch.where(decide, decide.cumsum(dim=0) - 1, decisions)  # j-th decision -> column j; else a spare
        taken = torch.full((batch, decisions + 1), -1, dtype=torch.int64, device=x.device)
        taken = taken.scatter(1, slot.t(), torch.where(decide, kappa, -1).t())
        return log_prob, entropy, taken[:, :decisions]

    def _compact(self, x: Tensor, forced: Tensor | None, policy: JumpPolicy, sample: bool,
                 generator: torch.Generator | None) -> LSTMJumpResult:
        """Read by read: in round `k` every live sample reads its `k`-th token, wherever it
        stands (`x[b, nxt_b]`, one gather), so the cell runs once per round on the live
        rows and the state needs no gather or write-back; the jump head runs on the rows
        that decide; the rows that stop leave the state. The bookkeeping is NumPy on the
        host (one sync per round that holds decisions)."""
        batch, steps = x.shape[:2]
        if batch == 1:
            return self._compact_single(x, forced, policy, sample, generator)
        decisions, device = self.max_decisions(steps), x.device
        forced_np = None if forced is None else forced.detach().cpu().numpy()
        nxt, run, jumped, reads = (np.zeros(batch, dtype=np.int64) for _ in range(4))
        read_map = np.zeros((batch, steps), dtype=bool)
        taken = np.full((batch, decisions), -1, dtype=np.int64)
        log_prob = entropy = x.new_zeros(batch) if sample else None
        hidden = x.new_zeros(batch, self.hidden_size)
        h = c = x.new_zeros(batch, self.hidden_size)
        live = np.arange(batch)  # the live samples, in the order of the rows of h and c

        def tensor(index: np.ndarray) -> Tensor:
            return torch.from_numpy(index).to(device)

        while live.size:
            at = nxt[live]
            x_k = x[live[0], at[0]].unsqueeze(0) if live.size == 1 else x[tensor(live), tensor(at)]  # (n, I)
            h, c = self.cell(x_k, (h, c))
            read_map[live, at] = True
            run[live] += 1
            reads[live] += 1
            nxt[live] = at + 1
            stop = at == steps - 1  # the last token ends a sample's reading
            if policy.max_reads is not None:
                stop |= reads[live] >= policy.max_reads
            chunk = ~stop & (run[live] == self.read_steps)
            if self.max_jumps is not None:
                stop |= chunk & (jumped[live] >= self.max_jumps)
            decide = np.flatnonzero(chunk & ~stop)  # rows of the live state
            if decide.size:
                deciders = live[decide]
                logits = self.jump(h if decide.size == live.size else h[tensor(decide)])
                index = jumped[deciders]
                if forced_np is not None:
                    kappa = np.maximum(forced_np[deciders, index], 0)
                else:
                    choice = CategoricalPolicy().sample(logits, generator)[0] if sample else policy.choose(logits)
                    if sample:
                        log_p = torch.log_softmax(logits, dim=-1)
                        rows = tensor(deciders)
                        log_prob = log_prob.index_add(0, rows, log_p.gather(1, choice.unsqueeze(1)).squeeze(1))
                        entropy = entropy.index_add(0, rows, -(log_p.exp() * log_p).sum(dim=1))
                    kappa = choice.cpu().numpy()
                taken[deciders, index] = kappa
                go = kappa > 0
                movers = deciders[go]
                nxt[movers] = at[decide][go] + kappa[go]
                jumped[movers] += 1
                run[movers] = 0
                stop[decide] |= ~go | (nxt[deciders] >= steps)
            if stop.any():  # finished samples leave the batch
                gone = np.flatnonzero(stop)
                hidden = scatter_rows(hidden, tensor(live[gone]), h if gone.size == live.size else h[tensor(gone)],
                                      inplace=True)
                rest = np.flatnonzero(~stop)
                live = live[rest]
                if live.size:
                    h, c = h[tensor(rest)], c[tensor(rest)]
        head_calls = (taken >= 0).sum(axis=1)
        flops = torch.from_numpy(read_map.sum(axis=1) * float(self.read_flops())
                                 + head_calls * float(self.jump_flops())).to(device)
        return LSTMJumpResult(hidden=hidden, reads=torch.from_numpy(read_map).to(device=device, dtype=x.dtype),
                              jumps=torch.from_numpy(taken).to(device), log_prob=log_prob, entropy=entropy,
                              flops=flops)

    def _compact_single(self, x: Tensor, forced: Tensor | None, policy: JumpPolicy, sample: bool,
                        generator: torch.Generator | None) -> LSTMJumpResult:
        """One sample: the same rules with plain Python integers (no index tensors, no
        write-back; one sync per decision)."""
        steps, device = x.shape[1], x.device
        decisions = self.max_decisions(steps)
        forced_list = None if forced is None else forced[0].tolist()
        h = c = x.new_zeros(1, self.hidden_size)
        pos = run = jumped = 0
        read_at, taken, log_prob, entropy = [], [], x.new_zeros(1), x.new_zeros(1)
        while True:
            h, c = self.cell(x[:, pos], (h, c))
            read_at.append(pos)
            run += 1
            if pos == steps - 1 or (policy.max_reads is not None and len(read_at) >= policy.max_reads):
                break
            if run < self.read_steps:
                pos += 1
                continue
            if self.max_jumps is not None and jumped >= self.max_jumps:
                break
            logits = self.jump(h)
            if forced_list is not None:
                kappa = max(int(forced_list[jumped]), 0)
            elif sample:
                choice = CategoricalPolicy().sample(logits, generator)[0]
                log_p = torch.log_softmax(logits, dim=-1)
                log_prob = log_prob + log_p[:, choice[0]]
                entropy = entropy - (log_p.exp() * log_p).sum(dim=1)
                kappa = int(choice[0])
            else:
                kappa = int(policy.choose(logits)[0])
            taken.append(kappa)
            if kappa == 0 or pos + kappa >= steps:
                break
            pos, run, jumped = pos + kappa, 0, jumped + 1
        reads = torch.zeros(1, steps, dtype=x.dtype, device=device)
        reads[0, read_at] = 1
        jumps = torch.full((1, decisions), -1, dtype=torch.int64, device=device)
        jumps[0, : len(taken)] = torch.tensor(taken, dtype=torch.int64)
        flops = torch.tensor([len(read_at) * float(self.read_flops()) + len(taken) * float(self.jump_flops())],
                             dtype=torch.float64, device=device)
        return LSTMJumpResult(hidden=h, reads=reads, jumps=jumps, log_prob=log_prob if sample else None,
                              entropy=entropy if sample else None, flops=flops)


def _require_int(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"LSTMJump: {key} must be an int >= 1, got {value!r}")
