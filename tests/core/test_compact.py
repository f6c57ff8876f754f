"""The compact primitives every compact path is built from, and the execution vocabulary."""
import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.compact import (
    add_rows,
    assemble_rows,
    gather_rows,
    group_rows,
    rows_where,
    run_on_rows,
    scatter_rows,
)
from dynamicnets.execution import Execution, parse_execution, resolve_execution, supported_executions


def test_gather_and_scatter_keep_channels_last():
    x = torch.randn(6, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    rows = rows_where(torch.tensor([1, 0, 1, 0, 0, 1]))
    assert rows.tolist() == [0, 2, 5]
    part = gather_rows(x, rows)
    assert part.is_contiguous(memory_format=torch.channels_last)
    out = scatter_rows(x, rows, part * 2)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out[rows], x[rows] * 2) and torch.equal(out[[1, 3, 4]], x[[1, 3, 4]])
    assert not torch.equal(out, x)  # a copy unless asked otherwise


def test_scatter_inplace_only_without_autograd():
    x = torch.zeros(3, 2)
    rows = torch.tensor([1])
    with torch.no_grad():
        assert scatter_rows(x, rows, torch.ones(1, 2), inplace=True) is x
    y = torch.zeros(3, 2)
    assert scatter_rows(y, rows, torch.ones(1, 2), inplace=True) is not y  # grad mode: a copy


def test_add_rows_accumulates_repeated_rows():
    out = add_rows(torch.zeros(3), torch.tensor([0, 2, 0]), torch.tensor([1.0, 2.0, 3.0]))
    assert out.tolist() == [4.0, 0.0, 2.0]


def test_gather_rows_walks_nested_states():
    state = [torch.arange(4.0), (torch.arange(8.0).view(4, 2),)]
    picked = gather_rows(state, torch.tensor([3, 1]))
    assert picked[0].tolist() == [3.0, 1.0] and picked[1][0].tolist() == [[6.0, 7.0], [2.0, 3.0]]


def test_run_on_rows_runs_only_what_is_kept():
    calls = []

    def double(t):
        calls.append(t.shape[0])
        return t * 2

    x = torch.arange(4.0).view(4, 1)
    out = run_on_rows(double, x, torch.tensor([True, False, True, False]))
    assert out.flatten().tolist() == [0.0, 1.0, 4.0, 3.0]
    assert run_on_rows(double, x, torch.zeros(4, dtype=torch.bool)) is x
    run_on_rows(double, x, torch.ones(4, dtype=torch.bool))
    assert calls == [2, 4]


def test_group_rows_and_assemble_restore_the_batch_order():
    choice = torch.tensor([2, 0, 2, 1, 0])
    groups = list(group_rows(choice, 4))
    assert [g for g, _ in groups] == [0, 1, 2]  # group 3 chosen by nobody: not run
    pieces = [(rows, (rows.float() * 10 + g).view(-1, 1)) for g, rows in groups]
    out = assemble_rows(pieces, 5)
    assert out.flatten().tolist() == [2.0, 10.0, 22.0, 31.0, 40.0]


def test_execution_vocabulary():
    assert resolve_execution(None, training=True) is Execution.MASKED
    assert resolve_execution(None, training=False) is Execution.COMPACT
    assert resolve_execution("compact", training=True) is Execution.COMPACT
    assert Execution.MASKED == "masked"
    with pytest.raises(ConfigError, match="'masked', 'compact'"):
        parse_execution("slice")
    with pytest.raises(ConfigError, match="execution must be one of"):
        parse_execution(Execution.INDEXED)  # only slimmable layers offer it


def test_execution_protocol_lists_what_a_model_supports():
    import dynamicnets as dn

    assert supported_executions(dn.create_model("resnet20")) == ()
    assert Execution.COMPACT in supported_executions(dn.create_model("skipnet_resnet", depth=20))
