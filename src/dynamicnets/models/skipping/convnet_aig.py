"""ConvNet-AIG (Veit & Belongie, "Convolutional Networks with Adaptive Inference Graphs",
ECCV 2018): a Gumbel gate per residual block, trained toward a target execution rate.

Each gated block has a gate `pool -> linear -> ReLU -> linear` reading the block's input.
While training, a straight-through Gumbel-sigmoid turns its logit into an exact 0/1
decision whose gradient is the relaxed sample's; in eval the decision is
`sigmoid(logit / tau) > 0.5`. The target-rate loss keeps the fraction of the batch that
executes each block near `target_rate`:

- `rate_loss="per_block"`: `mean_l (mean_b g[b, l] - t_l)^2` (ConvNet-AIG's loss), with
  `t` one rate for all blocks or one per gated block;
- `rate_loss="global"`: `(mean_{b, l} g[b, l] - t)^2`, only the overall rate is held
  (with per-block targets `t_l`, their mean is the target).

The loss, times `rate_weight`, goes into `aux_losses["target_rate"]` in training.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...gates import GumbelSigmoidGate
from ...outputs import DynamicOutput
from .._registry import register_model
from ...gates.block_gates import PooledMLPGate
from ...gates.thresholds import GatePolicy
from .gated_resnet import GatedResNet

RATE_LOSSES = ("per_block", "global")


def target_rate_loss(gates: Tensor, target: Tensor, kind: str = "per_block") -> Tensor:
    """Squared distance of the execution rates to their targets.

    Args:
        gates: `(B, G)` gate values (straight-through hard or soft).
        target: `(G,)` target execution rate of each gated block, in `[0, 1]`.
        kind: `"per_block"` (mean over blocks of the squared error of each block's rate)
            or `"global"` (squared error of the overall rate against the mean target).

    Returns:
        A scalar.
    """
    if kind == "per_block":
        return (gates.mean(dim=0) - target).square().mean()
    return (gates.mean() - target.mean()).square()


class ConvNetAIG(GatedResNet):
    """A `GatedResNet` with ConvNet-AIG gates (see the module docstring).

    Args:
        depth, num_classes, in_chans, width: of the CIFAR ResNet backbone.
        gate_hidden: hidden width of each gate.
        tau: Gumbel temperature while training.
        target_rate: one execution rate for every gated block, or one per gated block.
        rate_loss: `"per_block"` or `"global"`.
        rate_weight: weight of the target-rate aux loss.
        gate_bias_init: initial bias of the gate logits (2.0: ~88% executed at first).
        gate_noise_end: scale of the Gumbel noise at the end of training, reached linearly
            from 1 over training (the Trainer passes `progress`). 1 (default) keeps
            ConvNet-AIG's constant noise; 0 ends training on the inference rule
            `logit > 0`, which closes the gap between gates trained on noisy decisions
            and evaluated on thresholded ones (noisy gates with probabilities above 0.5
            all run at eval).

    Attributes:
        gates: `nn.ModuleList` of `PooledMLPGate`, one per gated block; gumbel
        (`GumbelSigmoidGate`); target_rate (`(G,)` buffer).

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)`, `decisions["gates"] (B, G)`, `["executed_fraction"] (B,)`,
        `["compact_flops"] (B,)`, in training `aux_losses["target_rate"]`.
    """

    target_rate: Tensor

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        gate_hidden: int = 16,
        tau: float = 1.0,
        target_rate: float | Sequence[float] = 0.6,
        rate_loss: str = "per_block",
        rate_weight: float = 1.0,
        gate_bias_init: float = 2.0,
        gate_noise_end: float = 1.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            "convnet_aig_resnet", depth, num_classes, in_chans, width, device=device, dtype=dtype
        )
        name = "model 'convnet_aig_resnet'"
        if rate_loss not in RATE_LOSSES:
            raise ConfigError(f"{name}: rate_loss must be one of {RATE_LOSSES}, got {rate_loss!r}")
        try:
            rates = [float(target_rate)] * self.num_gated_blocks if isinstance(
                target_rate, (int, float)) else [float(r) for r in target_rate]
        except (TypeError, ValueError):
            rates = []
        if len(rates) != self.num_gated_blocks or not all(0.0 <= r <= 1.0 for r in rates):
            raise ConfigError(
                f"{name}: target_rate must be one rate in [0, 1] or {self.num_gated_blocks} of "
                f"them (one per gated block), got {target_rate!r}"
            )
        if rate_weight < 0:
            raise ConfigError(f"{name}: rate_weight must be >= 0, got {rate_weight!r}")
        if not 0.0 <= gate_noise_end <= 1.0:
            raise ConfigError(f"{name}: gate_noise_end must be in [0, 1], got {gate_noise_end!r}")
        self.gate_noise_end = float(gate_noise_end)
        self.uses_training_progress = self.gate_noise_end != 1.0
        factory = {"device": device, "dtype": dtype}
        self.gates = nn.ModuleList(
            PooledMLPGate(c, gate_hidden, bias_init=gate_bias_init, **factory)
            for c in self.gate_chans
        )
        self._gate_flops = sum(g.flops() for g in self.gates)
        self.gumbel = GumbelSigmoidGate(tau, hard=True)
        self.rate_loss = rate_loss
        self.rate_weight = float(rate_weight)
        self.register_buffer("target_rate", torch.tensor(rates, device=device, dtype=dtype))

    def gate_logit_layers(self) -> list[nn.Linear]:
        """The layers whose outputs are the gate logits, one per gated block
        (`dynamicnets.inference.calibrate_gate_rate` shifts their biases)."""
        return [gate.fc2 for gate in self.gates]

    def gate_flops(self) -> int:
        """Per-sample FLOPs of all gates (fixed by the architecture: counted once, at
        construction, not at every forward)."""
        return self._gate_flops

    def forward(
        self,
        x: Tensor,
        *,
        gates: Tensor | None = None,
        execution: str | None = None,
        policy: GatePolicy | None = None,
        generator: torch.Generator | None = None,
        progress: float | None = None,
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
            generator: optional `torch.Generator` for the Gumbel noise while training.
            progress: fraction of training done, in `[0, 1]`, for the noise schedule
                (`gate_noise_end`); `None`: full noise.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        self.check_input(x)
        execution = self.resolve_execution(execution)
        cuts = self.gate_thresholds(policy)
        if gates is not None:
            return self.decided_output(x, gates, execution, policy)

        budget = self.block_budget(policy, x, self.gate_flops())
        step = 0.0 if progress is None else min(max(float(progress), 0.0), 1.0)
        noise = 1.0 + (self.gate_noise_end - 1.0) * step
        if not self.training and execution == "compact":
            # the eval gate, sigmoid(logit / tau) > 0.5, is logit > 0
            scorers = [gate.scorer() for gate in self.gates]
            return self.scored_output(x, scorers, self.gate_flops(), cuts, budget)

        def decide(index: int, stage: int, h: Tensor) -> Tensor:
            logit = self.gates[index](h)
            if not self.training:
                return logit > cuts[index]
            return self.gumbel(logit, generator=generator, noise_scale=noise)

        features, decided = self.run_blocks(x, decide, execution, validate=self.training, budget=budget)
        out = self.make_output(x, self.backbone.head(features), decided, execution, self.gate_flops(), budget)
        if self.training and self.rate_weight > 0:
            loss = target_rate_loss(decided, self.target_rate.to(decided.dtype), self.rate_loss)
            out.aux_losses["target_rate"] = self.rate_weight * loss
        return out


@register_model
def convnet_aig_resnet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 110,
    width: int = 16,
    gate_hidden: int = 16,
    tau: float = 1.0,
    target_rate: float | Sequence[float] = 0.6,
    rate_loss: str = "per_block",
    rate_weight: float = 1.0,
    gate_bias_init: float = 2.0,
    gate_noise_end: float = 1.0,
    device=None,
    dtype=None,
) -> ConvNetAIG:
    """ConvNet-AIG on a CIFAR ResNet (any depth 6n + 2, n >= 2); see `ConvNetAIG`."""
    return ConvNetAIG(
        depth, num_classes, in_chans, width, gate_hidden=gate_hidden, tau=tau,
        target_rate=target_rate, rate_loss=rate_loss, rate_weight=rate_weight,
        gate_bias_init=gate_bias_init, gate_noise_end=gate_noise_end, device=device, dtype=dtype,
    )
