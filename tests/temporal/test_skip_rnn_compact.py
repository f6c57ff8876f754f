"""Skip-RNN compact execution at batch > 1: the host-side update schedule, the in-place
state buffers and the fused cell ops give the masked decisions, states and FLOPs.

States are bit for bit equal where every step runs the whole batch or nobody; where a
step runs some rows only, the matrix products on fewer rows may round differently (a
few ulps), so those states are compared with `assert_close`."""
import math

import pytest
import torch

from dynamicnets.flops import counted_flops
from dynamicnets.layers.skip_rnn import SkipGRU, SkipLSTM

CELLS = {"lstm": SkipLSTM, "gru": SkipGRU}


def layer(kind: str, bias: float = 0.0, hidden: int = 13, dtype=torch.float32):
    torch.manual_seed(0)
    return CELLS[kind](3, hidden, update_bias_init=bias, dtype=dtype).eval()


def sequences(batch: int, steps: int = 30, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, steps, 3, generator=g) * 2).to(dtype)


def given(pattern: str, batch: int, steps: int = 30) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if pattern == "random":
        return (torch.rand(batch, steps, generator=g) > 0.5).float()
    if pattern == "all_on":
        return torch.ones(batch, steps)
    if pattern == "all_off":
        return torch.zeros(batch, steps)
    if pattern == "same_per_step":  # every sample takes the same decision, nobody at odd steps
        return (torch.rand(1, steps, generator=g) > 0.5).float().mul(torch.arange(steps) % 2 == 0).expand(batch, -1)
    raise ValueError(pattern)


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("batch", [2, 9])
@pytest.mark.parametrize("pattern", ["random", "all_on", "all_off", "same_per_step"])
def test_given_updates_compact_equals_masked(kind, batch, pattern):
    rnn, x, updates = layer(kind), sequences(batch), given(pattern, batch)
    with torch.no_grad():
        masked = rnn(x, execution="masked", updates=updates)
        compact = rnn(x, execution="compact", updates=updates)
    assert torch.equal(compact.updates, updates)
    if pattern == "random":
        torch.testing.assert_close(compact.hidden, masked.hidden)
    else:  # every step runs the whole batch or nobody: the same ops on the same rows
        assert torch.equal(compact.hidden, masked.hidden)
    assert torch.equal(compact.flops, updates.double().sum(1) * rnn.step_flops())


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("bias", [-2.0, -0.4, 0.0, 4.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gate_decisions_compact_equals_masked(kind, bias, dtype):
    rnn, x = layer(kind, bias, dtype=dtype), sequences(16, dtype=dtype)
    with torch.no_grad():
        masked = rnn(x, execution="masked")
        compact = rnn(x, execution="compact")
        singles = torch.cat([rnn(x[i : i + 1], execution="compact").updates for i in range(16)])
    assert torch.equal(compact.updates, masked.updates) and torch.equal(singles, masked.updates)
    torch.testing.assert_close(compact.hidden, masked.hidden)
    if bias < 4.0:  # a mixture: some samples update at a step, others skip it
        assert 0 < float(compact.updates.mean()) < 1


@pytest.mark.parametrize("kind", CELLS)
def test_the_threshold_is_applied_by_the_schedule(kind):
    rnn, x = layer(kind, bias=0.3), sequences(8)
    with torch.no_grad():
        strict = rnn(x, execution="compact", threshold=0.85)
        loose = rnn(x, execution="compact")
        masked = rnn(x, execution="masked", threshold=0.85)
    assert torch.equal(strict.updates, masked.updates)
    torch.testing.assert_close(strict.hidden, masked.hidden)
    assert float(strict.updates.sum()) < float(loose.updates.sum())


def test_a_constant_delta_schedules_every_third_step_for_every_sample():
    rnn = layer("lstm")
    with torch.no_grad():
        rnn.update_gate.weight.zero_()
        rnn.update_gate.bias.fill_(math.log(0.2 / 0.8))  # du = 0.2: u~ 1, 0.2, 0.4, 0.6, 0.2, ...
        updates = rnn(sequences(5), execution="compact").updates
    assert torch.equal(updates, (torch.arange(30) % 3 == 0).float().expand(5, 30))


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("decisions", ["gate", "given"])
def test_compact_per_sample_flops_are_what_the_flop_counter_counts(kind, decisions):
    rnn, x = layer(kind, bias=-0.4), sequences(11)
    updates = given("random", 11) if decisions == "given" else None
    with torch.no_grad():
        out = rnn(x, execution="compact", updates=updates)
    assert 0 < float(out.updates.mean()) < 1
    assert counted_flops(rnn, x, execution="compact", updates=updates) == pytest.approx(float(out.flops.sum()))
    assert torch.equal(out.flops, out.updates.double().sum(1) * rnn.step_flops())


@pytest.mark.parametrize("kind", CELLS)
def test_compact_with_autograd_on_writes_out_of_place_and_gives_the_cell_a_gradient(kind):
    rnn, x = layer(kind, bias=-0.4), sequences(6)
    with torch.no_grad():
        reference = rnn(x, execution="compact")
    out = rnn(x, execution="compact")
    assert torch.equal(out.hidden, reference.hidden) and out.hidden.requires_grad
    out.hidden.sum().backward()
    assert rnn.cell.weight_hh.grad.abs().sum() > 0


def test_repeated_calls_do_not_share_state_buffers():
    rnn, x = layer("lstm", bias=-0.4), sequences(6)
    with torch.no_grad():
        first = rnn(x, execution="compact")
        kept = first.hidden.clone()
        rnn(x * 2, execution="compact")
    assert torch.equal(first.hidden, kept)


def test_bfloat16_decides_with_tensor_ops_and_takes_the_masked_decisions():
    rnn, x = layer("gru", bias=-0.4, dtype=torch.bfloat16), sequences(6, dtype=torch.bfloat16)
    with torch.no_grad():
        masked, compact = rnn(x, execution="masked"), rnn(x, execution="compact")
    assert torch.equal(compact.updates, masked.updates) and 0 < float(compact.updates.float().mean()) < 1
    torch.testing.assert_close(compact.hidden, masked.hidden)
