"""`skim_lstm_classifier`: a Skim-RNN sequence classifier (see `layers.skim_rnn`).

An LSTM reads the input step by step; at each step a choice layer sends the sample
through the big cell (hidden `hidden`, the whole state) or a small one (hidden
`small_hidden`, the first `small_hidden` dimensions of the state). The paper's skim loss
`skim_weight * mean over samples of (1/T) sum_t -log p_t[skim]` pulls towards skimming;
a skimmed step costs the small cell only at inference.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...flops import linear_flops
from ...gates.thresholds import GatePolicy
from ...layers.skim_rnn import READ, SKIM, SkimLSTM, SkimRNNResult
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import require_positive
from .sequence import as_sequence, step_features

_NAME = "skim_lstm_classifier"


class SkimLSTMClassifier(ClassifierApi, nn.Module):
    """`SkimLSTM` over the steps of the input, a linear classifier on the last hidden state.

    Args:
        num_classes, in_chans, hidden, row_width, length: as for `LSTMClassifier` (the big
            cell `rnn.big` has the static baseline's shapes).
        small_hidden: the small cell's hidden size, `1 <= small_hidden < hidden`.
        skim_weight: weight `>= 0` of the skim loss (larger: skim more).
        tau: Gumbel-softmax temperature of training (a `temperature` forward argument,
            e.g. from the trainer's `temperature_schedule`, overrides it).
        hard: straight-through one-hot choices in training instead of the soft mixture.

    Shapes:
        `(B, C, L)` or `(B, C, H, row_width)` -> `DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)` (what ran: both cells at every step in `masked`, the chosen cell in
        `compact`), `decisions["gates"] (B, T)` (1 where the big cell read the step),
        `decisions["executed_fraction"] (B,)` (the fraction of steps read),
        `decisions["compact_flops"] (B,)` (what compact execution costs for these
        choices), `decisions["read_prob"] (B, T)`, and in training `aux_losses["skim"]`.

    Classifier API (`dynamicnets.models.ClassifierApi`): `forward_features(x, execution=,
    choices=, policy=)` is the last hidden state `(B, hidden)`, `num_features = hidden`,
    the classifier is `head`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "head"
    classifier_paths = ("head",)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, small_hidden: int = 8,
                 row_width: int | None = None, length: int = 40, skim_weight: float = 0.01, tau: float = 0.5,
                 hard: bool = False, *, device=None, dtype=None) -> None:
        super().__init__()
        require_positive(_NAME, num_classes=num_classes, in_chans=in_chans, hidden=hidden,
                         small_hidden=small_hidden, length=length)
        if small_hidden >= hidden:
            raise ConfigError(f"model {_NAME!r}: small_hidden must be < hidden ({hidden}), got {small_hidden}")
        if not skim_weight >= 0:
            raise ConfigError(f"model {_NAME!r}: skim_weight must be >= 0, got {skim_weight!r}")
        if not tau > 0:
            raise ConfigError(f"model {_NAME!r}: tau must be > 0, got {tau!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_chans, self.row_width, self.skim_weight = in_chans, row_width, float(skim_weight)
        self.rnn = SkimLSTM(step_features(_NAME, in_chans, row_width), hidden, small_hidden, tau=tau, hard=hard,
                            **factory)
        self.head = nn.Linear(hidden, num_classes, **factory)
        self.default_input_shape = (in_chans, length) if row_width is None else (in_chans, length, row_width)

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with the big cell reading every step (choice layer included), for
        a `(C, L)` or `(C, H, row_width)` input (`L` or `H` steps)."""
        return float(input_shape[1] * self.rnn.read_flops() + linear_flops(self.head))

    def worst_case_flops(self, input_shape: tuple[int, ...], policy: GatePolicy | None = None) -> float:
        """The most per-sample FLOPs compact inference can cost: the big cell reads every
        step (`full_flops`), whatever the threshold of `policy`.

        Raises:
            ConfigError: `policy` sets a compute cap (this model honours none) or has other
                than one threshold.
        """
        if policy is not None:
            policy.check(1, f"model {_NAME!r}")
        return self.full_flops(input_shape)

    def forward(self, x: Tensor, *, execution: ExecutionLike = None, choices: Tensor | None = None,
                policy: GatePolicy | None = None, temperature: float | None = None) -> DynamicOutput:
        """Classify a sequence, reading each step with the big or the small cell.

        Args:
            x: `(B, C, L)` or `(B, C, H, row_width)`.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            choices: optional `(B, T)` 0/1 decisions (1 = big cell) instead of the choice layer's.
            policy: a one-threshold `GatePolicy`: read with the big cell where its
                probability `p_t[read] > threshold` (default 0.5). A higher threshold skims more.
            temperature: Gumbel-softmax temperature of this training call (default `tau`).

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        result = self._run(x, execution, choices, policy, temperature)
        head = float(linear_flops(self.head))
        read = result.choices
        out = DynamicOutput(
            logits=self.forward_head(result.hidden),
            flops=result.flops + head,
            decisions={
                "gates": read,
                "executed_fraction": read.mean(dim=1),
                "compact_flops": self.rnn.flops_of(read) + head,
                "read_prob": result.log_probs[..., READ].detach().exp(),
            },
        )
        if self.training and self.skim_weight > 0:
            out.aux_losses["skim"] = self.skim_weight * -result.log_probs[..., SKIM].mean(dim=1).mean()
        return out

    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None, choices: Tensor | None = None,
                         policy: GatePolicy | None = None, temperature: float | None = None) -> Tensor:
        """The last hidden state `(B, hidden)` of the run `forward` makes (same arguments)."""
        return self._run(x, execution, choices, policy, temperature).hidden

    def _run(self, x: Tensor, execution: ExecutionLike, choices: Tensor | None, policy: GatePolicy | None,
             temperature: float | None) -> SkimRNNResult:
        execution = resolve_execution(execution, self.training)
        seq = as_sequence(_NAME, x, self.in_chans, self.row_width)
        threshold = 0.5 if policy is None else policy.check(1, f"model {_NAME!r}").thresholds[0]
        return self.rnn(seq, execution=execution, choices=choices, threshold=threshold, tau=temperature)


@register_model
def skim_lstm_classifier(*, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, small_hidden: int = 8,
                         row_width: int | None = None, length: int = 40, skim_weight: float = 0.01,
                         tau: float = 0.5, hard: bool = False, device=None, dtype=None) -> SkimLSTMClassifier:
    """Skim-RNN LSTM sequence classifier; see `SkimLSTMClassifier`."""
    return SkimLSTMClassifier(num_classes, in_chans, hidden, small_hidden, row_width, length, skim_weight, tau, hard,
                              device=device, dtype=dtype)
