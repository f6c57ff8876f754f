"""Skip-GRU: the Skip-RNN skip logic over a GRU cell."""
import pytest
import torch

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import flop_counter, gru_cell_flops
from dynamicnets.layers.skip_rnn import SkipGRU


def gru_model(bias: float = -0.5, **kwargs):
    torch.manual_seed(0)
    return create_model("skip_gru_classifier", hidden=12, update_bias_init=bias, **kwargs)


def signals(batch: int, length: int = 20, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, length, generator=g) * torch.rand(batch, 1, 1, generator=g) * 3


def test_gru_cell_flops_is_what_the_flop_counter_counts():
    cell = torch.nn.GRUCell(5, 7)
    with torch.no_grad(), flop_counter() as counter:
        cell(torch.randn(3, 5), torch.randn(3, 7))
    assert counter.get_total_flops() == 3 * gru_cell_flops(cell) == 3 * 2 * 3 * 7 * (5 + 7)


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("bias", [-1.0, 0.0, 3.0])
def test_compact_takes_the_masked_decisions_and_states(batch, bias):
    model, x = gru_model(bias).eval(), signals(batch)
    with torch.no_grad():
        masked, compact = model(x, execution="masked"), model(x, execution="compact")
    assert torch.equal(masked.decisions["gates"], compact.decisions["gates"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(compact.flops, compact.decisions["compact_flops"])
    assert (masked.flops >= compact.flops).all()


@pytest.mark.parametrize("batch", [1, 5])
def test_given_updates_compact_equals_masked(batch):
    model, x = gru_model().eval(), signals(batch)
    updates = (torch.rand(batch, 20, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    with torch.no_grad():
        masked = model(x, execution="masked", updates=updates)
        compact = model(x, execution="compact", updates=updates)
    assert torch.equal(compact.decisions["gates"], updates)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)


def test_compact_runs_the_cell_only_on_the_updating_samples():
    model, x = gru_model(bias=-1.0).eval(), signals(6)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        gates = model(x, execution="compact").decisions["gates"]
    rows = [e.input_shapes[0][0] for e in prof.events() if e.name == "aten::gru_cell"]
    assert 0 < gates.mean() < 1
    assert sum(rows) == int(gates.sum()) and len(rows) == int((gates.sum(0) > 0).sum())


def test_per_sample_flops_are_what_the_flop_counter_counts_for_the_compact_batch():
    model, x = gru_model(bias=-1.0).eval(), signals(5)
    with torch.no_grad():
        out = model(x, execution="compact")
        with flop_counter() as counter:
            model(x, execution="compact")
    assert 0 < out.decisions["gates"].mean() < 1
    assert counter.get_total_flops() == pytest.approx(float(out.flops.sum()))
    step = gru_cell_flops(model.rnn.cell) + 12 * 2
    assert torch.equal(out.flops, out.decisions["gates"].double().sum(1) * step + 12 * 10 * 2)


def test_training_gives_every_parameter_a_gradient():
    model, x = gru_model(bias=-1.0, budget_weight=0.1).train(), signals(16)  # some steps skipped
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert set(out.aux_losses) == {"budget"}
    assert 0 < out.decisions["executed_fraction"].mean() < 1
    (torch.nn.functional.cross_entropy(out.logits, y) + out.aux_loss()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_state_dict_names_the_gru_cell_and_the_gate():
    assert set(gru_model().state_dict()) == {
        "rnn.cell.weight_ih", "rnn.cell.weight_hh", "rnn.cell.bias_ih", "rnn.cell.bias_hh",
        "rnn.update_gate.weight", "rnn.update_gate.bias", "head.weight", "head.bias"}


def test_bad_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match=r"x must have at least one step"):
        SkipGRU(3, 4)(torch.randn(2, 0, 3))
    with pytest.raises(ConfigError, match=r"x must have at least one step"):
        gru_model().eval()(torch.randn(2, 1, 0))
    with pytest.raises(ConfigError, match="length"):
        create_model("skip_gru_classifier", length=0)
    with pytest.raises(ConfigError, match="SkipGRU: input_size"):
        SkipGRU(0, 4)
    with pytest.raises(ConfigError, match="skip_gru_classifier.*budget_weight"):
        create_model("skip_gru_classifier", budget_weight=-1.0)
    with pytest.raises(ConfigError, match="skip_gru_classifier"):
        gru_model()(torch.randn(2, 3, 10))
