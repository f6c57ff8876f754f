"""Running transformer blocks on a batch whose samples keep different numbers of tokens.

Three strategies, all exact (they equal running each sample alone with its own tokens):

- `PAD`: pad every sample to the longest one and mask the padding out of attention. One
  dense call per block, but every sample pays for the longest sample's tokens.
- `PACK`: the linear layers (qkv, projection, MLP, any MoE) run once on the `T` packed
  tokens of the whole batch, with no padding; attention runs per group of samples of equal
  length (one fused call per distinct length), never across samples.
- `BUCKET`: samples of equal length are stacked into dense sub-batches and each runs the
  blocks as a plain dense batch (no mask, no padding), written back in place.

Blocks are `TransformerBlock`s (or anything with `norm1`, `attn` (an `Attention`), `norm2`
and `mlp` that work on `(..., D)` rows).
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .ragged_tokens import RaggedTokens


class TokenBatching(str, Enum):
    """How a block runs a ragged batch (a `str`, so `"pack"` compares equal)."""

    PAD = "pad"
    PACK = "pack"
    BUCKET = "bucket"

    def __str__(self) -> str:
        return self.value


def parse_token_batching(strategy: "TokenBatching | str") -> TokenBatching:
    """`strategy` as a `TokenBatching`; an unknown name is a `ConfigError` listing the choices."""
    try:
        return TokenBatching(strategy)
    except ValueError:
        names = ", ".join(repr(s.value) for s in TokenBatching)
        raise ConfigError(f"token batching must be one of {names}, got {strategy!r}") from None


def length_groups(lengths: Sequence[int]) -> dict[int, list[int]]:
    """`{length: [sample, ...]}` samples grouped by their number of tokens, in batch order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for sample, length in enumerate(lengths):
        groups[int(length)].append(sample)
    return dict(groups)


def run_blocks(blocks: Sequence[nn.Module], tokens: RaggedTokens, strategy: TokenBatching | str) -> RaggedTokens:
    """Run `blocks` one after another on `tokens`, every sample on its own tokens only.

    Args:
        blocks: transformer blocks that keep the token count.
        tokens: the ragged batch, `B` samples.
        strategy: `TokenBatching` (or its name).

    Returns:
        the ragged batch after the blocks, same lengths.
    """
    strategy = parse_token_batching(strategy)
    if not blocks:
        return tokens
    if strategy is TokenBatching.PAD:
        return _run_padded(blocks, tokens)
    if strategy is TokenBatching.BUCKET:
        return _run_bucketed(blocks, tokens)
    return _run_packed(blocks, tokens)


def _run_padded(blocks: Sequence[nn.Module], tokens: RaggedTokens) -> RaggedTokens:
    padded, valid = tokens.to_padded()
    # with equal lengths nothing is padded: the plain dense call, no mask
    mask = None if min(tokens.lengths) == max(tokens.lengths) else valid[:, None, None, :]
    for block in blocks:
        padded = block(padded, attn_mask=mask)
    return tokens.with_values(padded[valid])


def _run_bucketed(blocks: Sequence[nn.Module], tokens: RaggedTokens) -> RaggedTokens:
    groups = length_groups(tokens.lengths)
    if len(groups) == 1:
        x = tokens.values.reshape(tokens.batch_size, tokens.lengths[0], tokens.dim)
        for block in blocks:
            x = block(x)
        return tokens.with_values(x.reshape(-1, tokens.dim))
    out = torch.empty_like(tokens.values)
    for length, samples in groups.items():
        rows = tokens.index_of_samples(samples)
        x = tokens.values.index_select(0, rows).reshape(len(samples), length, tokens.dim)
        for block in blocks:
            x = block(x)
        out.index_copy_(0, rows, x.reshape(-1, tokens.dim))
    return tokens.with_values(out)


def _run_packed(blocks: Sequence[nn.Module], tokens: RaggedTokens) -> RaggedTokens:
    if tokens.uniform:  # one group: no rows to gather
        groups = [(tokens.lengths[0], None, tokens.batch_size)]
    else:
        groups = [(length, tokens.index_of_samples(samples), len(samples))
                  for length, samples in length_groups(tokens.lengths).items()]
    x = tokens.values
    for block in blocks:
        x = x + _packed_attention(block.attn, block.norm1(x), groups)
        x = x + block.mlp(block.norm2(x))
    return tokens.with_values(x)


def _packed_attention(attn: nn.Module, x: Tensor, groups: list[tuple[int, Tensor | None, int]]) -> Tensor:
    """Self-attention of `Attention` `attn` on packed rows `x (T, D)`, within each sample."""
    heads, head_dim = attn.num_heads, attn.head_dim
    qkv = attn.qkv(x)
    if len(groups) == 1:
        length, _, count = groups[0]
        mixed = _dense_attention(qkv.reshape(count, length, 3, heads, head_dim))
        return attn.proj(mixed.reshape(-1, heads * head_dim))
    mixed = None  # allocated in the attention's dtype, which autocast may lower below x's
    for length, rows, count in groups:
        part = qkv.index_select(0, rows).reshape(count, length, 3, heads, head_dim)
        attended = _dense_attention(part).reshape(-1, heads * head_dim)
        if mixed is None:
            mixed = attended.new_empty(x.shape[0], heads * head_dim)
        mixed.index_copy_(0, rows, attended)
    return attn.proj(mixed)


def _dense_attention(qkv: Tensor) -> Tensor:
    """`(b, L, 3, H, d) -> (b, L, H, d)` attention within each of the `b` samples."""
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2)


def executed_flops(blocks: Sequence[nn.Module], lengths: Sequence[int], strategy: TokenBatching | str) -> list[int]:
    """Per-sample FLOPs `run_blocks` executes: each sample's own tokens for `PACK` and
    `BUCKET`; the longest sample's for `PAD` (padding costs the same as a real token)."""
    strategy = parse_token_batching(strategy)
    longest = max(lengths)
    return [sum(block.flops(longest if strategy is TokenBatching.PAD else n) for block in blocks)
            for n in lengths]
