"""`early_stop_lstm_classifier`: stop reading a sequence once the answer is clear.

An LSTM cell reads the input step by step; every `every` steps (a *check*, and always at
the last step) a shared linear head gives class logits. The model is a multi-exit network
whose exits are the checks (the `MultiExit` protocol: `run_segment` reads the steps up to
the next check, `exit_logits` is the head), so the early-exit tools work on it unchanged:
`dynamicnets.inference.run_early_exit` with an `ExitPolicy` (max probability, entropy,
margin or patience, one threshold per check), `calibrate` for a mean-FLOPs budget, and
`dynamicnets eval --budget`. A sample that stops leaves the batch; the others read on.

With `halting=True` a learned halting unit `lambda_k = sigmoid(w . h_k + b)` at every check
but the last gives the probability of stopping there. Stopping at check `k` costs

    c_k = [argmax logits_k != argmax logits_{K-1}] + cost_weight * t_k / T

(`t_k` the steps read by check `k`): the chance that stopping changes the full read's
answer, plus `cost_weight` times the fraction of the sequence read. The halting unit is
trained as an optimal-stopping problem (`dynamicnets.gates.learned_stopping`, after Deep
Optimal Stopping, Becker et al. 2019): at every check, stopping's cost against the
expected cost of reading on under the current later decisions, `aux_losses["halting"]`.
It needs no label (the trainer's `forward(x)` sees none), and since `error(stop) <=
error(full read) + P(answers differ)`, it bounds the accuracy lost. At inference
`model(x, policy=GatePolicy(...))` stops a sample at the first check where
`lambda_k > thresholds[k]` (`halting_policy()`: 0.5 at every check); the head then runs
only where the sample stops, which the halting unit, reading the state, makes possible.

Training (`masked`): every sample reads every step; `exit_logits` holds every check's
logits, so the trainer's multi-exit loss (`exit_weights`) trains the head at every
check, plus `aux_losses["halting"]`. Without `stops` or `policy`, `forward` is this full
read in any mode (it is what validation and `collect_exit_logits` score).

Stopping (`stops=` given decisions, or `policy=`): `compact` runs each check's steps only
on the samples still reading (`dynamicnets.inference.run_decided_exits`); `masked` reads
everything and picks each sample's logits at its stop. Same decisions, same logits.

Per-sample FLOPs (as `FlopCounterMode` counts them: the cell's and the linear layers'
matrix products) of a sample stopping at check `k` after `t_k` steps:

- confidence criteria (`run_early_exit`, `exit_costs`): `t_k cell + (k + 1) head`;
- halting unit: `t_k cell + min(k + 1, last) halt + head` (`last`: the final check a
  sample may reach, the cap's);
- given `stops`: `t_k cell + head`;
- `masked`: the full read, `T cell + K head (+ (K - 1) halt)`; `decisions["compact_flops"]`
  then says what the compact path costs with the same decisions.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...flops import linear_flops, lstm_cell_flops
from ...gates.learned_stopping import first_stop, stopping_loss
from ...gates.thresholds import GatePolicy
from ...inference.decided_exits import run_decided_exits
from ...inference.executor import run_all_then_select, run_early_exit
from ...inference.policy import ExitPolicy
from ...outputs import DynamicOutput, constant_flops
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import require_positive
from .sequence import as_sequence, step_features

State = tuple[Tensor, Tensor, Tensor]  # h (n, hidden), c (n, hidden), the steps not read yet (n, T', features)


class EarlyStopLSTMClassifier(ClassifierApi, nn.Module):
    """An LSTM that may stop reading at every check; see the module docstring.

    Args:
        num_classes, in_chans, hidden, row_width: as for `LSTMClassifier` (same `cell`
            and `head` names and shapes, so a static model's weights load into it).
        length: the sequence length `T` (`L` or `H`) the model reads; the checks, and so
            the exits and policies, are fixed by it.
        every: steps between checks, `>= 1`; checks after steps `every, 2 every, ...`
            and at `T`, `K = ceil(T / every)` of them.
        halting: add the learned halting unit (needs `K >= 2`).
        cost_weight: price of reading the whole sequence in the halting loss, `>= 0`.
        halting_bias_init: initial bias of the halting unit (negative: read on at first).

    Shapes:
        `forward(x)` with `x (B, C, T)` or `(B, C, T, row_width)` -> `DynamicOutput` with
        `logits (B, num_classes)` (at each sample's stop), `exit_logits` (`K` tensors
        `(B, num_classes)` when every sample read every step, else `[logits]`), `flops
        (B,)`, and `decisions`: `stop_index (B,)` int64 check, `steps_read (B,)`,
        `executed_fraction (B,)` (`steps_read / T`), `compact_flops (B,)` when stopping,
        `halt_probs (B, K - 1)` from a halting unit in a full or masked read; in training
        with a halting unit `aux_losses["halting"]`.

    Classifier API (`dynamicnets.models.ClassifierApi`): `forward_features(x)` is the last
    hidden state `(B, hidden)` of the full read, `num_features = hidden`, the classifier
    is `head` (shared by every check).
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "head"
    classifier_paths = ("head",)
    _name = "early_stop_lstm_classifier"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                 length: int = 40, every: int = 1, halting: bool = False, cost_weight: float = 0.5,
                 halting_bias_init: float = -2.0, *, device=None, dtype=None) -> None:
        super().__init__()
        name = self._name
        require_positive(name, num_classes=num_classes, in_chans=in_chans, hidden=hidden, length=length)
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"model {name!r}: every must be an int >= 1 (steps between checks), got {every!r}")
        if not isinstance(cost_weight, (int, float)) or not 0 <= cost_weight < math.inf:
            raise ConfigError(f"model {name!r}: cost_weight must be a finite number >= 0, got {cost_weight!r}")
        num_checks = -(-length // every)
        if halting and num_checks < 2:
            raise ConfigError(f"model {name!r}: halting needs at least two checks, but every={every} >= "
                              f"length={length} leaves one; lower every")
        factory = {"device": device, "dtype": dtype}
        self.in_chans, self.row_width, self.length, self.every = in_chans, row_width, length, every
        self.cost_weight = float(cost_weight)
        self.check_steps = tuple(min((k + 1) * every, length) for k in range(num_checks))
        self.cell = nn.LSTMCell(step_features(name, in_chans, row_width), hidden, **factory)
        self.head = nn.Linear(hidden, num_classes, **factory)
        self.halting = nn.Linear(hidden, 1, **factory) if halting else None
        if self.halting is not None:
            nn.init.constant_(self.halting.bias, halting_bias_init)
        self.default_input_shape = (in_chans, length) if row_width is None else (in_chans, length, row_width)

    # ------------------------------------------------------------ multi-exit protocol
    @property
    def num_exits(self) -> int:
        return len(self.check_steps)

    def needs_input_after(self, k: int) -> bool:
        """False: the state carries the steps not read yet."""
        return False

    def run_segment(self, k: int, state: State | None, x: Tensor) -> State:
        """Read the steps between check `k - 1` and check `k`.

        Args:
            k: check index.
            state: what `run_segment(k - 1, ...)` returned (`None` for `k = 0`).
            x: `(n, C, T)` or `(n, C, T, row_width)` input (read at `k = 0` only).

        Returns:
            `(h, c, rest)`: `(n, hidden)` states after check `k`'s step and the `(n, T', features)`
            steps still to read.
        """
        if state is None:
            rest = self._sequence(x)
            h = c = rest.new_zeros(rest.shape[0], self.cell.hidden_size)
        else:
            h, c, rest = state
        count = self.check_steps[k] - (self.check_steps[k - 1] if k else 0)
        for i in range(count):
            h, c = self.cell(rest[:, i], (h, c))
        return h, c, rest[:, count:]

    def exit_logits(self, k: int, state: State) -> Tensor:
        """`(n, num_classes)` logits of check `k` (the shared head on `h`)."""
        return self.head(state[0])

    def halt_probs(self, state: State) -> Tensor:
        """`(n,)` halting probabilities `lambda` of the halting unit on `h`."""
        self._require_halting_unit()
        return torch.sigmoid(self.halting(state[0])).view(-1)

    def exit_costs(self, input_shape: tuple[int, ...]) -> list[int]:
        """Per-sample FLOPs of stopping at each check under a confidence criterion: the
        steps read and the head at every check so far (the halting unit does not run)."""
        self._check_steps(int(input_shape[1]) if len(input_shape) > 1 else 0)
        return [t * self._cell_flops + (k + 1) * self._head_flops for k, t in enumerate(self.check_steps)]

    # ------------------------------------------------------------ costs
    @property
    def _cell_flops(self) -> int:
        return lstm_cell_flops(self.cell)

    @property
    def _head_flops(self) -> int:
        return linear_flops(self.head)

    @property
    def _halt_flops(self) -> int:
        return 0 if self.halting is None else linear_flops(self.halting)

    def read_flops(self) -> float:
        """Per-sample FLOPs of the full read (every step, every check's head and halting unit)."""
        k = self.num_exits
        return float(self.length * self._cell_flops + k * self._head_flops + (k - 1) * self._halt_flops)

    def stop_costs(self, decided_by: str, last: int | None = None) -> list[float]:
        """Per-sample FLOPs of stopping at each check `0..last` on the compact path.

        Args:
            decided_by: `"halting"` (the halting unit ran at checks `0..min(k, last - 1)`)
                or `"given"` (stops passed in: no decision computed).
            last: the final check a sample may reach (default `K - 1`).
        """
        last = self.num_exits - 1 if last is None else last
        halt = self._halt_flops if decided_by == "halting" else 0
        return [float(t * self._cell_flops + min(k + 1, last) * halt + self._head_flops)
                for k, t in enumerate(self.check_steps[: last + 1])]

    def halting_policy(self, threshold: float = 0.5, max_flops: float | None = None) -> GatePolicy:
        """One halting threshold at every check but the last (and an optional FLOPs cap)."""
        return GatePolicy.constant(threshold, self.num_exits - 1, max_flops=max_flops)

    # ------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, execution: ExecutionLike = None, stops: Tensor | None = None,
                policy: GatePolicy | ExitPolicy | None = None) -> DynamicOutput:
        """Read `x`, stopping each sample where `stops` or `policy` say.

        Args:
            x: `(B, C, T)` or `(B, C, T, row_width)`.
            execution: `"masked"` / `"compact"` (default: masked in training, compact in
                eval); matters only when samples stop.
            stops: `(B,)` int check index at which each sample stops (given decisions).
            policy: a `GatePolicy` (`K - 1` halting thresholds, optional `max_flops`) for
                the halting unit, or an `ExitPolicy` (confidence criterion; eval mode,
                runs `run_early_exit` / `run_all_then_select`).

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        if stops is not None and policy is not None:
            raise ConfigError(f"model {self._name!r}: give stops or policy, not both")
        if stops is None and policy is None:
            return self._full_read(x)
        mode = resolve_execution(execution, self.training)
        if isinstance(policy, ExitPolicy):
            return self._confidence_stop(x, policy, mode)
        if policy is not None:
            self._check_gate_policy(policy)
        if stops is not None:
            stops = self._check_stops(stops, x.shape[0])
            last, costs = self.num_exits - 1, self.stop_costs("given")
        else:
            last = self._halting_last(policy)
            costs = self.stop_costs("halting", last)
        if mode is Execution.COMPACT:
            return self._compact_stop(x, stops, policy, last, costs)
        return self._masked_stop(x, stops, policy, last, costs)

    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None, stops: Tensor | None = None,
                         policy: GatePolicy | ExitPolicy | None = None) -> Tensor:
        """The hidden state `(B, hidden)` the head reads at each sample's stop (the last
        step's without `stops` / `policy`); same arguments as `forward`, whose stops are
        taken on a full read here (equal to those of either execution)."""
        hiddens, _, halts = self._read_all(x)
        if stops is None and policy is None:
            return hiddens[-1]
        if stops is not None and policy is not None:
            raise ConfigError(f"model {self._name!r}: give stops or policy, not both")
        if isinstance(policy, ExitPolicy):
            stops = run_all_then_select(self, x, policy).exit_index
        elif stops is None:
            stops = first_stop(halts, self._check_gate_policy(policy).thresholds, self._halting_last(policy))
        else:
            stops = self._check_stops(stops, x.shape[0])
        return torch.stack(hiddens)[stops, torch.arange(x.shape[0], device=x.device)]

    def _read_all(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], Tensor | None]:
        """Every check's `(B, hidden)` state and `(B, C)` logits and, with a halting unit,
        the `(B, K - 1)` halting probabilities."""
        state, hiddens, logits, halts = None, [], [], []
        for k in range(self.num_exits):
            state = self.run_segment(k, state, x)
            hiddens.append(state[0])
            logits.append(self.exit_logits(k, state))
            if self.halting is not None and k < self.num_exits - 1:
                halts.append(self.halt_probs(state))
        return hiddens, logits, (torch.stack(halts, dim=1) if halts else None)

    def _full_read(self, x: Tensor) -> DynamicOutput:
        _, logits, halts = self._read_all(x)
        batch = x.shape[0]
        stop = torch.full((batch,), self.num_exits - 1, dtype=torch.int64, device=x.device)
        out = DynamicOutput(logits=logits[-1], exit_logits=logits,
                            flops=constant_flops(self.read_flops(), batch, x.device),
                            decisions=self._decisions(stop, halts))
        if self.training and halts is not None:
            out.aux_losses["halting"] = self._halting_loss(logits, halts)
        return out

    def _masked_stop(self, x: Tensor, stops: Tensor | None, policy: GatePolicy | None, last: int,
                     costs: list[float]) -> DynamicOutput:
        _, logits, halts = self._read_all(x)
        if stops is None:
            stops = first_stop(halts, policy.thresholds, last)
        batch = x.shape[0]
        picked = torch.stack(logits)[stops, torch.arange(batch, device=x.device)]
        cost_table = torch.tensor(costs, dtype=torch.float64, device=x.device)
        out = DynamicOutput(logits=picked, exit_logits=logits,
                            flops=constant_flops(self.read_flops(), batch, x.device),
                            decisions={**self._decisions(stops, halts), "compact_flops": cost_table[stops]})
        if self.training and halts is not None:
            out.aux_losses["halting"] = self._halting_loss(logits, halts)
        return out

    def _compact_stop(self, x: Tensor, stops: Tensor | None, policy: GatePolicy | None, last: int,
                      costs: list[float]) -> DynamicOutput:
        if stops is not None:
            def decide(k: int, state: State, rows: Tensor | None) -> Tensor:
                return (stops if rows is None else stops[rows]) == k
        else:
            thresholds = policy.thresholds

            def decide(k: int, state: State, rows: Tensor | None) -> Tensor:
                return self.halt_probs(state) > thresholds[k]
        result = run_decided_exits(self, x, decide, costs, last=last)
        return DynamicOutput(logits=result.logits, flops=result.flops,
                             decisions={**self._decisions(result.exit_index), "compact_flops": result.flops})

    def _confidence_stop(self, x: Tensor, policy: ExitPolicy, mode: Execution) -> DynamicOutput:
        costs = self.exit_costs(tuple(x.shape[1:]))
        if mode is Execution.COMPACT:
            result = run_early_exit(self, x, policy, costs=costs)
            flops = result.flops
        else:
            result = run_all_then_select(self, x, policy, costs=costs)
            flops = constant_flops(self.read_flops(), x.shape[0], x.device)
        return DynamicOutput(logits=result.logits, flops=flops,
                             decisions={**self._decisions(result.exit_index), "compact_flops": result.flops})

    # ------------------------------------------------------------ helpers
    def _decisions(self, stops: Tensor, halts: Tensor | None = None) -> dict[str, Tensor]:
        steps = torch.tensor(self.check_steps, dtype=torch.float64, device=stops.device)[stops]
        decisions = {"stop_index": stops, "steps_read": steps, "executed_fraction": steps / self.length}
        if halts is not None:
            decisions["halt_probs"] = halts.detach()
        return decisions

    def _halting_loss(self, logits: list[Tensor], halts: Tensor) -> Tensor:
        """`stopping_loss` with `c_k = disagree_k + cost_weight t_k / T` (module docstring)."""
        with torch.no_grad():
            final = logits[-1].argmax(dim=1)
            disagree = torch.stack([lg.argmax(dim=1) != final for lg in logits], dim=1).to(halts.dtype)
            read = torch.tensor(self.check_steps, dtype=halts.dtype, device=halts.device) / self.length
        return stopping_loss(halts, disagree + self.cost_weight * read)

    def _check_gate_policy(self, policy) -> GatePolicy:
        if not isinstance(policy, GatePolicy):
            raise ConfigError(f"model {self._name!r}: policy must be a GatePolicy (halting thresholds) or an "
                              f"ExitPolicy (confidence criterion), got {type(policy).__name__}")
        return policy

    def _require_halting_unit(self) -> None:
        if self.halting is None:
            raise ConfigError(f"model {self._name!r} was built without a halting unit (halting=False): stop it "
                              "with an ExitPolicy (confidence criteria) or given stops, not halting thresholds")

    def _halting_last(self, policy: GatePolicy) -> int:
        """The final check a sample may reach under `policy.max_flops`."""
        self._require_halting_unit()
        policy.check(self.num_exits - 1, f"model {self._name!r}", caps=("max_flops",))
        if policy.max_flops is None:
            return self.num_exits - 1
        # reaching check k as the last one: k halting decisions, the head once
        reach = [t * self._cell_flops + k * self._halt_flops + self._head_flops for k, t in enumerate(self.check_steps)]
        allowed = [k for k, c in enumerate(reach) if c <= policy.max_flops]
        if not allowed:
            raise ConfigError(f"model {self._name!r}: key 'max_flops': {policy.max_flops:,.0f} FLOPs is below the "
                              f"cost of the first check ({reach[0]:,} FLOPs per sample)")
        return allowed[-1]

    def _check_steps(self, steps: int) -> None:
        if steps < 1:
            raise ConfigError(f"model {self._name!r}: input x has {steps} steps; a sequence needs at least one")
        if steps != self.length:
            raise ConfigError(f"model {self._name!r}: built for length={self.length} steps (its checks are fixed "
                              f"by it), got an input of {steps} steps")

    def _sequence(self, x: Tensor) -> Tensor:
        """`x` as `(B, T, features)` after checking its shape and length."""
        seq = as_sequence(self._name, x, self.in_chans, self.row_width)
        self._check_steps(seq.shape[1])
        return seq

    def _check_stops(self, stops: Tensor, batch: int) -> Tensor:
        if not isinstance(stops, Tensor) or tuple(stops.shape) != (batch,) or stops.is_floating_point():
            raise ConfigError(f"model {self._name!r}: stops must be a (B,) = ({batch},) integer tensor of check "
                              f"indices, got {getattr(stops, 'shape', stops)!r}")
        if batch and (int(stops.min()) < 0 or int(stops.max()) >= self.num_exits):
            raise ConfigError(f"model {self._name!r}: stops must be check indices in 0..{self.num_exits - 1}, "
                              f"got values in {int(stops.min())}..{int(stops.max())}")
        return stops.long()


@register_model
def early_stop_lstm_classifier(*, num_classes: int = 10, in_chans: int = 1, hidden: int = 64,
                               row_width: int | None = None, length: int = 40, every: int = 1,
                               halting: bool = False, cost_weight: float = 0.5, halting_bias_init: float = -2.0,
                               device=None, dtype=None) -> EarlyStopLSTMClassifier:
    """LSTM sequence classifier that stops reading early; see `EarlyStopLSTMClassifier`."""
    return EarlyStopLSTMClassifier(num_classes, in_chans, hidden, row_width, length, every, halting, cost_weight,
                                   halting_bias_init, device=device, dtype=dtype)
