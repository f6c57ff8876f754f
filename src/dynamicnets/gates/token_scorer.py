"""`TokenScorer`: DynamicViT's prediction module (Rao et al., NeurIPS 2021), which scores
every patch token for keeping or dropping.

Each token is normalised and projected, `h = GELU(W_in LN(x))` (width `D`); the first
half of `h` is the token's *local* feature, the second half, averaged over the tokens the
sample still has, its *global* feature. The two are concatenated and an MLP
(`D -> D/2 -> D/4 -> 2`, GELU between) gives the log-probabilities of (keep, drop).

It only scores: the model decides (Gumbel samples in training, a `TokenPolicy` at
inference) and the blocks take the decisions.

Costs (per sample, `n` patch tokens scored, FLOPs as `FlopCounterMode` counts them):
`2 n (D^2 + D D/2 + D/2 D/4 + 2 D/4)`; the mean, the concatenation and the norms are free.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import linear_flops
from ..layers.ragged_tokens import RaggedTokens


class TokenScorer(nn.Module):
    """Keep/drop log-probabilities of patch tokens from local and global features.

    Args:
        dim: token width `D` (>= 4).
        keep_prior: the keep probability every token gets at initialisation (the bias of
            the output layer is set to its log-odds; the weights start small), in (0, 1].
            DynamicViT starts at 1/2; starting at the model's target ratio makes the first
            steps of fine-tuning drop about as many tokens as the ratio loss asks for.

    Shapes:
        `forward(x (B, n, D), keep (B, n) | None) -> (B, n, 2)` log-probabilities, column
        0 = keep; `keep` weights the global average (1 = the sample still has the token).
        `forward_ragged(tokens: RaggedTokens of T patch rows) -> (T, 2)`, each sample's
        global feature averaged over its own rows.

    Raises:
        ConfigError: `dim < 4` or a prior outside (0, 1].
    """

    def __init__(self, dim: int, keep_prior: float = 0.5, *, device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4:
            raise ConfigError(f"TokenScorer: dim must be an int >= 4, got {dim!r}")
        if isinstance(keep_prior, bool) or not isinstance(keep_prior, (int, float)) or not 0 < keep_prior <= 1:
            raise ConfigError(f"TokenScorer: keep_prior must be in (0, 1], got {keep_prior!r}")
        factory = {"device": device, "dtype": dtype}
        self.local_dim = dim // 2
        self.norm = nn.LayerNorm(dim, eps=1e-6, **factory)
        self.proj = nn.Linear(dim, dim, **factory)
        self.fc1 = nn.Linear(dim, dim // 2, **factory)
        self.fc2 = nn.Linear(dim // 2, dim // 4, **factory)
        self.out = nn.Linear(dim // 4, 2, **factory)
        self.keep_prior = float(keep_prior)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small weights (truncated normal, std 0.02), zero biases, output bias at the prior."""
        for layer in (self.proj, self.fc1, self.fc2, self.out):
            nn.init.trunc_normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)
        prior = min(self.keep_prior, 1 - 1e-4)
        with torch.no_grad():
            self.out.bias[0] = math.log(prior) - math.log1p(-prior)

    def _features(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(self.norm(x)))

    def _decide(self, local: Tensor, global_: Tensor) -> Tensor:
        z = torch.cat([local, global_], dim=-1)
        z = F.gelu(self.fc2(F.gelu(self.fc1(z))))
        return F.log_softmax(self.out(z), dim=-1)

    def forward(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """Log-probabilities `(B, n, 2)` (keep, drop) of the tokens `x (B, n, D)`.

        Args:
            x: patch tokens (no class token).
            keep: `(B, n)` in [0, 1], which tokens the sample still has (the global
                feature is their weighted mean); None = all.
        """
        h = self._features(x)
        local, part = h[..., :self.local_dim], h[..., self.local_dim:]
        if keep is None:
            global_ = part.mean(dim=1, keepdim=True)
        else:
            weights = keep.to(h.dtype)[..., None]
            global_ = (part * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp_min(1e-6)
        return self._decide(local, global_.expand(-1, x.shape[1], -1))

    def forward_ragged(self, tokens: RaggedTokens) -> Tensor:
        """Log-probabilities `(T, 2)` of the packed patch tokens of a ragged batch."""
        h = self._features(tokens.values)
        local, part = h[:, :self.local_dim], h[:, self.local_dim:]
        global_ = tokens.with_values(part).mean_tokens()
        return self._decide(local, global_.index_select(0, tokens.sample_ids()))

    def flops(self, tokens: int) -> int:
        """Per-sample FLOPs of scoring `tokens` patch tokens."""
        return sum(linear_flops(layer, tokens) for layer in (self.proj, self.fc1, self.fc2, self.out))


def keep_probability(log_probs: Tensor) -> Tensor:
    """`(..., 2)` (keep, drop) log-probabilities -> `(...)` keep probabilities."""
    return log_probs[..., 0].exp()
