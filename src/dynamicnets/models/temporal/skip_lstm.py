"""`skip_lstm_classifier`: a Skip-RNN sequence classifier (see `layers.skip_rnn`).

The LSTM reads the input step by step and learns when to skip a state update; the
budget loss `budget_weight * mean over samples of sum_t u_t` (the paper's per-update
cost) trades accuracy for fewer updates. A skipped step costs nothing at inference.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ...gates.thresholds import GatePolicy
from ...execution import Execution, ExecutionLike, resolve_execution
from ...layers.skip_rnn import SkipLSTM
from ...outputs import DynamicOutput
from ...flops import linear_flops
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import require_positive
from .sequence import as_sequence, sequence_steps, step_features


class SkipLSTMClassifier(ClassifierApi, nn.Module):
    """`SkipLSTM` over the steps of the input, a linear classifier on the last hidden state.

    Args:
        num_classes, in_chans, hidden, row_width, length, reading: as for `LSTMClassifier` (whose
            cell and head have the same shapes and names under `rnn.cell` / `head`).
        budget_weight: weight of the update-count loss, `>= 0`.
        update_bias_init: initial bias of the update gate (positive: update often).

    Shapes:
        `(B, C, L)` or `(B, C, H, row_width)` -> `DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)` (the steps that ran: all of them in `masked`, the updates in
        `compact`), `decisions["gates"] (B, T)` (1 where the state was updated),
        `decisions["executed_fraction"] (B,)`, `decisions["compact_flops"] (B,)`, and in
        training `aux_losses["budget"]`.

    Classifier API (`dynamicnets.models.ClassifierApi`): `forward_features(x, execution=,
    updates=)` is the last hidden state `(B, hidden)` of that run, `num_features =
    hidden`, the classifier is `head`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    _name = "skip_lstm_classifier"
    _rnn_type = SkipLSTM
    head_path = "head"
    classifier_paths = ("head",)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                 length: int = 40, budget_weight: float = 1e-3, update_bias_init: float = 2.0,
                 reading: str = "rows", *, device=None, dtype=None) -> None:
        super().__init__()
        name = self._name
        require_positive(name, num_classes=num_classes, in_chans=in_chans, hidden=hidden, length=length)
        if not budget_weight >= 0:
            raise ConfigError(f"model {name!r}: budget_weight must be >= 0, got {budget_weight!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_chans, self.row_width, self.budget_weight = in_chans, row_width, float(budget_weight)
        self.reading = reading
        self.rnn = self._rnn_type(step_features(name, in_chans, row_width, reading), hidden,
                                  update_bias_init=update_bias_init, **factory)
        self.head = nn.Linear(hidden, num_classes, **factory)
        self.default_input_shape = (in_chans, length) if row_width is None else (in_chans, length, row_width)

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with the state updated at every step, for a `(C, L)` or
        `(C, H, row_width)` input (`L`, `H` or `H * row_width` steps, by `reading`)."""
        steps = sequence_steps(tuple(input_shape), self.reading)
        return float(steps * self.rnn.step_flops() + linear_flops(self.head))

    def forward(self, x: Tensor, *, execution: ExecutionLike = None, updates: Tensor | None = None,
                policy: GatePolicy | None = None) -> DynamicOutput:
        """Classify a sequence, updating the LSTM state only at the steps the gate picks.

        Args:
            x: `(B, C, L)` or `(B, C, H, row_width)`.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            updates: optional `(B, T)` 0/1 decisions to apply instead of the gate's.
            policy: a one-threshold `GatePolicy`: update where `u~ > threshold`
                (default 0.5, the rounding training uses). A higher threshold skips more.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        result = self._run(x, execution, updates, policy)
        head = float(linear_flops(self.head))
        decided = result.updates.detach()
        out = DynamicOutput(
            logits=self.forward_head(result.hidden),
            flops=result.flops + head,
            decisions={
                "gates": decided,
                "executed_fraction": decided.mean(dim=1),
                "compact_flops": decided.double().sum(dim=1) * float(self.rnn.step_flops()) + head,
            },
        )
        if self.training and self.budget_weight > 0:
            out.aux_losses["budget"] = self.budget_weight * result.updates.sum(dim=1).mean()
        return out

    def forward_features(
        self, x: Tensor, *, execution: ExecutionLike = None, updates: Tensor | None = None
    ) -> Tensor:
        """The last hidden state `(B, hidden)` of the run `forward` makes (same arguments)."""
        return self._run(x, execution, updates, None).hidden

    def _run(self, x: Tensor, execution: ExecutionLike, updates: Tensor | None, policy: GatePolicy | None):
        execution = resolve_execution(execution, self.training)
        seq = as_sequence(self._name, x, self.in_chans, self.row_width, self.reading)
        threshold = 0.5 if policy is None else policy.check(1, f"model {self._name!r}").thresholds[0]
        return self.rnn(seq, execution=execution, updates=updates, threshold=threshold)


@register_model
def skip_lstm_classifier(*, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                         length: int = 40, budget_weight: float = 1e-3, update_bias_init: float = 2.0,
                         reading: str = "rows", device=None, dtype=None) -> SkipLSTMClassifier:
    """Skip-RNN LSTM sequence classifier; see `SkipLSTMClassifier`."""
    return SkipLSTMClassifier(num_classes, in_chans, hidden, row_width, length, budget_weight, update_bias_init,
                              reading, device=device, dtype=dtype)
