"""The number-prediction task of LSTM-Jump (Yu, Lee, Le, "Learning to Skim Text", ACL 2017):
a sequence of tokens whose first token says where the answer is.

Each sample is `length` tokens drawn from `0..vocab-1`. The first token `x_0` is an index
in `1..min(vocab, length) - 1`; the label is the token found there, `y = x_{x_0}`. The
other tokens are uniform distractors. A reader that jumps straight from `x_0` to
`x_{x_0}` needs two tokens; a plain LSTM reads all `length`.

Samples are one-hot signals `(vocab, length)` (stored as uint8, read as float 0/1), so
the recurrent classifiers read them as `length` steps of `vocab` features. Generated from a
seeded `torch.Generator`: the same options always give the same data set.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .spec_options import int_option, split_options

_KEYS = ("length", "vocab", "seed", "size")


class JumpTaskOptions(NamedTuple):
    """How to build the task (parsed from ``?length=64&vocab=16&seed=0&size=10000``).

    Attributes:
        length: tokens per sequence, at least 2.
        vocab: distinct tokens (and classes), at least 2.
        seed: seed of the generator.
        size: number of sequences, at least 2 (one for training, one for validation).
    """

    length: int = 64
    vocab: int = 16
    seed: int = 0
    size: int = 10000


def parse_options(query: str) -> JumpTaskOptions:
    """Parse ``length=64&vocab=16&seed=0&size=10000`` (every key optional).

    Raises:
        DataError: naming the option at fault (an unknown key, a missing value, a number
            out of range).
    """
    values = split_options("jump_task", query, _KEYS)
    defaults = JumpTaskOptions()
    return JumpTaskOptions(
        length=int_option("jump_task", "length", values.get("length", str(defaults.length)), 2),
        vocab=int_option("jump_task", "vocab", values.get("vocab", str(defaults.vocab)), 2),
        seed=int_option("jump_task", "seed", values.get("seed", str(defaults.seed)), 0),
        size=int_option("jump_task", "size", values.get("size", str(defaults.size)), 2),
    )


def generate_tokens(options: JumpTaskOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """The token sequences and their labels.

    Args:
        options: length, vocabulary, seed and size.

    Returns:
        tokens `(size, length)` int64 in `0..vocab-1` and labels `(size,)` int64, with
        `tokens[:, 0]` in `1..min(vocab, length) - 1` and `labels[n] = tokens[n, tokens[n, 0]]`.
    """
    generator = torch.Generator().manual_seed(options.seed)
    size, length, vocab = options.size, options.length, options.vocab
    tokens = torch.randint(0, vocab, (size, length), generator=generator)
    tokens[:, 0] = torch.randint(1, min(vocab, length), (size,), generator=generator)
    labels = tokens.gather(1, tokens[:, :1]).squeeze(1)
    return tokens, labels


def one_hot_signals(tokens: torch.Tensor, vocab: int) -> torch.Tensor:
    """`(N, L)` int64 tokens -> `(N, vocab, L)` uint8 one-hot signals."""
    return torch.nn.functional.one_hot(tokens, vocab).to(torch.uint8).transpose(1, 2).contiguous()
