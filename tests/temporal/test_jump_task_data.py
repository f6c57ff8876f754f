"""The `jump_task` data spec: LSTM-Jump's number prediction, generated from a seed."""
import pytest
import torch

from dynamicnets.data import load_data, parse_spec
from dynamicnets.data.jump_task import JumpTaskOptions, generate_tokens, parse_options
from dynamicnets.errors import DataError


def test_the_label_is_the_token_the_first_token_points_at():
    bundle = load_data("jump_task?length=20&vocab=8&size=200&seed=3", val_size=0.25, seed=0)
    assert bundle.input_shape == (8, 20) and bundle.num_classes == 8 and bundle.test is None
    assert len(bundle.train) == 150 and len(bundle.val) == 50
    for i in range(len(bundle.val)):
        x, y = bundle.val[i]
        assert x.dtype == torch.float32 and torch.equal(x.sum(dim=0), torch.ones(20))  # one-hot per step
        tokens = x.argmax(dim=0)
        assert 1 <= tokens[0] <= 7
        assert int(y) == int(tokens[tokens[0]])


def test_an_index_never_points_past_the_sequence():
    tokens, labels = generate_tokens(JumpTaskOptions(length=5, vocab=30, seed=0, size=500))
    assert tokens[:, 0].min() == 1 and tokens[:, 0].max() == 4  # min(vocab, length) - 1
    assert tokens.max() == 29 and tokens.min() == 0
    assert torch.equal(labels, tokens[torch.arange(500), tokens[:, 0]])


def test_same_seed_same_data_and_split_other_seed_other_data():
    a = load_data("jump_task?length=12&vocab=6&size=100&seed=1", val_size=0.2, seed=0)
    b = load_data("jump_task?seed=1&size=100&vocab=6&length=12", val_size=0.2, seed=0)
    c = load_data("jump_task?length=12&vocab=6&size=100&seed=2", val_size=0.2, seed=0)
    assert torch.equal(a.train.indices, b.train.indices) and torch.equal(a.val.indices, b.val.indices)
    assert torch.equal(a.train.samples, b.train.samples) and torch.equal(a.train.labels, b.train.labels)
    assert not torch.equal(a.train.samples, c.train.samples)
    other_split = load_data("jump_task?length=12&vocab=6&size=100&seed=1", val_size=0.2, seed=1)
    assert not torch.equal(a.val.indices, other_split.val.indices)


def test_defaults():
    assert parse_options("") == JumpTaskOptions(length=64, vocab=16, seed=0, size=10000)
    assert parse_spec("jump_task") == ("jump_task", None)
    assert parse_spec("jump_task?length=30") == ("jump_task", None)


@pytest.mark.parametrize("spec, key", [
    ("jump_task?length=1", "length=1"),
    ("jump_task?vocab=1", "vocab=1"),
    ("jump_task?size=1", "size=1"),
    ("jump_task?seed=-1", "seed=-1"),
    ("jump_task?length=ten", "length=ten"),
    ("jump_task?canvas=60", "canvas=60"),
    ("jump_task?length", "length"),
])
def test_bad_options_name_the_option(spec, key):
    with pytest.raises(DataError, match=f"jump_task option '{key}'"):
        parse_spec(spec)


def test_a_path_or_options_where_none_are_taken():
    with pytest.raises(DataError, match="takes no path"):
        load_data("jump_task:some/dir")
    with pytest.raises(DataError, match="takes no options"):
        load_data("digits?length=3")
