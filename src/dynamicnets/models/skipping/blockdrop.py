"""BlockDrop (Wu, Nagarajan, Kumar, Rennie, Davis, Grauman, Feris, "BlockDrop: Dynamic
Inference Paths in Residual Networks", CVPR 2018): a policy network looks at the input
once and decides, for every residual block at the same time, whether it runs.

The policy (`PolicyNetwork`, a tiny CNN on the input pooled to 16x16) outputs one logit
per gated block. While training, actions are sampled from `Bernoulli(sigmoid(logit))` and
the policy is trained by REINFORCE with BlockDrop's cost-aware reward
(`dynamicnets.gates.cost_aware_reward`): `1 - f**gamma` for a right prediction, `f` the
fraction of gated blocks kept, and `-penalty` for a wrong one. The backbone runs the
sampled decisions (masked by default) and learns from the task loss, which is
BlockDrop's joint fine-tuning; freeze `backbone` for the policy-only stage. In eval the
policy is greedy (`logit > 0`) and the backbone runs compact.

Curriculum (`decide_last=k`): only the last `k` gated blocks are decided by the policy,
the others are forced on and left out of the log-probability; BlockDrop grows `k` by one
block per epoch until every block is decided (`curriculum_blocks` gives that schedule).

How the label-dependent reward reaches the policy when `forward` gets no label, and the
moving-average baseline: see `reinforce.py` (call `update_baseline(out, target)` after
each step).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...gates import BernoulliPolicy, MovingAverageBaseline, cost_aware_reward, reinforce_loss
from ...outputs import DynamicOutput
from .._registry import register_model
from ...gates.block_gates import PolicyNetwork
from ...gates.thresholds import GatePolicy
from .gated_resnet import GatedResNet
from .reinforce import accuracy_reward_surrogate


def curriculum_blocks(epoch: int, num_gated_blocks: int, epochs_per_block: int = 1) -> int:
    """BlockDrop's curriculum: the number of last blocks the policy decides at `epoch`.

    Args:
        epoch: the epoch (from 0).
        num_gated_blocks: the number of gated blocks.
        epochs_per_block: epochs per block (>= 1).

    Returns:
        `min(num_gated_blocks, epoch // epochs_per_block + 1)`.
    """
    if epoch < 0 or epochs_per_block < 1:
        raise ConfigError(
            f"curriculum_blocks: epoch must be >= 0 and epochs_per_block >= 1, got {epoch!r}, "
            f"{epochs_per_block!r}"
        )
    return min(num_gated_blocks, epoch // epochs_per_block + 1)


class BlockDrop(GatedResNet):
    """A `GatedResNet` whose decisions all come from one policy network (module docstring).

    Args:
        depth, num_classes, in_chans, width: of the CIFAR ResNet backbone.
        policy_resolution, policy_width: input resolution and first width of the policy.
        penalty: reward of a wrong prediction is `-penalty`.
        gamma: exponent of the kept fraction in the reward of a right prediction.
        entropy_weight: entropy bonus of the policy.
        baseline_momentum: of the moving-average reward baseline.
        policy_bias_init: initial bias of the policy logits (2.0: keep ~88% at first).
        decide_last: default curriculum, the number of last gated blocks the policy
            decides (`None`: all). Change it between epochs with `set_curriculum`.

    Attributes:
        policy_net (`PolicyNetwork`), policy (`BernoulliPolicy`), baseline
        (`MovingAverageBaseline`), decide_last.

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)`, `decisions["gates"] (B, G)`, `["executed_fraction"] (B,)`,
        `["compact_flops"] (B,)`, `["policy_logits"] (B, G)`, in training
        `aux_losses["reinforce"]`.
    """

    def __init__(
        self,
        depth: int = 110,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        policy_resolution: int = 16,
        policy_width: int = 16,
        penalty: float = 1.0,
        gamma: float = 2.0,
        entropy_weight: float = 0.0,
        baseline_momentum: float = 0.9,
        policy_bias_init: float = 2.0,
        decide_last: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(
            "blockdrop_resnet", depth, num_classes, in_chans, width, device=device, dtype=dtype
        )
        name = "model 'blockdrop_resnet'"
        if policy_resolution < 1 or policy_width < 1:
            raise ConfigError(
                f"{name}: policy_resolution and policy_width must be >= 1, got "
                f"{policy_resolution!r}, {policy_width!r}"
            )
        if penalty < 0 or not gamma > 0 or entropy_weight < 0:
            raise ConfigError(
                f"{name}: need penalty >= 0, gamma > 0, entropy_weight >= 0, got {penalty!r}, "
                f"{gamma!r}, {entropy_weight!r}"
            )
        factory = {"device": device, "dtype": dtype}
        self.policy_net = PolicyNetwork(
            in_chans, self.num_gated_blocks, resolution=policy_resolution, width=policy_width,
            bias_init=policy_bias_init, **factory,
        )
        self.policy = BernoulliPolicy()
        self.baseline = MovingAverageBaseline(baseline_momentum, **factory)
        self.penalty = float(penalty)
        self.gamma = float(gamma)
        self.entropy_weight = float(entropy_weight)
        self.decide_last = self._check_decide_last(decide_last)

    def _check_decide_last(self, k: int | None) -> int | None:
        if k is not None and not (isinstance(k, int) and 1 <= k <= self.num_gated_blocks):
            raise ConfigError(
                f"model 'blockdrop_resnet': decide_last must be None or an int in "
                f"[1, {self.num_gated_blocks}], got {k!r}"
            )
        return k

    def gate_logit_layers(self) -> list[nn.Linear]:
        """The policy network's output layer: one logit per gated block
        (`dynamicnets.inference.calibrate_gate_rate` shifts its biases)."""
        return [self.policy_net.fc]

    def decision_flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs of the policy network on a `(in_chans, H, W)` input."""
        return self.policy_net.flops(tuple(input_shape))

    def set_curriculum(self, decide_last: int | None) -> None:
        """Set the default number of last blocks the policy decides (`None`: all)."""
        self.decide_last = self._check_decide_last(decide_last)

    def decided_mask(self, decide_last: int | None, like: Tensor) -> Tensor:
        """`(G,)` 1.0 for the blocks the policy decides, 0.0 for the forced-on ones."""
        mask = torch.ones(self.num_gated_blocks, device=like.device, dtype=like.dtype)
        if decide_last is not None:
            mask[: self.num_gated_blocks - decide_last] = 0
        return mask

    def forward(
        self,
        x: Tensor,
        *,
        gates: Tensor | None = None,
        execution: str | None = None,
        policy: GatePolicy | None = None,
        decide_last: int | None = None,
        target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DynamicOutput:
        """Run the network, the policy deciding which blocks each sample executes.

        Args:
            x: `(B, in_chans, H, W)`.
            gates: optional `(B, G)` decisions to apply instead of the policy's (the
                policy network is then not evaluated and its FLOPs not counted).
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: inference thresholds on the policy logits, one per gated block
                (`calibrate_gate_policy`), and an optional compute cap (`max_flops`,
                `max_blocks`: see `GatedResNet`); default: logit > 0 (the greedy
                action), no cap. Not used in training.
            decide_last: curriculum for this call (default `self.decide_last`).
            target: optional `(B,)` labels; in training the reward is then computed
                exactly instead of through the logits (see `reinforce.py`).
            generator: optional `torch.Generator` for the sampled actions.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        self.check_input(x)
        execution = self.resolve_execution(execution)
        if gates is not None:
            return self.decided_output(x, gates, execution, policy)

        k = self.decide_last if decide_last is None else self._check_decide_last(decide_last)
        policy_logits = self.policy_net(x)
        mask = self.decided_mask(k, policy_logits)
        if self.training:
            actions, _ = self.policy.sample(policy_logits, generator)
        else:
            cuts = torch.tensor(self.gate_thresholds(policy), dtype=policy_logits.dtype, device=policy_logits.device)
            actions = (policy_logits > cuts).to(policy_logits.dtype)
        actions = torch.where(mask.bool(), actions, torch.ones_like(actions))
        budget = self.block_budget(policy, x, self.decision_flops(tuple(x.shape[1:])))
        if budget is not None:
            actions = budget.apply(actions)
        logits = self.run_decided(x, actions, execution)
        if self.training:
            logits, aux = self._reinforce(logits, policy_logits, actions, mask, target)
        out = self.make_output(
            x, logits, actions, execution, self.decision_flops(tuple(x.shape[1:])), budget
        )
        out.decisions["policy_logits"] = policy_logits.detach()
        if self.training:
            out.aux_losses["reinforce"] = aux
        return out

    def _reinforce(
        self, logits: Tensor, policy_logits: Tensor, actions: Tensor, mask: Tensor,
        target: Tensor | None,
    ) -> tuple[Tensor, Tensor]:
        """The logits to return and the REINFORCE aux loss (exact if `target` is given)."""
        per_action = -F.binary_cross_entropy_with_logits(policy_logits, actions, reduction="none")
        log_prob = (per_action * mask).sum(dim=1)
        kept = actions.mean(dim=1).to(log_prob.dtype)
        reward_correct = 1.0 - kept.pow(self.gamma)
        reward_wrong = torch.full_like(kept, -self.penalty)
        baseline = self.baseline()
        if target is None:
            logits, aux = accuracy_reward_surrogate(
                logits, log_prob, reward_correct, reward_wrong, baseline
            )
        else:
            correct = logits.detach().argmax(dim=1) == target
            reward = cost_aware_reward(correct, kept, self.penalty, self.gamma)
            aux = reinforce_loss(log_prob, reward, baseline)
        if self.entropy_weight > 0:
            p = torch.sigmoid(policy_logits)
            entropy = -(p * F.logsigmoid(policy_logits) + (1 - p) * F.logsigmoid(-policy_logits))
            aux = aux - self.entropy_weight * (entropy * mask).sum(dim=1).mean()
        # A score-function loss has no meaningful value: keep its gradient, report 0, so
        # the logged loss stays the task loss (+ other aux terms).
        return logits, aux - aux.detach()

    def reward(self, out: DynamicOutput, target: Tensor) -> Tensor:
        """`(B,)` reward of a finished forward (`cost_aware_reward` of the kept fraction)."""
        correct = out.logits.detach().argmax(dim=1) == target
        kept = out.decisions["executed_fraction"].float()
        return cost_aware_reward(correct, kept, self.penalty, self.gamma)

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
def blockdrop_resnet(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 110,
    width: int = 16,
    policy_resolution: int = 16,
    policy_width: int = 16,
    penalty: float = 1.0,
    gamma: float = 2.0,
    entropy_weight: float = 0.0,
    baseline_momentum: float = 0.9,
    policy_bias_init: float = 2.0,
    decide_last: int | None = None,
    device=None,
    dtype=None,
) -> BlockDrop:
    """BlockDrop on a CIFAR ResNet (any depth 6n + 2, n >= 2); see `BlockDrop`."""
    return BlockDrop(
        depth, num_classes, in_chans, width, policy_resolution=policy_resolution,
        policy_width=policy_width, penalty=penalty, gamma=gamma, entropy_weight=entropy_weight,
        baseline_momentum=baseline_momentum, policy_bias_init=policy_bias_init,
        decide_last=decide_last, device=device, dtype=dtype,
    )
