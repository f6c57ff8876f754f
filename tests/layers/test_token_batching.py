"""Ragged token batches and the three ways to run blocks on them: `RaggedTokens` round trips
and errors; `run_blocks` with pad, pack and bucket equals running every sample alone on its
own tokens, equals the masked (training) path for the same hard decisions, and costs exactly
what `executed_flops` says."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.layers.ragged_tokens import RaggedTokens
from dynamicnets.layers.token_batching import (TokenBatching, executed_flops, length_groups,
                                               parse_token_batching, run_blocks)
from dynamicnets.layers.transformer import TransformerBlock

DIM, HEADS = 16, 2
STRATEGIES = ("pad", "pack", "bucket")


def random_keep(batch: int, tokens: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """`(B, N)` bool with the class token (column 0) always kept."""
    keep = torch.rand(batch, tokens, generator=generator) < p
    keep[:, 0] = True
    return keep


@pytest.fixture(scope="module")
def blocks() -> list[TransformerBlock]:
    torch.manual_seed(0)
    return [TransformerBlock(DIM, HEADS, mlp_ratio=2.0).eval() for _ in range(2)]


def per_sample_reference(blocks, tokens: RaggedTokens) -> torch.Tensor:
    """Each sample alone, as a batch of one, on its own tokens."""
    outs = []
    with torch.no_grad():
        for part in tokens.split():
            x = part[None]
            for block in blocks:
                x = block(x)
            outs.append(x[0])
    return torch.cat(outs)


# --- RaggedTokens ----------------------------------------------------------------------------


def test_from_dense_round_trip():
    x = torch.randn(3, 5, 4)
    ragged = RaggedTokens.from_dense(x)
    assert ragged.lengths == (5, 5, 5) and ragged.batch_size == 3 and ragged.dim == 4
    padded, valid = ragged.to_padded()
    torch.testing.assert_close(padded, x)
    assert bool(valid.all())
    torch.testing.assert_close(ragged.first_tokens(), x[:, 0])
    torch.testing.assert_close(ragged.mean_tokens(), x.mean(1))


def test_from_mask_round_trips():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, 3, generator=gen)
    keep = random_keep(4, 7, gen)
    ragged = RaggedTokens.from_mask(x, keep)
    assert ragged.lengths == tuple(keep.sum(1).tolist())
    assert ragged.offsets().tolist() == [0, *torch.tensor(ragged.lengths).cumsum(0).tolist()]
    assert ragged.sample_ids().tolist() == [i for i, n in enumerate(ragged.lengths) for _ in range(n)]
    for i, part in enumerate(ragged.split()):
        torch.testing.assert_close(part, x[i][keep[i]])
    padded, valid = ragged.to_padded()
    assert padded.shape == (4, max(ragged.lengths), 3)
    assert valid.sum(1).tolist() == list(ragged.lengths)
    torch.testing.assert_close(padded[valid], x[keep])
    assert bool((padded[~valid] == 0).all())
    longer, valid_longer = ragged.to_padded(9)
    assert longer.shape == (4, 9, 3)
    torch.testing.assert_close(longer[valid_longer], x[keep])
    torch.testing.assert_close(ragged.first_tokens(), x[:, 0])
    means = torch.stack([x[i][keep[i]].mean(0) for i in range(4)])
    torch.testing.assert_close(ragged.mean_tokens(), means)
    rows = ragged.index_of_samples([2, 0])
    torch.testing.assert_close(ragged.values[rows], torch.cat([x[2][keep[2]], x[0][keep[0]]]))
    assert ragged.index_of_samples([]).numel() == 0
    doubled = ragged.with_values(ragged.values * 2)
    assert doubled.lengths == ragged.lengths
    torch.testing.assert_close(doubled.values, 2 * ragged.values)


def test_select_equals_from_mask_of_both_decisions():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 9, 2, generator=gen)
    first = random_keep(5, 9, gen, p=0.7)
    second = random_keep(5, 9, gen, p=0.6) & first
    ragged = RaggedTokens.from_mask(x, first)
    selected = ragged.select(second[first])
    direct = RaggedTokens.from_mask(x, second)
    assert selected.lengths == direct.lengths
    torch.testing.assert_close(selected.values, direct.values)
    torch.testing.assert_close(selected.first_tokens(), x[:, 0])


def test_zero_token_samples_are_clear_errors():
    x = torch.randn(3, 4, 2)
    keep = torch.ones(3, 4, dtype=torch.bool)
    keep[1] = False
    with pytest.raises(ConfigError, match=r"samples \[1\] keep zero tokens"):
        RaggedTokens.from_mask(x, keep)
    ragged = RaggedTokens.from_dense(x)
    rows = torch.ones(12, dtype=torch.bool)
    rows[8:] = False
    with pytest.raises(ConfigError, match=r"samples \[2\] would keep zero tokens"):
        ragged.select(rows)
    with pytest.raises(ConfigError, match="at least one token"):
        RaggedTokens(torch.randn(3, 2), (3, 0))


def test_bad_layouts_are_clear_errors():
    with pytest.raises(ConfigError, match=r"values must be \(T, D\)"):
        RaggedTokens(torch.randn(2, 3, 4), (2,))
    with pytest.raises(ConfigError, match="lengths sum to 4 but values hold 5"):
        RaggedTokens(torch.randn(5, 2), (2, 2))
    with pytest.raises(ConfigError, match="keep must be bool"):
        RaggedTokens.from_mask(torch.randn(2, 3, 4), torch.ones(2, 3))
    ragged = RaggedTokens(torch.randn(5, 2), (2, 3))
    with pytest.raises(ConfigError, match=r"keep must be bool \(5,\)"):
        ragged.select(torch.ones(4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="length 2 is shorter than the longest sample"):
        ragged.to_padded(2)


# --- strategies ------------------------------------------------------------------------------


def test_parse_token_batching():
    assert parse_token_batching("pack") is TokenBatching.PACK
    assert parse_token_batching(TokenBatching.PAD) is TokenBatching.PAD
    assert TokenBatching.BUCKET == "bucket" and str(TokenBatching.BUCKET) == "bucket"
    with pytest.raises(ConfigError, match="'pad', 'pack', 'bucket'.*'padded'"):
        parse_token_batching("padded")
    with pytest.raises(ConfigError, match="token batching"):
        run_blocks([], RaggedTokens.from_dense(torch.randn(1, 2, 3)), "nope")


def test_length_groups():
    assert length_groups([3, 5, 3, 1, 5]) == {3: [0, 2], 5: [1, 4], 1: [3]}
    assert list(length_groups([2, 1, 2])) == [2, 1]  # in order of first appearance


CASES = {  # name -> (batch, tokens, keep probability)
    "random": (6, 11, 0.55),
    "batch1": (1, 9, 0.5),
    "all_equal": (4, 8, 1.0),
    "one_token_samples": (5, 6, 0.0),  # only the class token
    "mostly_distinct": (9, 20, 0.5),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_equal_each_sample_alone(blocks, case, strategy):
    batch, tokens, p = CASES[case]
    gen = torch.Generator().manual_seed(list(CASES).index(case))
    x = torch.randn(batch, tokens, DIM, generator=gen)
    ragged = RaggedTokens.from_mask(x, random_keep(batch, tokens, gen, p))
    if case in ("random", "mostly_distinct"):
        assert len(length_groups(ragged.lengths)) > 2  # several groups, a padded batch
    before = ragged.values.clone()
    with torch.no_grad():
        out = run_blocks(blocks, ragged, strategy)
    assert out.lengths == ragged.lengths
    torch.testing.assert_close(out.values, per_sample_reference(blocks, ragged), atol=1e-5, rtol=1e-5)
    assert torch.equal(ragged.values, before)  # the input is not changed in place


def test_equal_lengths_run_as_one_dense_batch(blocks):
    x = torch.randn(3, 7, DIM)
    with torch.no_grad():
        dense = x
        for block in blocks:
            dense = block(dense)
        for strategy in STRATEGIES:
            out = run_blocks(blocks, RaggedTokens.from_dense(x), strategy)
            torch.testing.assert_close(out.values.reshape(3, 7, DIM), dense, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_compact_equals_masked_for_the_same_decisions(blocks, strategy):
    """The training path (keep masking, static shapes) and the compact path (kept tokens only)
    give the kept tokens the same outputs."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 10, DIM, generator=gen)
    keep = random_keep(4, 10, gen)
    with torch.no_grad():
        masked = x
        for block in blocks:
            masked = block(masked, keep=keep.float())
        compact = run_blocks(blocks, RaggedTokens.from_mask(x, keep), strategy)
    torch.testing.assert_close(compact.values, masked[keep], atol=1e-5, rtol=1e-5)


def test_no_blocks_returns_the_tokens(blocks):
    ragged = RaggedTokens(torch.randn(5, DIM), (2, 3))
    for strategy in STRATEGIES:
        assert run_blocks([], ragged, strategy) is ragged


@pytest.mark.parametrize("lengths", [(4, 9, 1, 9, 6), (5,), (3, 3, 3)])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_counted_flops_equal_executed_flops(blocks, lengths, strategy):
    ragged = RaggedTokens(torch.randn(sum(lengths), DIM), lengths)
    expected = executed_flops(blocks, lengths, strategy)
    assert counted_flops(run_blocks, blocks, ragged, strategy) == sum(expected)
    own = [sum(b.flops(n) for b in blocks) for n in lengths]
    if strategy == "pad":
        assert expected == [sum(b.flops(max(lengths)) for b in blocks)] * len(lengths)
    else:
        assert expected == own
