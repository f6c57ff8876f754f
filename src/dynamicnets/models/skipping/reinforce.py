"""REINFORCE for gate policies whose reward depends on the label, inside a label-free forward.

SkipNet's hybrid RL rewards a sample with `-task_loss - alpha * cost`; BlockDrop with
`1 - cost**gamma` when the prediction is right and `-penalty` when it is wrong. Both need
the label, but a model's `forward(x)` (as the `Trainer` calls it) does not see it. Two
ways are offered:

1. **Label given** (`forward(x, target=y)`): the reward is computed exactly and
   `reinforce_loss(log_prob, reward, baseline)` goes into `aux_losses`.
2. **No label** (the default under the `Trainer`): the label-dependent part of the
   policy gradient is routed through the task loss the trainer computes anyway. The
   logits are returned as `logits + (s - s.detach()) * d` with `s` the per-sample
   log-probability of the sampled actions and `d` a detached `(B, C)` direction. The
   value is exactly the logits (`s - s.detach()` is 0), the backbone's gradient is
   unchanged, and the cross-entropy `CE_b` with any target distribution `t_b` sends
   `dCE_b/ds_b = (p_b - t_b) . d_b` into `s_b` (`p_b = softmax(logits_b)`).

   - `d = log p` gives `CE_b - H(p_b)`: the reward `-CE_b` up to the label-free `H(p_b)`.
   - `d = a_b * onehot(argmax p_b)` gives `a_b * (p_pred - correct_b)` for hard labels:
     the correctness indicator times `a_b`, up to the label-free `a_b * p_pred`.

   The aux loss `mean(coef_b * s_b)` adds the label-free rest (the cancelling term, the
   cost part of the reward and the baseline), so that the total gradient into `s_b` is
   `-(reward_b - baseline) / B`: exactly the gradient of `reinforce_loss`. This assumes
   the trainer's task loss is the batch-mean cross-entropy of these logits (weight 1).
   With label smoothing `eps` the first form rewards `-CE_smoothed` (still exact for that
   loss); in the second, `correct_b` becomes `(1 - eps) correct_b + eps / C`.

The models report the REINFORCE aux term with value 0 (`aux - aux.detach()`): only its
gradient matters, and the logged training loss then stays the task loss.

The baseline is a `MovingAverageBaseline` the model reads and never updates in
`forward`; call `model.update_baseline(out, target)` after the optimizer step (without
it the baseline stays 0, which keeps the estimate unbiased, only noisier).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _score(log_prob: Tensor) -> Tensor:
    """`(B,) -> (B, 1)`: zero-valued, with the gradient of `log_prob`."""
    return (log_prob - log_prob.detach()).unsqueeze(1)


def loss_reward_surrogate(
    logits: Tensor, log_prob: Tensor, extra_reward: Tensor, baseline: float | Tensor = 0.0
) -> tuple[Tensor, Tensor]:
    """Policy gradient for `reward_b = -task_loss_b + extra_reward_b` without the label.

    Args:
        logits: `(B, C)` the model's logits.
        log_prob: `(B,)` log-probability of each sample's sampled actions.
        extra_reward: `(B,)` label-free part of the reward (e.g. `-alpha * cost`).
        baseline: scalar (or `(B,)`) baseline of the reward.

    Returns:
        `(logits, aux)`: `(B, C)` logits to return (same values) and the scalar aux loss.
        Together with the trainer's batch-mean cross-entropy on those logits, the gradient
        into `log_prob` equals that of `reinforce_loss(log_prob, reward, baseline)`.
    """
    log_p = torch.log_softmax(logits.detach().float(), dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    out = logits + _score(log_prob) * log_p.to(logits.dtype)
    coef = (entropy.to(log_prob.dtype) - extra_reward.to(log_prob.dtype) + baseline).detach()
    return out, (coef * log_prob).mean()


def accuracy_reward_surrogate(
    logits: Tensor,
    log_prob: Tensor,
    reward_correct: Tensor,
    reward_wrong: Tensor,
    baseline: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor]:
    """Policy gradient for a reward that depends on whether the prediction is right.

    `reward_b = reward_correct_b` if `argmax logits_b` is the label, else `reward_wrong_b`
    (BlockDrop: `1 - cost**gamma` and `-penalty`), without the label (see module doc).

    Args:
        logits: `(B, C)`.
        log_prob: `(B,)` log-probability of the sampled actions.
        reward_correct, reward_wrong: `(B,)` label-free rewards of the two outcomes.
        baseline: scalar (or `(B,)`) baseline of the reward.

    Returns:
        `(logits, aux)` as in `loss_reward_surrogate` (exact for hard labels).
    """
    detached = logits.detach()
    pred = detached.argmax(dim=-1)
    gap = (reward_correct - reward_wrong).detach()
    direction = gap.unsqueeze(1).to(logits.dtype) * F.one_hot(pred, logits.shape[-1]).to(logits.dtype)
    out = logits + _score(log_prob) * direction
    p_pred = torch.softmax(detached.float(), dim=-1).gather(1, pred.unsqueeze(1)).squeeze(1)
    coef = (-reward_wrong.to(log_prob.dtype) + baseline - gap.to(log_prob.dtype) * p_pred.to(log_prob.dtype))
    return out, (coef.detach() * log_prob).mean()
