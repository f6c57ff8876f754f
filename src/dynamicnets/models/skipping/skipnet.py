"""SkipNet (Wang, Yu, Dou, Darrell, Gonzalez, "SkipNet: Learning Dynamic Routing in
Convolutional Networks", ECCV 2018): a gate before each residual block decides whether
the block runs.

Gates (`gate=`):

- `"ffgate"`: a feed-forward gate per block, global average pool + linear (one logit)
  on the block's input.
- `"rnn"`: one LSTM shared by all blocks (hidden size 10, as in the paper); each block's
  pooled input is projected by its stage's linear layer and fed to the LSTM, whose
  hidden state is scored by a shared linear layer.

Training, two modes (`rl=` at construction, or per call):

- **Supervised pre-training** (`rl=False`): soft gates `g = sigmoid(logit)` mix the block
  and the identity, `g * block(x) + (1 - g) * x`, trained by the task loss alone.
- **Hybrid reinforcement learning** (`rl=True`): hard gates sampled from
  `Bernoulli(sigmoid(logit))`; the backbone learns from the task loss, the gates by
  REINFORCE with the reward `-task_loss - cost_weight * executed fraction` (the cost
  is the fraction of the gated blocks' FLOPs a sample ran). See `reinforce.py` for how
  the reward's task-loss part reaches the gates when `forward` gets no label, and call
  `update_baseline(out, target)` after each step to keep the moving-average baseline.

Inference: hard gates `logit > 0` (i.e. `sigmoid > 0.5`), compact execution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...gates import BernoulliPolicy, MovingAverageBaseline, reinforce_loss
from ...outputs import DynamicOutput
from .._registry import register_model
from ...gates.block_gates import PooledLinearGate, RecurrentGate
from ...gates.thresholds import GatePolicy
from .gated_resnet import GatedResNet
from .reinforce import loss_reward_surrogate

GATES = ("ffgate", "rnn")


class SkipNet(GatedResNet):
    """A `GatedResNet` with SkipNet gates (see the module docstring).

    Args:
        depth, num_classes, in_chans, width: of the CIFAR ResNet backbone.
        gate: `"ffgate"` (one gate per block) or `"rnn"` (one shared LSTM gate).
        rl: default training mode: soft gates (`False`) or hybrid RL (`True`).
        cost_weight: `alpha`, the weight of the executed fraction in the RL reward.
        entropy_weight: entropy bonus of the gate policy in RL mode.
        baseline_momentum: of the moving-average reward baseline.
        gate_bias_init: initial bias of the gate logits (2.0: ~88% executed at first).
        rnn_hidden: input and hidden size of the LSTM gate.

    Attributes:
        gates (`nn.ModuleList` of `PooledLinearGate`, ffgate) or gate (`RecurrentGate`,
        rnn); policy (`BernoulliPolicy`); baseline (`MovingAverageBaseline`).

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)`, `decisions["gates"] (B, G)`, `["executed_fraction"] (B,)`,
        `["compact_flops"] (B,)`, and in RL training `aux_losses["reinforce"]`.
    """

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        gate: str = "ffgate",
        rl: bool = False,
        cost_weight: float = 0.1,
        entropy_weight: float = 0.0,
        baseline_momentum: float = 0.9,
        gate_bias_init: float = 2.0,
        rnn_hidden: int = 10,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            "skipnet_resnet", depth, num_classes, in_chans, width, device=device, dtype=dtype
        )
        if gate not in GATES:
            raise ConfigError(f"model 'skipnet_resnet': gate must be one of {GATES}, got {gate!r}")
        if cost_weight < 0 or entropy_weight < 0:
            raise ConfigError(
                "model 'skipnet_resnet': cost_weight and entropy_weight must be >= 0, got "
                f"{cost_weight!r}, {entropy_weight!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.gate_kind = gate
        self.rl = bool(rl)
        self.cost_weight = float(cost_weight)
        self.entropy_weight = float(entropy_weight)
        if gate == "ffgate":
            self.gates = nn.ModuleList(
                PooledLinearGate(c, bias_init=gate_bias_init, **factory) for c in self.gate_chans
            )
            self._gate_flops = sum(g.flops() for g in self.gates)
        else:
            stage_chans = tuple(blocks[0].conv2.conv.out_channels for blocks in self.backbone.stages)
            self.gate = RecurrentGate(
                stage_chans, rnn_hidden, rnn_hidden, bias_init=gate_bias_init, **factory
            )
            self._gate_flops = sum(self.gate.flops(s) for s, _ in self.gated_blocks)
        self.policy = BernoulliPolicy()
        self.baseline = MovingAverageBaseline(baseline_momentum, **factory)

    def gate_logit_layers(self) -> list[nn.Linear]:
        """The layers whose outputs are the gate logits (`dynamicnets.inference.calibrate_gate_rate`
        shifts their biases): one per gated block (feed-forward gates) or the recurrent gate's
        shared output layer."""
        if self.gate_kind == "ffgate":
            return [gate.fc for gate in self.gates]
        return [self.gate.out]

    def gate_flops(self) -> int:
        """Per-sample FLOPs of all gate evaluations (independent of the input size and
        fixed by the architecture: counted once, at construction)."""
        return self._gate_flops

    def forward(
        self,
        x: Tensor,
        *,
        gates: Tensor | None = None,
        execution: str | None = None,
        policy: GatePolicy | None = None,
        rl: bool | None = None,
        target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DynamicOutput:
        """Run the network, each gated block executed or skipped per sample.

        Args:
            x: `(B, in_chans, H, W)`.
            gates: optional `(B, G)` decisions to apply instead of the gates' own (the
                gate networks are then not evaluated and their FLOPs not counted).
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: inference thresholds on the gate logits, one per gated block
                (`calibrate_gate_policy`), and an optional compute cap (`max_flops`,
                `max_blocks`: see `GatedResNet`); default: logit > 0, no cap. Not used in
                training.
            rl: training mode for this call (default `self.rl`); ignored in eval.
            target: optional `(B,)` labels; in RL training the reward is then computed
                exactly instead of through the logits (see `reinforce.py`).
            generator: optional `torch.Generator` for the RL gate samples.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        self.check_input(x)
        execution = self.resolve_execution(execution)
        cuts = self.gate_thresholds(policy)
        if gates is not None:
            return self.decided_output(x, gates, execution, policy)

        budget = self.block_budget(policy, x, self.gate_flops())
        if not self.training and execution == "compact":
            if self.gate_kind == "ffgate":
                scorers = [gate.scorer() for gate in self.gates]
            else:
                scorers = self.gate.scorers([s for s, _ in self.gated_blocks])
            return self.scored_output(x, scorers, self.gate_flops(), cuts, budget)

        use_rl = self.training and (self.rl if rl is None else bool(rl))
        gate_logits: list[Tensor] = []
        log_probs: list[Tensor] = []
        rnn_state: list = [None]

        def decide(index: int, stage: int, h: Tensor) -> Tensor:
            if self.gate_kind == "ffgate":
                logit = self.gates[index](h)
            else:
                logit, rnn_state[0] = self.gate(h, stage, rnn_state[0])
            gate_logits.append(logit)
            if not self.training:
                return logit > cuts[index]
            if use_rl:
                action, log_prob = self.policy.sample(logit.unsqueeze(1), generator)
                log_probs.append(log_prob)
                return action.squeeze(1)
            return torch.sigmoid(logit)

        features, decided = self.run_blocks(x, decide, execution, validate=self.training, budget=budget)
        logits = self.backbone.head(features)
        if use_rl:
            logits, aux = self._reinforce(logits, torch.stack(log_probs).sum(0), decided,
                                          torch.stack(gate_logits, 1), target)
        out = self.make_output(x, logits, decided, execution, self.gate_flops(), budget)
        if use_rl:
            out.aux_losses["reinforce"] = aux
        return out

    def _reinforce(
        self, logits: Tensor, log_prob: Tensor, gates: Tensor, gate_logits: Tensor, target: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The logits to return and the REINFORCE aux loss (exact if `target` is given)."""
        cost = -self.cost_weight * gates.detach().to(log_prob.dtype).mean(dim=1)
        baseline = self.baseline()
        if target is None:
            logits, aux = loss_reward_surrogate(logits, log_prob, cost, baseline)
        else:
            task = F.cross_entropy(logits.detach(), target, reduction="none")
            aux = reinforce_loss(log_prob, -task.to(log_prob.dtype) + cost, baseline)
        if self.entropy_weight > 0:
            aux = aux - self.entropy_weight * self.policy.entropy(gate_logits).mean()
        # A score-function loss has no meaningful value: keep its gradient, report 0, so
        # the logged loss stays the task loss (+ other aux terms).
        return logits, aux - aux.detach()

    def reward(self, out: DynamicOutput, target: Tensor) -> Tensor:
        """`(B,)` RL reward of a finished forward: `-CE - cost_weight * executed fraction`."""
        task = F.cross_entropy(out.logits.detach().float(), target, reduction="none")
        return -task - self.cost_weight * out.decisions["executed_fraction"].float()

    def update_baseline(self, out: DynamicOutput, target: Tensor) -> Tensor:
        """Fold the batch's rewards into the moving-average baseline (call after backward).

        Args:
            out: the output of a training forward.
            target: `(B,)` labels.

        Returns:
            The new baseline (scalar).
        """
        return self.baseline.update(self.reward(out, target))


@register_model
def skipnet_resnet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 110,
    width: int = 16,
    gate: str = "ffgate",
    rl: bool = False,
    cost_weight: float = 0.1,
    entropy_weight: float = 0.0,
    baseline_momentum: float = 0.9,
    gate_bias_init: float = 2.0,
    rnn_hidden: int = 10,
    device=None,
    dtype=None,
) -> SkipNet:
    """SkipNet on a CIFAR ResNet (any depth 6n + 2, n >= 2); see `SkipNet`."""
    return SkipNet(
        depth, num_classes, in_chans, width, gate=gate, rl=rl, cost_weight=cost_weight,
        entropy_weight=entropy_weight, baseline_momentum=baseline_momentum,
        gate_bias_init=gate_bias_init, rnn_hidden=rnn_hidden, device=device, dtype=dtype,
    )
