"""A learned exit criterion: a tiny head that predicts whether an exit's answer is right.

The hand-made criteria of `confidence.py` rank samples by one fixed statistic of the
softmax. `LearnedExitCriterion` instead feeds a few of those statistics to a 2-layer
MLP trained (`fit_learned_exit`) with binary cross-entropy to predict
`argmax(logits) == target` on a held-out split: its score is the predicted
probability that the exit is correct, a learned confidence. It is an
`ExitCriterion`, so `ExitPolicy(criterion=instance, ...)`, `run_early_exit` and
`calibrate_thresholds(..., criterion=instance)` take it as they take `maxprob`.

Features (`learned_exit_features`, `top_k + 2` numbers per sample, all in `[0, 1]`
and independent of the logits' scale, so they mean the same at every exit):

- the `top_k` largest softmax probabilities, sorted (zeros beyond `C`);
- the margin between the two largest (`score_margin`);
- the normalised negative entropy `1 - H(p) / log C` (`entropy_confidence`).

Design limit: the executor and the calibrator call `criterion.score(logits)` with the
current exit's logits only, never its index, so one head is SHARED by every exit and
is trained on the pooled samples of all of them. It cannot learn that the same
softmax shape means "probably right" at a deep exit and "probably wrong" at a shallow
one; a per-exit head (or the exit index as a feature) needs the executor to pass `k`.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, DataError
from ..flops import linear_flops
from .confidence import ExitCriterion, entropy_confidence


def learned_exit_features(logits: Tensor, top_k: int = 3) -> Tensor:
    """Scale-free summary of each sample's softmax, the input of the learned head.

    Args:
        logits: `(B, C)` class logits of one exit.
        top_k: how many of the largest probabilities to keep, `>= 2`.

    Returns:
        `(B, top_k + 2)` float32: `[p_(1), ..., p_(top_k), p_(1) - p_(2), 1 - H(p)/log C]`
        with `p_(i)` the i-th largest softmax probability (0 where `i > C`).
    """
    if logits.dim() != 2:
        raise ValueError(f"learned exit features need (B, C) logits, got shape {tuple(logits.shape)}")
    probs = torch.softmax(logits.float(), dim=-1)
    keep = min(top_k, probs.shape[-1])
    top = probs.topk(keep, dim=-1).values
    if keep < top_k:
        top = torch.cat([top, top.new_zeros(top.shape[0], top_k - keep)], dim=-1)
    margin = top[:, 0] - top[:, 1]
    return torch.cat([top, margin[:, None], entropy_confidence(logits)[:, None]], dim=-1)


def _check_top_k(top_k: int) -> int:
    if isinstance(top_k, bool) or int(top_k) != top_k or top_k < 2:
        raise ConfigError(f"learned exit: top_k must be an integer >= 2, got {top_k!r}")
    return int(top_k)


class LearnedExitCriterion(nn.Module, ExitCriterion):
    """Exit where the head's predicted probability of being correct reaches the threshold.

    The head: fixed standardisation of the features (mean/std buffers set by
    `fit_learned_exit`), `Linear(top_k + 2, hidden) -> tanh -> Linear(hidden, 1)`.
    It holds no per-exit state (see the module docstring): one head serves every exit.
    Move it to the logits' device with `.to(device)`.

    Args:
        top_k: number of sorted probabilities among the features, `>= 2`.
        hidden: width of the hidden layer.
        device, dtype: where and in which dtype to create the parameters.
    """

    name = "learned"
    uses_history = False

    def __init__(self, top_k: int = 3, hidden: int = 16, *, device=None, dtype=None) -> None:
        super().__init__()
        self.top_k = _check_top_k(top_k)
        if isinstance(hidden, bool) or int(hidden) != hidden or hidden < 1:
            raise ConfigError(f"learned exit: hidden must be an integer >= 1, got {hidden!r}")
        num_features = self.top_k + 2
        factory = {"device": device, "dtype": dtype}
        self.register_buffer("feature_mean", torch.zeros(num_features, **factory))
        self.register_buffer("feature_std", torch.ones(num_features, **factory))
        self.hidden = nn.Linear(num_features, int(hidden), **factory)
        self.out = nn.Linear(int(hidden), 1, **factory)

    @property
    def num_features(self) -> int:
        return self.top_k + 2

    def forward(self, logits: Tensor) -> Tensor:
        """Correctness logit of one exit's prediction, per sample.

        Args:
            logits: `(B, C)` class logits of one exit, on the head's device.

        Returns:
            `(B,)` logit of "this exit's prediction is correct".
        """
        weight = self.hidden.weight
        if logits.device != weight.device:
            raise ConfigError(
                f"learned exit criterion is on {weight.device} but the logits are on {logits.device}: "
                "move it with criterion.to(device)"
            )
        return self.head(learned_exit_features(logits, self.top_k).to(weight.dtype))

    def head(self, features: Tensor) -> Tensor:
        """Apply the head (standardisation and the two linear layers) to the features.

        Args:
            features: `(B, top_k + 2)` from `learned_exit_features` (not standardised).

        Returns:
            `(B,)` correctness logit.
        """
        standardised = (features - self.feature_mean) / self.feature_std
        return self.out(torch.tanh(self.hidden(standardised))).squeeze(-1)

    def score(self, logits: Tensor) -> Tensor:
        """Predicted probability that the current exit is right, per sample.

        Args:
            logits: `(B, C)` class logits of the current exit.

        Returns:
            `(B,)` float32 in `[0, 1]`: predicted probability that `argmax(logits)` is right.
        """
        with torch.no_grad():
            return torch.sigmoid(self.forward(logits).float())

    def flops_per_sample(self) -> int:
        """FLOPs of the head's two linear layers for one sample at one exit (what
        `FlopCounterMode` counts; softmax, sort and tanh are not counted)."""
        return linear_flops(self.hidden) + linear_flops(self.out)

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Tensor], *, source: str = "state_dict", device=None, dtype=None
    ) -> "LearnedExitCriterion":
        """Rebuild a fitted criterion from `criterion.state_dict()`.

        `top_k` and `hidden` are read off the weight shapes, so the state dict alone is
        a complete checkpoint (tensors only; `torch.load(..., weights_only=True)` reads it).

        Args:
            state: the mapping `state_dict()` returned.
            source: name of where it came from, for error messages.
            device, dtype: where and in which dtype to create the criterion.

        Returns:
            A `LearnedExitCriterion` whose scores equal the saved one's.

        Raises:
            CheckpointError: naming the missing/unexpected keys or the inconsistent shapes.
        """
        expected = {"feature_mean", "feature_std", "hidden.weight", "hidden.bias", "out.weight", "out.bias"}
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{source}: expected a learned-exit state dict, got {type(state).__name__}")
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise CheckpointError(
                f"{source}: not a learned-exit state dict (missing keys {sorted(missing)}, "
                f"unexpected keys {sorted(unexpected)}); expected {sorted(expected)}"
            )
        hidden_weight = state["hidden.weight"]
        if not isinstance(hidden_weight, Tensor) or hidden_weight.dim() != 2 or hidden_weight.shape[1] < 4:
            raise CheckpointError(
                f"{source}: key 'hidden.weight' must be a (hidden, top_k + 2) tensor with top_k >= 2, "
                f"got {getattr(hidden_weight, 'shape', hidden_weight)!r}"
            )
        hidden, num_features = (int(s) for s in hidden_weight.shape)
        criterion = cls(top_k=num_features - 2, hidden=hidden, device=device, dtype=dtype)
        try:
            criterion.load_state_dict(dict(state))
        except RuntimeError as err:
            raise CheckpointError(f"{source}: learned-exit weights have inconsistent shapes: {err}") from None
        return criterion

    def __repr__(self) -> str:
        return f"LearnedExitCriterion(top_k={self.top_k}, hidden={self.hidden.out_features})"


def _pooled_examples(
    exit_logits: Sequence[Tensor], targets: Tensor, top_k: int
) -> tuple[Tensor, Tensor]:
    """Features `(K*N, top_k + 2)` and correctness labels `(K*N,)` float of every exit."""
    if isinstance(exit_logits, Tensor) or len(exit_logits) == 0:
        raise ConfigError("fit_learned_exit: exit_logits must be a non-empty list of (N, C) tensors, one per exit")
    if not isinstance(targets, Tensor) or targets.dim() != 1 or targets.is_floating_point():
        got = getattr(targets, "shape", targets)
        raise DataError(f"fit_learned_exit: targets must be a (N,) integer tensor, got {got!r}")
    num = targets.shape[0]
    features, labels = [], []
    for k, logits in enumerate(exit_logits):
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != num:
            raise DataError(
                f"fit_learned_exit: exit_logits[{k}] must be ({num}, C) logits (one row per target), "
                f"got {tuple(getattr(logits, 'shape', ()))}"
            )
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= logits.shape[1]):
            raise DataError(f"fit_learned_exit: targets must lie in [0, {logits.shape[1] - 1}] for exit {k}")
        features.append(learned_exit_features(logits.detach().cpu(), top_k))
        labels.append((logits.detach().cpu().argmax(dim=1) == targets.cpu()).float())
    labels_all = torch.cat(labels)
    if num < 2 or labels_all.min() == labels_all.max():
        raise DataError(
            "fit_learned_exit: needs samples where an exit is right AND samples where one is wrong "
            f"(got {int(labels_all.sum())} correct of {labels_all.numel()}); nothing to learn — "
            "fit on a held-out split, or use a fixed criterion such as 'maxprob'"
        )
    return torch.cat(features), labels_all


def fit_learned_exit(
    exit_logits: Sequence[Tensor],
    targets: Tensor,
    *,
    top_k: int = 3,
    hidden: int = 16,
    steps: int = 300,
    lr: float = 0.02,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> LearnedExitCriterion:
    """Train one shared learned-exit head on the pooled exits of a validation split.

    Every (sample, exit) pair is one example: features of that exit's logits, label
    `argmax == target`. Full-batch Adam on CPU, binary cross-entropy (each exit weighs
    the same, as each contributes `N` examples). Seeded: the same inputs and seed give
    bit-identical weights, and the caller's global random state is left untouched.
    Fit on data the backbone was not trained on, or the head learns the training set's
    over-confidence.

    Args:
        exit_logits: `K` tensors `(N, C)`, one per exit (`collect_exit_logits`).
        targets: `(N,)` int64 labels.
        top_k, hidden: the head's shape (see `LearnedExitCriterion`).
        steps: Adam steps over the whole pooled set.
        lr, weight_decay: Adam's learning rate and L2 penalty.
        seed: seeds the head's initialisation.

    Returns:
        A fitted `LearnedExitCriterion` on the CPU in float32, in eval mode.

    Raises:
        DataError: for mismatched shapes or out-of-range targets, or when every example
            has the same label.
        ConfigError: for bad hyper-parameters.
    """
    top_k = _check_top_k(top_k)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ConfigError(f"fit_learned_exit: steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"fit_learned_exit: lr must be a positive number, got {lr!r}")
    features, labels = _pooled_examples(exit_logits, targets, top_k)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        criterion = LearnedExitCriterion(top_k=top_k, hidden=hidden)
    with torch.no_grad():
        criterion.feature_mean.copy_(features.mean(dim=0))
        # Constant features (e.g. p_(3) when C = 2) get std 1: they stay at 0 after centring.
        std = features.std(dim=0)
        criterion.feature_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))
    optimizer = torch.optim.Adam(criterion.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    criterion.train()
    with torch.enable_grad():
        for _ in range(int(steps)):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(criterion.head(features), labels)
            loss.backward()
            optimizer.step()
    return criterion.eval()
