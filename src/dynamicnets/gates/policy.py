"""REINFORCE for discrete decisions: policies, a moving-average baseline, the loss, and
BlockDrop's cost-aware reward.

A policy network outputs logits; `BernoulliPolicy` (independent keep/skip gates) or
`CategoricalPolicy` (one of K choices per slot) samples actions and their summed
log-probability per sample. The score-function loss is
`-mean((reward - baseline) * log_prob)`, whose gradient is an unbiased estimate of the
gradient of the expected reward (Williams 1992).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .gumbel import sample_gumbel


def _sum_per_sample(x: Tensor) -> Tensor:
    """`(B, ...)` -> `(B,)` by summing every non-batch dimension."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


class BernoulliPolicy:
    """Independent binary actions (e.g. execute/skip each block, as in BlockDrop).

    Logits are `(B, *A)`: one log-odds per sample and action slot. Stateless; the
    methods only read their arguments.
    """

    def sample(self, logits: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw actions `a ~ Bernoulli(sigmoid(logits))`.

        Args:
            logits: `(B, *A)` log-odds of action 1.
            generator: optional `torch.Generator` on `logits`' device.

        Returns:
            `(actions, log_prob)`: `actions` `(B, *A)` float in `{0, 1}` (no gradient);
            `log_prob` `(B,)`, the log-probability of each sample's actions, summed over
            `A`, differentiable in `logits`.
        """
        with torch.no_grad():
            u = torch.rand(logits.shape, generator=generator, device=logits.device)
            actions = (u < torch.sigmoid(logits.float())).to(logits.dtype)
        return actions, self.log_prob(logits, actions)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        """Log-probability of the given actions, summed over `A`.

        Args:
            logits: `(B, *A)`.
            actions: `(B, *A)` in `{0, 1}`.

        Returns:
            `(B,)` summed log-probability of the actions.
        """
        per_action = -F.binary_cross_entropy_with_logits(
            logits, actions.to(logits.dtype), reduction="none"
        )
        return _sum_per_sample(per_action)

    def greedy(self, logits: Tensor) -> Tensor:
        """Most likely actions, without sampling.

        Args:
            logits: `(B, *A)`.

        Returns:
            `(B, *A)` float, 1 where `logits > 0`.
        """
        return (logits > 0).to(logits.dtype)

    def entropy(self, logits: Tensor) -> Tensor:
        """Entropy of the policy, per sample.

        Args:
            logits: `(B, *A)`.

        Returns:
            `(B,)` entropy in nats, summed over `A`.
        """
        p = torch.sigmoid(logits)
        # H = -p log p - (1-p) log(1-p), written with log-sigmoids to stay finite.
        per_action = -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))
        return _sum_per_sample(per_action)


class CategoricalPolicy:
    """One of `K` choices per action slot (e.g. a resolution, a width, an expert).

    Logits are `(B, *A, K)`; actions are `(B, *A)` int64 indices. Stateless.
    """

    def sample(self, logits: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw actions `a ~ Categorical(softmax(logits))` (by the Gumbel-max trick).

        Args:
            logits: `(B, *A, K)` unnormalised log-probabilities; `-inf` masks a choice.
            generator: optional `torch.Generator` on `logits`' device.

        Returns:
            `(actions, log_prob)`: `actions` `(B, *A)` int64; `log_prob` `(B,)` summed over
            `A`, differentiable in `logits`.
        """
        if logits.dim() < 2:
            raise ValueError(f"CategoricalPolicy needs (B, *A, K) logits, got shape {tuple(logits.shape)}")
        with torch.no_grad():
            actions = (logits + sample_gumbel(logits, generator)).argmax(dim=-1)
        return actions, self.log_prob(logits, actions)

    def log_prob(self, logits: Tensor, actions: Tensor) -> Tensor:
        """Log-probability of the given actions, summed over `A`.

        Args:
            logits: `(B, *A, K)`.
            actions: `(B, *A)` int64.

        Returns:
            `(B,)` summed log-probability of the actions.
        """
        log_p = torch.log_softmax(logits, dim=-1)
        chosen = log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        return _sum_per_sample(chosen)

    def greedy(self, logits: Tensor) -> Tensor:
        """Most likely choices, without sampling.

        Args:
            logits: `(B, *A, K)`.

        Returns:
            `(B, *A)` int64 argmax.
        """
        return logits.argmax(dim=-1)

    def entropy(self, logits: Tensor) -> Tensor:
        """Entropy of the policy, per sample.

        Args:
            logits: `(B, *A, K)`.

        Returns:
            `(B,)` entropy in nats, summed over `A`.
        """
        log_p = torch.log_softmax(logits, dim=-1)
        # Masked choices have log p = -inf and p = 0; clamping keeps 0 * log p at 0
        # (and its gradient finite) instead of NaN.
        log_p = log_p.clamp(min=torch.finfo(log_p.dtype).min)
        return _sum_per_sample(-(log_p.exp() * log_p).sum(dim=-1))


class MovingAverageBaseline(nn.Module):
    """Exponential moving average of the reward, used as the REINFORCE baseline.

    Holds the running mean in the buffer `mean` (saved in `state_dict`) and the number
    of updates in `count`. `forward()` only reads; call `update(rewards)` explicitly
    after the loss is computed. The first update sets `mean` to the batch mean (no bias
    towards the initial 0); later ones do
    `mean <- momentum * mean + (1 - momentum) * rewards.mean()`.

    Under data-parallel training, average the rewards over ranks before `update` (or
    let DDP broadcast the buffers) so every rank holds the same baseline.

    Args:
        momentum: weight of the old mean, in `[0, 1)`.
        device, dtype: of the buffers (`dtype` defaults to float32).
    """

    mean: Tensor
    count: Tensor

    def __init__(self, momentum: float = 0.9, device=None, dtype=None):
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"MovingAverageBaseline: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.register_buffer("mean", torch.zeros((), device=device, dtype=dtype or torch.float32))
        self.register_buffer("count", torch.zeros((), device=device, dtype=torch.int64))

    def forward(self) -> Tensor:
        """Read the baseline without updating it.

        Returns:
            The current baseline, a scalar tensor (no gradient).
        """
        return self.mean.detach().clone()

    @torch.no_grad()
    def update(self, rewards: Tensor) -> Tensor:
        """Fold a batch of rewards into the running mean.

        Args:
            rewards: `(B,)` (or any shape) rewards; their mean is used.

        Returns:
            The new baseline, a scalar tensor.
        """
        if rewards.numel() == 0:
            raise ValueError("MovingAverageBaseline.update got an empty reward tensor")
        batch_mean = rewards.detach().to(self.mean.dtype).mean()
        if int(self.count) == 0:
            self.mean.copy_(batch_mean)
        else:
            self.mean.mul_(self.momentum).add_((1.0 - self.momentum) * batch_mean)
        self.count.add_(1)
        return self.mean.detach().clone()

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"


def reinforce_loss(
    log_prob: Tensor,
    reward: Tensor,
    baseline: float | Tensor = 0.0,
    entropy: Tensor | None = None,
    entropy_weight: float = 0.0,
) -> Tensor:
    """Score-function (REINFORCE) loss with a baseline and an entropy bonus.

    `loss = -mean((reward - baseline).detach() * log_prob) - entropy_weight * mean(entropy)`

    Minimising it raises the log-probability of actions whose reward beats the
    baseline; the entropy bonus keeps the policy from collapsing early.

    Args:
        log_prob: `(B,)` log-probability of each sample's sampled actions.
        reward: `(B,)` reward of each sample (no gradient flows into it).
        baseline: a float, a scalar tensor or a `(B,)` tensor (no gradient flows into it).
        entropy: optional `(B,)` policy entropy per sample.
        entropy_weight: weight of the entropy bonus; needs `entropy` when non-zero.

    Returns:
        Scalar loss.
    """
    if log_prob.dim() != 1 or reward.shape != log_prob.shape:
        raise ValueError(
            f"reinforce_loss expects log_prob and reward of shape (B,), got "
            f"{tuple(log_prob.shape)} and {tuple(reward.shape)}"
        )
    advantage = (reward.to(log_prob.dtype) - baseline).detach()
    loss = -(advantage * log_prob).mean()
    if entropy_weight != 0.0:
        if entropy is None:
            raise ValueError("reinforce_loss: entropy_weight is non-zero but no entropy was given")
        loss = loss - entropy_weight * entropy.mean()
    return loss


def cost_aware_reward(
    correct: Tensor, cost_fraction: Tensor, penalty: float = 1.0, gamma: float = 2.0
) -> Tensor:
    """BlockDrop's reward: cheap correct answers score high, wrong answers are penalised.

    `reward = 1 - cost_fraction ** gamma` where the prediction is correct, and
    `reward = -penalty` where it is wrong.

    BlockDrop (Wu et al. 2018) uses `gamma = 2` with `cost_fraction` the fraction of
    residual blocks executed, `|u|_0 / K`; its paper names the wrong-answer penalty
    gamma, which here is `penalty` (and `gamma` is the exponent).

    Args:
        correct: `(B,)` bool, whether each prediction is right.
        cost_fraction: `(B,)` executed cost over the full cost, normally in `[0, 1]`.
        penalty: reward of a wrong prediction is `-penalty`.
        gamma: exponent of the cost term, `> 0`.

    Returns:
        `(B,)` rewards in `cost_fraction`'s floating dtype (float32 if it is not floating).
    """
    if correct.shape != cost_fraction.shape:
        raise ValueError(
            f"cost_aware_reward: correct {tuple(correct.shape)} and cost_fraction "
            f"{tuple(cost_fraction.shape)} must have the same shape"
        )
    if not gamma > 0:
        raise ConfigError(f"cost_aware_reward: gamma must be > 0, got {gamma!r}")
    cost = cost_fraction if cost_fraction.is_floating_point() else cost_fraction.float()
    reward_correct = 1.0 - cost.pow(gamma)
    return torch.where(correct.bool(), reward_correct, torch.full_like(cost, -float(penalty)))
