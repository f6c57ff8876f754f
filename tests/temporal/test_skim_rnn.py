"""Skim-RNN: a big LSTM cell reads, a small one skims; compact execution splits the batch."""
import math

import pytest
import torch

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops, linear_flops, lstm_cell_flops
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.layers.skim_rnn import SkimLSTM

STEPS, HIDDEN, SMALL = 20, 12, 3


def skim_model(bias: float = 0.0, **kwargs):
    """A random model whose choice layer reads with probability about `sigmoid(bias)`."""
    torch.manual_seed(0)
    model = create_model("skim_lstm_classifier", hidden=HIDDEN, small_hidden=SMALL, length=STEPS, **kwargs)
    with torch.no_grad():
        model.rnn.choice.bias.copy_(torch.tensor([bias, 0.0]))
    return model


def signals(batch: int, length: int = STEPS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, length, generator=g) * torch.rand(batch, 1, 1, generator=g) * 3


def forced(pattern: str, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if pattern == "all_read":
        return torch.ones(batch, STEPS)
    if pattern == "all_skim":
        return torch.zeros(batch, STEPS)
    if pattern == "random":
        return (torch.rand(batch, STEPS, generator=g) > 0.5).float()
    # whole steps alike (everybody reads / everybody skims) between mixed steps
    mixed = (torch.rand(batch, STEPS, generator=g) > 0.5).float()
    mixed[:, 0::3], mixed[:, 1::3] = 1.0, 0.0
    return mixed


@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("pattern", ["all_read", "all_skim", "random", "steps_alike"])
def test_given_choices_compact_equals_masked(pattern, batch):
    model, x = skim_model().eval(), signals(batch)
    choices = forced(pattern, batch)
    with torch.no_grad():
        masked = model(x, execution="masked", choices=choices)
        compact = model(x, execution="compact", choices=choices)
    assert torch.equal(compact.decisions["gates"], choices) and torch.equal(masked.decisions["gates"], choices)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.forward_features(x, execution="compact", choices=choices),
                               model.forward_features(x, execution="masked", choices=choices), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.flops, masked.decisions["compact_flops"], rtol=0, atol=0)


def test_compact_under_autograd_equals_masked_and_trains_both_cells():
    """With autograd on, compact execution writes into copies of the state (without, in
    place): the same result, and the chosen cells get gradients."""
    model, x = skim_model().eval(), signals(6)
    choices = forced("steps_alike", 6)
    compact = model(x, execution="compact", choices=choices)
    with torch.no_grad():
        masked = model(x, execution="masked", choices=choices)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    compact.logits.sum().backward()
    assert model.rnn.big.weight_hh.grad.abs().sum() > 0 and model.rnn.small.weight_hh.grad.abs().sum() > 0


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("bias", [-2.0, 0.0, 2.0])
def test_compact_takes_the_masked_decisions_in_eval(batch, bias):
    model, x = skim_model(bias).eval(), signals(batch)
    with torch.no_grad():
        masked, compact = model(x, execution="masked"), model(x, execution="compact")
    assert torch.equal(masked.decisions["gates"], compact.decisions["gates"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    assert (masked.flops > compact.flops).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_one_sample_at_a_time_takes_the_masked_decisions(dtype, threshold):
    """Alone, a sample's decisions are Python bools (no tensor op): the same as the batch's.
    The choice bias is shifted so that the read probabilities straddle the threshold."""
    model = skim_model(bias=math.log(threshold / (1 - threshold))).to(dtype).eval()
    x = signals(6).to(dtype)
    policy = GatePolicy((threshold,))
    with torch.no_grad():
        masked = model(x, execution="masked", policy=policy)
        singles = [model(x[i : i + 1], execution="compact", policy=policy) for i in range(6)]
    gates = torch.cat([s.decisions["gates"] for s in singles])
    assert torch.equal(gates, masked.decisions["gates"]) and 0 < gates.mean() < 1 and gates.dtype == dtype
    torch.testing.assert_close(torch.cat([s.logits for s in singles]), masked.logits)


def test_skimming_updates_only_the_first_small_dimensions():
    model, x = skim_model().eval(), signals(4)
    with torch.no_grad():
        h = model.forward_features(x, choices=torch.zeros(4, STEPS))  # the state starts at zero
        assert (h[:, SMALL:] == 0).all() and (h[:, :SMALL] != 0).all()
        # a skim step after a read keeps the last d - d' dimensions of the read step's state
        read_once = torch.zeros(4, STEPS)
        read_once[:, 0] = 1
        h_read = model.forward_features(x[..., :1], choices=read_once[:, :1])
        h_then_skim = model.forward_features(x, choices=read_once)
        assert torch.equal(h_then_skim[:, SMALL:], h_read[:, SMALL:])


def test_reading_every_step_is_the_static_lstm_with_the_same_weights():
    skim = skim_model().eval()
    static = create_model("lstm_classifier", hidden=HIDDEN, length=STEPS).eval()
    static.cell.load_state_dict(skim.rnn.big.state_dict())
    static.head.load_state_dict(skim.head.state_dict())
    x = signals(5)
    with torch.no_grad():
        out = skim(x, choices=torch.ones(5, STEPS))
        torch.testing.assert_close(out.logits, static(x).logits)
        assert out.flops[0].item() == static(x).flops[0].item() + STEPS * 2 * 2 * (1 + HIDDEN)  # + the choice layer


def test_each_cell_runs_once_per_step_on_its_own_rows():
    model, x = skim_model().eval(), signals(6)
    big_rows, small_rows = [], []
    model.rnn.big.register_forward_hook(lambda m, i, o: big_rows.append(i[0].shape[0]))
    model.rnn.small.register_forward_hook(lambda m, i, o: small_rows.append(i[0].shape[0]))
    choices = forced("steps_alike", 6)
    with torch.no_grad():
        model(x, execution="compact", choices=choices)
    assert sum(big_rows) == int(choices.sum()) and sum(small_rows) == int((1 - choices).sum())
    assert len(big_rows) == int((choices.sum(0) > 0).sum())  # a step nobody reads: no big-cell call
    assert len(small_rows) == int((choices.sum(0) < 6).sum())


@pytest.mark.parametrize("execution", ["masked", "compact"])
def test_per_sample_flops_match_the_flop_counter(execution):
    model, x = skim_model().eval(), signals(5)
    with torch.no_grad():
        out = model(x, execution=execution)
    gates = out.decisions["gates"]
    assert 0 < gates.mean() < 1
    assert counted_flops(model, x, execution=execution) == int(out.flops.sum())
    for i in range(5):  # a sample alone costs what its own flops say
        assert counted_flops(model, x[i : i + 1], execution=execution) == int(out.flops[i])
    rnn = model.rnn
    reads = gates.sum(1).double()
    expected = (reads * lstm_cell_flops(rnn.big) + (STEPS - reads) * lstm_cell_flops(rnn.small)
                + STEPS * linear_flops(rnn.choice) + linear_flops(model.head))
    torch.testing.assert_close(out.decisions["compact_flops"], expected)


def test_the_threshold_policy_trades_reads_for_flops():
    model, x = skim_model().eval(), signals(8)
    with torch.no_grad():
        reads = [model(x, policy=GatePolicy((t,))).decisions["executed_fraction"].mean().item()
                 for t in (0.0, 0.3, 0.5, 0.7, 1.0)]
        default = model(x).decisions["executed_fraction"].mean().item()
        prob = model(x).decisions["read_prob"]
    assert reads[0] == 1.0 and reads[-1] == 0.0 and reads == sorted(reads, reverse=True)
    assert default == reads[2] and prob.shape == (8, STEPS) and ((prob > 0) & (prob < 1)).all()
    with pytest.raises(ConfigError, match="thresholds"):
        model(x, policy=GatePolicy((0.5, 0.5)))


def test_masked_training_mixes_both_cells_and_the_skim_loss_lowers_reads():
    model, x = skim_model(bias=1.0, skim_weight=1.0).train(), signals(16)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert set(out.aux_losses) == {"skim"}
    (torch.nn.functional.cross_entropy(out.logits, y) + out.aux_loss()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        before = model.eval()(x).decisions["executed_fraction"].mean().item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(30):  # the skim loss alone: fewer reads
        optimizer.zero_grad()
        model(x).aux_loss().backward()
        optimizer.step()
    with torch.no_grad():
        assert model.eval()(x).decisions["executed_fraction"].mean().item() < before - 0.3


def test_soft_training_mixture_and_temperature():
    """Soft Gumbel-softmax (the paper's training) mixes the two candidate states: the
    result is neither pure choice; a tiny temperature makes it (almost) the hard one."""
    model, x = skim_model().train(), signals(3)
    rnn, seq = model.rnn, x.transpose(1, 2)
    soft = rnn(seq, tau=1.0, generator=torch.Generator().manual_seed(0)).hidden
    again = rnn(seq, tau=1.0, generator=torch.Generator().manual_seed(0)).hidden
    torch.testing.assert_close(soft, again)
    cold = rnn(seq, tau=1e-4, generator=torch.Generator().manual_seed(0))
    replay = rnn(seq, choices=cold.choices).hidden
    torch.testing.assert_close(cold.hidden, replay, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(soft, replay, atol=1e-3)
    hard = SkimLSTM(1, HIDDEN, SMALL, hard=True).train()
    result = hard(seq, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result.hidden, hard(seq, choices=result.choices).hidden)
    assert model(x, temperature=2.0).logits.shape == (3, 10)


def test_bad_inputs_raise_config_errors():
    model = skim_model()
    with pytest.raises(ConfigError, match="small_hidden must be < hidden"):
        create_model("skim_lstm_classifier", hidden=8, small_hidden=8)
    with pytest.raises(ConfigError, match="small_hidden must be a positive int"):
        create_model("skim_lstm_classifier", small_hidden=0)
    with pytest.raises(ConfigError, match="small_hidden_size"):
        SkimLSTM(3, 8, 9)
    with pytest.raises(ConfigError, match="small_hidden_size"):
        SkimLSTM(3, 8, 0)
    with pytest.raises(ConfigError, match=r"at least one step \(T >= 1\)"):
        model.rnn(torch.randn(2, 0, 1))
    with pytest.raises(ConfigError, match=r"\(B, 1, L\)"):
        model(torch.randn(2, 3, 10))
    with pytest.raises(ConfigError, match="choices must have shape"):
        model(signals(2), choices=torch.ones(2, 5))
    with pytest.raises(ConfigError, match="execution"):
        model(signals(2), execution="sparse")
    with pytest.raises(ConfigError, match="skim_weight"):
        create_model("skim_lstm_classifier", skim_weight=-1.0)
    with pytest.raises(ConfigError, match="tau"):
        create_model("skim_lstm_classifier", tau=0.0)
    with pytest.raises(ConfigError, match="length must be a positive int"):
        create_model("skim_lstm_classifier", length=0)


def test_images_are_read_row_by_row():
    model = create_model("skim_lstm_classifier", row_width=8, length=8, hidden=16, small_hidden=4)
    assert model.default_input_shape == (1, 8, 8)
    out = model.eval()(torch.randn(3, 1, 8, 8))
    assert out.decisions["gates"].shape == (3, 8)
    assert model.full_flops((1, 8, 8)) == 8 * (lstm_cell_flops(model.rnn.big) + linear_flops(model.rnn.choice)) + \
        linear_flops(model.head)


@pytest.mark.slow
def test_learns_digits_row_by_row_while_skimming(fit_digits):
    """Digits read as 8 rows of 8 pixels (a run takes about 5-15 s on one core): without the
    skim loss the big cell reads nearly every row; with it (soft Gumbel-softmax training,
    as in the paper) the small cell skims most rows and the model keeps most of the
    accuracy (with skim_weight 1 it reads about 7% of the rows and drops to about 0.65)."""
    def train_on_digits(skim_weight: float):
        torch.manual_seed(0)
        return fit_digits(create_model("skim_lstm_classifier", row_width=8, length=8, hidden=32, small_hidden=4,
                                       skim_weight=skim_weight))

    free_accuracy, free_reads = train_on_digits(0.0)
    skim_accuracy, skim_reads = train_on_digits(0.3)
    assert free_accuracy > 0.85 and free_reads > 0.9
    assert skim_accuracy > 0.8 and skim_reads < 0.5


def test_worst_case_flops_is_reading_every_step():
    from dynamicnets.inference import worst_case_flops

    model = skim_model().eval()
    bound = worst_case_flops(model, (1, STEPS), GatePolicy((0.9,)))
    assert bound == model.full_flops((1, STEPS))
    with torch.no_grad():
        out = model(signals(4), policy=GatePolicy((0.0,)))  # threshold 0: every step read
    assert torch.equal(out.flops, torch.full((4,), bound, dtype=torch.float64))
    with pytest.raises(ConfigError, match="max_flops"):  # a cap it cannot honour is refused, not ignored
        worst_case_flops(model, (1, STEPS), GatePolicy((0.5,), max_flops=bound / 2))
    with pytest.raises(ConfigError, match="max_flops"):
        model(signals(2), policy=GatePolicy((0.5,), max_flops=bound / 2))
