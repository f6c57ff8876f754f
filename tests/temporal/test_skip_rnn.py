"""Skip-RNN: state-update skipping with compact execution at inference."""
import math

import pytest
import torch

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.layers.skip_rnn import SkipLSTM
from dynamicnets.flops import counted_flops


def skip_model(bias: float = -0.5, **kwargs):
    torch.manual_seed(0)
    return create_model("skip_lstm_classifier", hidden=12, update_bias_init=bias, **kwargs)


def signals(batch: int, length: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, length, generator=g) * torch.rand(batch, 1, 1, generator=g) * 3


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("bias", [-1.0, 0.0, 3.0])
def test_compact_takes_the_masked_decisions_and_states(batch, bias):
    model, x = skip_model(bias).eval(), signals(batch)
    with torch.no_grad():
        masked, compact = model(x, execution="masked"), model(x, execution="compact")
    assert torch.equal(masked.decisions["gates"], compact.decisions["gates"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.decisions["compact_flops"], masked.decisions["compact_flops"])
    assert torch.equal(compact.flops, compact.decisions["compact_flops"])
    assert (masked.flops >= compact.flops).all()


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("pattern", ["all_off", "all_on", "random", "first_only"])
def test_given_updates_compact_equals_masked(pattern, batch):
    model, x = skip_model().eval(), signals(batch)
    updates = {"all_off": torch.zeros(batch, 24), "all_on": torch.ones(batch, 24),
               "random": (torch.rand(batch, 24, generator=torch.Generator().manual_seed(3)) > 0.5).float(),
               "first_only": torch.eye(24)[:1].expand(batch, 24)}[pattern]
    with torch.no_grad():
        masked = model(x, execution="masked", updates=updates)
        compact = model(x, execution="compact", updates=updates)
    assert torch.equal(compact.decisions["gates"], updates)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    if pattern == "all_off":  # the state never left zero: the head sees h = 0
        torch.testing.assert_close(compact.logits, model.head.bias.expand(batch, -1))


def test_every_step_updating_is_the_static_lstm_with_the_same_weights():
    skip = skip_model(bias=5.0).eval()
    static = create_model("lstm_classifier", hidden=12).eval()
    static.cell.load_state_dict(skip.rnn.cell.state_dict())
    static.head.load_state_dict(skip.head.state_dict())
    x = signals(4)
    with torch.no_grad():
        out = skip(x, updates=torch.ones(4, 24))
        torch.testing.assert_close(out.logits, static(x).logits)
        assert out.flops[0].item() == static(x).flops[0].item() + 24 * 2 * 12  # plus the update gate's dot


def test_the_cell_runs_only_on_the_samples_that_update():
    model, x = skip_model(bias=-1.0).eval(), signals(6)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        out = model(x, execution="compact")
    rows = [e.input_shapes[0][0] for e in prof.events() if e.name == "aten::lstm_cell"]  # the fused cell op
    gates = out.decisions["gates"]
    assert 0 < gates.mean() < 1
    assert sum(rows) == int(gates.sum())  # one row per update, none per skipped step
    assert len(rows) == int((gates.sum(0) > 0).sum())  # a step nobody updates: no cell call


@pytest.mark.parametrize("execution", ["masked", "compact"])
def test_per_sample_flops_match_the_flop_counter(execution):
    model, x = skip_model(bias=-1.0).eval(), signals(5)
    with torch.no_grad():
        out = model(x, execution=execution)
    if execution == "masked":
        assert counted_flops(model, x, execution="masked") == pytest.approx(float(out.flops.sum()))
    for i in range(5):  # a sample alone costs what its own flops say
        assert counted_flops(model, x[i : i + 1], execution=execution) == pytest.approx(float(out.flops[i]))


@pytest.mark.parametrize("batch", [1, 2])
def test_update_probability_arithmetic_with_a_constant_delta(batch):
    """`du = 0.2` at every step: u~ goes 1 (update), 0.2, 0.4, 0.6 (update), 0.2, ... so
    the state is updated at steps 0, 3, 6, ..."""
    model = skip_model().eval()
    with torch.no_grad():
        model.rnn.update_gate.weight.zero_()
        model.rnn.update_gate.bias.fill_(math.log(0.2 / 0.8))
        gates = model(signals(batch), execution="compact").decisions["gates"]
        masked = model(signals(batch), execution="masked").decisions["gates"]
    expected = torch.tensor([1.0 if t % 3 == 0 else 0.0 for t in range(24)])
    assert torch.equal(gates, expected.expand(batch, 24)) and torch.equal(masked, gates)


def test_masked_training_gives_the_update_gate_a_gradient_and_the_budget_lowers_updates():
    model, x = skip_model(bias=1.0, budget_weight=0.1).train(), signals(16)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert set(out.aux_losses) == {"budget"}
    (torch.nn.functional.cross_entropy(out.logits, y) + out.aux_loss()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.rnn.update_gate.bias.grad.abs() > 0
    before = float(out.decisions["executed_fraction"].mean())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(30):  # the budget alone: fewer updates
        optimizer.zero_grad()
        model(x).aux_loss().backward()
        optimizer.step()
    assert float(model(x).decisions["executed_fraction"].mean()) < before


def test_images_are_read_row_by_row():
    model = skip_model(row_width=8, length=8)
    x = torch.randn(3, 1, 8, 8)
    assert model.default_input_shape == (1, 8, 8)
    out = model.eval()(x)
    assert out.decisions["gates"].shape == (3, 8)


def test_bad_inputs_raise_config_errors():
    model = skip_model()
    with pytest.raises(ConfigError, match=r"\(B, 1, L\)"):
        model(torch.randn(2, 3, 10))
    with pytest.raises(ConfigError, match="updates must have shape"):
        model(signals(2), updates=torch.ones(2, 5))
    with pytest.raises(ConfigError, match="execution"):
        model(signals(2), execution="sparse")
    with pytest.raises(ConfigError, match="budget_weight"):
        create_model("skip_lstm_classifier", budget_weight=-1.0)
    with pytest.raises(ConfigError, match="row_width"):
        create_model("skip_lstm_classifier", row_width=0)
    with pytest.raises(ConfigError, match=r"\(B, 1, H, 8\)"):
        create_model("skip_lstm_classifier", row_width=8)(torch.randn(2, 1, 8, 9))
    with pytest.raises(ConfigError, match="input_size"):
        SkipLSTM(0, 4)


def test_one_sample_in_float64_takes_the_masked_decisions():
    model, x = skip_model(bias=-0.8).double().eval(), signals(3).double()
    with torch.no_grad():
        masked = model(x, execution="masked")
        singles = [model(x[i : i + 1], execution="compact") for i in range(3)]
    assert torch.equal(torch.cat([s.decisions["gates"] for s in singles]), masked.decisions["gates"])
    assert singles[0].logits.dtype == torch.float64
    torch.testing.assert_close(torch.cat([s.logits for s in singles]), masked.logits)


def test_learns_digits_row_by_row_and_the_budget_trades_updates_for_accuracy(fit_digits):
    """Digits read as 8 rows of 8 pixels (about a second per run): without a budget nearly
    every row updates the state; the budget makes it skip rows and keep most accuracy."""
    def train_on_digits(budget_weight: float):
        torch.manual_seed(0)
        return fit_digits(create_model("skip_lstm_classifier", row_width=8, length=8, hidden=32,
                                       budget_weight=budget_weight))

    free_accuracy, free_updates = train_on_digits(0.0)
    thrifty_accuracy, thrifty_updates = train_on_digits(0.05)
    assert free_accuracy > 0.85 and thrifty_accuracy > 0.8
    assert thrifty_updates < free_updates - 0.05 and thrifty_updates < 0.95
