"""`lstm_jump_classifier`: LSTM-Jump (Yu, Lee, Le, "Learning to Skim Text", ACL 2017), a
sequence classifier that learns how far to jump after reading a few tokens.

The reader is `layers.lstm_jump.LSTMJump` (the jump rules are in its docstring: read `R`
tokens, then a softmax over `0..K` where 0 stops and `k` moves `k` tokens ahead, skipping
`k - 1`; at most `N` jumps). The classifier reads the hidden state when the sample stopped.

Training (the paper's): the task loss (cross-entropy) trains the LSTM and the classifier;
the jump choices are sampled from the softmax and trained by REINFORCE with the reward
`+1` for a correct prediction and `-1` for a wrong one (`reward_correct`, `reward_wrong`),
minus a moving-average baseline (the paper regresses a per-step baseline on the hidden
state; here the project's `MovingAverageBaseline`, updated after each step by
`update_baseline(out, target)`, which the `Trainer` calls). The reward needs the label,
which `forward(x)` does not get: the policy gradient goes through the logits the
trainer's cross-entropy reads (`models.skipping.reinforce.accuracy_reward_surrogate`), or
exactly through `reinforce_loss` when `forward(x, target=y)` is called.

Inference: the choices come from a `JumpPolicy` (default greedy argmax; a stop threshold
and a `max_reads` cap are options) and execution is compact: only the samples that read a
step run the cell, a step nobody reads costs nothing, finished samples leave the batch.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...flops import linear_flops
from ...gates.jump_policy import JumpPolicy
from ...gates.policy import MovingAverageBaseline, reinforce_loss
from ...layers.lstm_jump import LSTMJump, LSTMJumpResult
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from .._registry import register_model
from ..skipping.reinforce import accuracy_reward_surrogate
from ..static._checks import require_positive
from .sequence import as_sequence, step_features

_NAME = "lstm_jump_classifier"


class LSTMJumpClassifier(ClassifierApi, nn.Module):
    """`LSTMJump` over the steps of the input, a linear classifier on its final hidden state.

    Args:
        num_classes, in_chans, hidden, row_width, length: as for `LSTMClassifier` (the
            cell is `rnn.cell`, the classifier `head`, same shapes).
        read_steps: `R`, tokens read between jump decisions (>= 1).
        max_jump: `K`, the largest jump (>= 1).
        max_jumps: `N`, jumps allowed per sample (>= 1), or `None` (no limit but the end).
        reward_correct, reward_wrong: REINFORCE reward of a right / wrong prediction.
        entropy_weight: weight (>= 0) of an entropy bonus on the jump softmax.
        baseline_momentum: of the moving-average reward baseline.

    Shapes:
        `(B, C, L)` or `(B, C, H, row_width)` -> `DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)` (masked: every step; compact: the tokens read and the decisions made),
        `decisions["gates"] (B, T)` (1 at the tokens read), `decisions["jumps"] (B, D)`
        (the choices, -1 where none), `decisions["executed_fraction"] (B,)` (fraction of
        tokens read), `decisions["compact_flops"] (B,)`, and in training
        `aux_losses["reinforce"]` (value 0, the policy gradient; see the module docstring).

    Classifier API (`dynamicnets.models.ClassifierApi`): `forward_features(x, ...)` is the
    final hidden state `(B, hidden)`, `num_features = hidden`, the classifier is `head`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "head"
    classifier_paths = ("head",)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                 length: int = 40, read_steps: int = 1, max_jump: int = 10, max_jumps: int | None = None,
                 reward_correct: float = 1.0, reward_wrong: float = -1.0, entropy_weight: float = 0.0,
                 baseline_momentum: float = 0.9, *, device=None, dtype=None) -> None:
        super().__init__()
        require_positive(_NAME, num_classes=num_classes, in_chans=in_chans, hidden=hidden, length=length,
                         read_steps=read_steps, max_jump=max_jump)
        if max_jumps is not None:
            require_positive(_NAME, max_jumps=max_jumps)
        if not entropy_weight >= 0:
            raise ConfigError(f"model {_NAME!r}: entropy_weight must be >= 0, got {entropy_weight!r}")
        if not reward_correct > reward_wrong:
            raise ConfigError(f"model {_NAME!r}: reward_correct must exceed reward_wrong, got {reward_correct!r} "
                              f"and {reward_wrong!r}")
        factory = {"device": device, "dtype": dtype}
        self.in_chans, self.row_width = in_chans, row_width
        self.reward_correct, self.reward_wrong = float(reward_correct), float(reward_wrong)
        self.entropy_weight = float(entropy_weight)
        self.rnn = LSTMJump(step_features(_NAME, in_chans, row_width), hidden, read_steps=read_steps,
                            max_jump=max_jump, max_jumps=max_jumps, **factory)
        self.head = nn.Linear(hidden, num_classes, **factory)
        self.baseline = MovingAverageBaseline(baseline_momentum, device=device)
        self.default_input_shape = (in_chans, length) if row_width is None else (in_chans, length, row_width)

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs of `lstm_classifier` with the same cell and head (every token
        read, no jump head) on a `(C, L)` or `(C, H, row_width)` input."""
        return float(input_shape[1] * self.rnn.read_flops() + linear_flops(self.head))

    def worst_case_flops(self, input_shape: tuple[int, ...], policy: JumpPolicy | None = None) -> float:
        """The most per-sample FLOPs compact inference on a `(C, L)` or `(C, H, row_width)`
        input can cost under `policy`'s `max_reads` cap (None: no cap), whatever the jumps:
        `LSTMJump.worst_case_flops` plus the classifier.

        Raises:
            ConfigError: `policy` is not a `JumpPolicy`.
        """
        if policy is not None and not isinstance(policy, JumpPolicy):
            raise ConfigError(f"model {_NAME!r}: policy must be a JumpPolicy, got {type(policy).__name__}")
        max_reads = None if policy is None else policy.max_reads
        return self.rnn.worst_case_flops(int(input_shape[1]), max_reads) + float(linear_flops(self.head))

    def forward(self, x: Tensor, *, execution: ExecutionLike = None, jumps: Tensor | None = None,
                policy: JumpPolicy | None = None, target: Tensor | None = None,
                generator: torch.Generator | None = None) -> DynamicOutput:
        """Classify a sequence, reading only the tokens the jumps land on.

        Args:
            x: `(B, C, L)` or `(B, C, H, row_width)`.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            jumps: optional `(B, rnn.max_decisions(T))` int64 forced choices (see `LSTMJump`);
                no policy gradient is then made.
            policy: the inference rule (`JumpPolicy`; default greedy argmax). In training
                the choices are sampled and only its `max_reads` cap applies.
            target: optional `(B,)` labels: in training the REINFORCE loss is then exact
                instead of routed through the logits.
            generator: optional `torch.Generator` for the sampled choices.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        result = self._run(x, execution, jumps, policy, generator)
        logits = self.head(result.hidden)
        head = float(linear_flops(self.head))
        decided = result.reads.detach()
        compact_flops = (decided.double().sum(dim=1) * float(self.rnn.read_flops())
                         + (result.jumps >= 0).sum(dim=1).double() * float(self.rnn.jump_flops()) + head)
        aux = None
        if self.training and jumps is None:
            logits, aux = self._reinforce(logits, result, target)
        out = DynamicOutput(logits=logits, flops=result.flops + head,
                            decisions={"gates": decided, "jumps": result.jumps,
                                       "executed_fraction": decided.mean(dim=1), "compact_flops": compact_flops})
        if aux is not None:
            out.aux_losses["reinforce"] = aux
        return out

    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None, jumps: Tensor | None = None,
                         policy: JumpPolicy | None = None) -> Tensor:
        """The final hidden state `(B, hidden)` of the run `forward` makes (same arguments)."""
        return self._run(x, execution, jumps, policy, None).hidden

    def _run(self, x: Tensor, execution: ExecutionLike, jumps: Tensor | None, policy: JumpPolicy | None,
             generator: torch.Generator | None) -> LSTMJumpResult:
        execution = resolve_execution(execution, self.training)
        seq = as_sequence(_NAME, x, self.in_chans, self.row_width)
        sample = self.training and jumps is None
        return self.rnn(seq, execution=execution, jumps=jumps, policy=policy, sample=sample, generator=generator)

    def _reinforce(self, logits: Tensor, result: LSTMJumpResult, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """The logits to return and the REINFORCE aux term (value 0, gradient only)."""
        log_prob = result.log_prob
        if log_prob is None:  # compact training run without sampling: nothing to learn from
            return logits, logits.new_zeros(())
        baseline = self.baseline().to(log_prob.dtype)
        if target is None:
            ones = torch.ones_like(log_prob)
            logits, aux = accuracy_reward_surrogate(logits, log_prob, ones * self.reward_correct,
                                                    ones * self.reward_wrong, baseline)
        else:
            aux = reinforce_loss(log_prob, self.reward(logits, target), baseline)
        if self.entropy_weight > 0:
            aux = aux - self.entropy_weight * result.entropy.mean()
        return logits, aux - aux.detach()

    def reward(self, logits: Tensor, target: Tensor) -> Tensor:
        """`(B,)` reward: `reward_correct` where `argmax logits` is `target`, else `reward_wrong`."""
        correct = logits.detach().argmax(dim=1) == target
        return torch.where(correct, self.reward_correct, self.reward_wrong).to(torch.float32)

    def update_baseline(self, out: DynamicOutput, target: Tensor) -> Tensor:
        """Fold the batch's rewards into the moving-average baseline (call after the step).

        Args:
            out: the output of a training forward.
            target: `(B,)` labels.

        Returns:
            The new baseline (scalar).
        """
        return self.baseline.update(self.reward(out.logits, target))


@register_model
def lstm_jump_classifier(*, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                         length: int = 40, read_steps: int = 1, max_jump: int = 10, max_jumps: int | None = None,
                         reward_correct: float = 1.0, reward_wrong: float = -1.0, entropy_weight: float = 0.0,
                         baseline_momentum: float = 0.9, device=None, dtype=None) -> LSTMJumpClassifier:
    """LSTM-Jump sequence classifier; see `LSTMJumpClassifier`."""
    return LSTMJumpClassifier(num_classes, in_chans, hidden, row_width, length, read_steps, max_jump, max_jumps,
                              reward_correct, reward_wrong, entropy_weight, baseline_momentum,
                              device=device, dtype=dtype)
