"""EViT's token reorganisation inside a transformer block (Liang, Ge, Tong, Song, Wang, Xie,
"Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations", ICLR 2022).

Between the attention and the MLP of a block, the patch tokens the class token attends to
most are kept and the others are fused into one token, their average weighted by the
class token's attention (its mean over heads); the MLP then runs on the class token, the
kept tokens and the fused one (which comes last). A fused token of an earlier
reorganisation is a token like the others: it is kept or fused again on its merits.
Which tokens stay is a decision taken outside, by `select(scores) -> keep`, from
`keep_scores`: the class attention over its largest value in the sample (1 for the most
attended token), `-inf` where a sample has no token.

Two executions of the same decisions:

- `reorganise_masked`: static shapes. Tokens stay in place; dropped ones are masked out
  of later attention by the returned `alive` mask, and the fused token is appended as a
  new slot (dead when a sample dropped nothing). No host syncs.
- `reorganise_ragged`: a `RaggedTokens` batch in, the kept tokens (+ fused) out, each
  sample its own count; attention runs per `TokenBatching` strategy.

Costs per sample (FLOPs as `FlopCounterMode` counts them), `L` tokens entering (the
longest sample's under `PAD`), `L'` leaving: `attn.flops(L) + attn.cls_attention_flops(L)`
for the attention and the class-attention row, `2 (L - 1) D` for the fusion (a `(1, L-1)
x (L-1, D)` product; only samples that drop a token run it), `mlp.flops(L')` for the MLP
(always on the packed tokens).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .ragged_tokens import RaggedTokens
from .token_batching import TokenBatching, length_groups, parse_token_batching

Select = Callable[[Tensor], Tensor]
"""`scores (B, n) -> keep (B, n)` bool: the keep decision of a reorganisation."""


def keep_scores(cls_attention: Tensor, present: Tensor) -> Tensor:
    """Class attention over its largest value in each sample.

    Args:
        cls_attention: `(B, n)` attention of the class token to each patch token.
        present: `(B, n)` bool, the tokens a sample has.

    Returns:
        `(B, n)` scores in `[0, 1]` (1 for the most attended token), `-inf` where absent.
    """
    attention = cls_attention.masked_fill(~present, 0)
    top = attention.amax(dim=1, keepdim=True).clamp_min(torch.finfo(attention.dtype).tiny)
    return (attention / top).masked_fill(~present, float("-inf"))


def fusion_weights(cls_attention: Tensor, dropped: Tensor) -> Tensor:
    """`(B, n)` weights of the fused token: the class attention of the dropped tokens,
    normalised to sum to 1 in each sample that drops any (all zero in the others)."""
    weights = cls_attention.masked_fill(~dropped, 0)
    return weights / weights.sum(dim=1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)


def reorganise_masked(block: nn.Module, x: Tensor, alive: Tensor | None,
                      select: Select) -> tuple[Tensor, Tensor]:
    """One block with EViT's reorganisation, static shapes.

    Args:
        block: a `TransformerBlock` (`norm1`, `attn`, `norm2`, `mlp`).
        x: `(B, L, D)` tokens, class token first.
        alive: `(B, L)` bool, the tokens that take part (None: all of them).
        select: the keep decision.

    Returns:
        `(x (B, L + 1, D), alive (B, L + 1))`: the block's output with the fused token
        appended, and the tokens alive after it (the class token, the kept ones, the
        fused one where the sample dropped any).
    """
    mask = None if alive is None else alive[:, None, None, :]
    mixed, attention = block.attn.forward_with_cls_attention(block.norm1(x), attn_mask=mask)
    x = x + mixed
    present = torch.ones_like(attention, dtype=torch.bool) if alive is None else alive[:, 1:]
    keep = select(keep_scores(attention, present)) & present
    dropped = present & ~keep
    fused = fusion_weights(attention, dropped).unsqueeze(1) @ x[:, 1:]
    x = torch.cat([x, fused], dim=1)
    alive = torch.cat([torch.ones_like(present[:, :1]), keep, dropped.any(dim=1, keepdim=True)], dim=1)
    return x + block.mlp(block.norm2(x)), alive


def masked_flops(block: nn.Module, tokens: int) -> int:
    """Per-sample FLOPs of `reorganise_masked` on `tokens` token slots."""
    return (block.attn.flops(tokens) + block.attn.cls_attention_flops(tokens)
            + fusion_flops(block, tokens) + block.mlp.flops(tokens + 1))


def fusion_flops(block: nn.Module, tokens: int) -> int:
    """FLOPs of fusing the patch tokens of a sample of `tokens` tokens (class token included)."""
    return 2 * (tokens - 1) * block.norm1.normalized_shape[0]


@dataclass
class _Group:
    """Samples whose attention runs as one dense `(b, length, D)` call."""

    samples: list[int]
    length: int
    rows: Tensor | None  # packed rows of the samples (equal lengths), None when padded
    valid: Tensor | None  # (b, length) real tokens when padded, None otherwise

    def gather(self, tokens: RaggedTokens, values: Tensor) -> Tensor:
        if self.rows is None:
            return tokens.with_values(values).to_padded(self.length)[0]
        return values.index_select(0, self.rows).reshape(len(self.samples), self.length, -1)

    def scatter(self, dense: Tensor, into: Tensor) -> None:
        if self.rows is None:
            into.copy_(dense[self.valid])
        else:
            into.index_copy_(0, self.rows, dense.reshape(-1, dense.shape[-1]))

    @property
    def attn_mask(self) -> Tensor | None:
        return None if self.valid is None or bool(self.valid.all()) else self.valid[:, None, None, :]


def _groups(tokens: RaggedTokens, strategy: TokenBatching) -> list[_Group]:
    if strategy is TokenBatching.PAD:
        valid = tokens.to_padded()[1]
        return [_Group(list(range(tokens.batch_size)), max(tokens.lengths), None, valid)]
    return [_Group(samples, length, tokens.index_of_samples(samples), None)
            for length, samples in length_groups(tokens.lengths).items()]


class RaggedReorganisation(NamedTuple):
    """What `reorganise_ragged` returns.

    Attributes:
        tokens: the ragged output, `B` samples: class token, kept tokens in order, then
            the fused token where the sample dropped any.
        labels: `(T',)` int64 labels of its rows (the input's, -1 for new fused tokens).
        flops: `B` ints, the per-sample FLOPs executed (module docstring).
        fused: `(B,)` bool, the samples that dropped tokens (and so got a fused token).
    """

    tokens: RaggedTokens
    labels: Tensor
    flops: list[int]
    fused: Tensor


def reorganise_ragged(block: nn.Module, tokens: RaggedTokens, positions: Tensor, select: Select,
                      strategy: TokenBatching | str) -> RaggedReorganisation:
    """One block with EViT's reorganisation on a ragged batch, only the kept tokens leaving.

    Args:
        block: a `TransformerBlock`.
        tokens: `B` samples, class token first in each.
        positions: `(T,)` int64 label of every row (carried along: e.g. the original patch
            index); fused tokens get -1.
        select: the keep decision (scores `(B, n)`, `n` the longest sample's patch count).
        strategy: how the attention runs (`PAD`: one padded call; `PACK`, `BUCKET`: one
            dense call per group of samples of equal length).

    Returns:
        a `RaggedReorganisation`.
    """
    strategy = parse_token_batching(strategy)
    groups = _groups(tokens, strategy)
    batch, longest = tokens.batch_size, max(tokens.lengths)
    normed = block.norm1(tokens.values)
    attention = normed.new_zeros(batch, longest - 1)
    mixed = torch.empty_like(tokens.values)
    dense = []
    for group in groups:
        out, scores = block.attn.forward_with_cls_attention(group.gather(tokens, normed), attn_mask=group.attn_mask)
        x = group.gather(tokens, tokens.values) + out
        group.scatter(x, mixed)
        attention[group.samples, : group.length - 1] = scores
        dense.append(x)
    lengths = torch.tensor(tokens.lengths, device=normed.device)
    present = torch.arange(longest - 1, device=normed.device)[None, :] < (lengths[:, None] - 1)
    keep = select(keep_scores(attention, present)) & present
    dropped = present & ~keep
    weights = fusion_weights(attention, dropped)
    any_dropped = dropped.any(dim=1)
    fusing = any_dropped.tolist()
    fused = mixed.new_empty(sum(fusing), tokens.dim)
    slot = torch.cumsum(torch.tensor([0] + fusing[:-1], device=normed.device), 0)
    for group, x in zip(groups, dense):
        local = [i for i, s in enumerate(group.samples) if fusing[s]]
        if not local:
            continue
        samples = [group.samples[i] for i in local]
        index = torch.tensor(local, device=normed.device)
        part = weights[samples, : group.length - 1].unsqueeze(1) @ x.index_select(0, index)[:, 1:]
        fused.index_copy_(0, slot[samples], part[:, 0])
    row_keep = torch.cat([torch.ones_like(present[:, :1]), keep], dim=1)
    valid = torch.arange(longest, device=normed.device)[None, :] < lengths[:, None]
    kept = tokens.with_values(mixed).select(row_keep[valid])
    out, labels = _append_fused(kept, positions[row_keep[valid]], fused, fusing)
    out = out.with_values(out.values + block.mlp(block.norm2(out.values)))
    width = tokens.dim
    flops = []
    for group in groups:
        for s in group.samples:
            n = group.length
            flops.append((s, block.attn.flops(n) + block.attn.cls_attention_flops(n)
                          + (2 * (n - 1) * width if fusing[s] else 0) + block.mlp.flops(out.lengths[s])))
    return RaggedReorganisation(out, labels, [f for _, f in sorted(flops)], any_dropped)


def _append_fused(kept: RaggedTokens, labels: Tensor, fused: Tensor,
                  fusing: list[bool]) -> tuple[RaggedTokens, Tensor]:
    """`kept` with one row of `fused` (in order) appended to every sample with `fusing`."""
    if not any(fusing):
        return kept, labels
    device = kept.values.device
    extra = torch.tensor(fusing, dtype=torch.long, device=device)
    lengths = tuple(n + f for n, f in zip(kept.lengths, fusing))
    before = torch.cumsum(extra, 0) - extra  # fused rows inserted before each sample
    rows = torch.arange(kept.values.shape[0], device=device) + before[kept.sample_ids()]
    ends = torch.cumsum(torch.tensor(lengths, device=device), 0) - 1
    fused_rows = ends[extra.bool()]
    values = kept.values.new_empty(sum(lengths), kept.dim)
    values.index_copy_(0, rows, kept.values)
    values.index_copy_(0, fused_rows, fused)
    out_labels = labels.new_full((sum(lengths),), -1)
    out_labels.index_copy_(0, rows, labels)
    return RaggedTokens(values, lengths), out_labels
