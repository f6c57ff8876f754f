"""Early stopping over time: `early_stop_lstm_classifier` (compact == masked, costs, policies)."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.gates.thresholds import GatePolicy
from dynamicnets.inference import ExitPolicy, calibrate, run_all_then_select, run_early_exit
from dynamicnets.protocols import MultiExit

LENGTH, EVERY = 11, 3  # checks after steps 3, 6, 9 and 11: K = 4


def model_with(halting: bool = True, bias: float = 0.0, **kwargs):
    torch.manual_seed(0)
    args = {"hidden": 12, "length": LENGTH, "every": EVERY, "halting": halting, "halting_bias_init": bias, **kwargs}
    return create_model("early_stop_lstm_classifier", **args).eval()


def signals(batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 1, LENGTH, generator=g) * torch.rand(batch, 1, 1, generator=g) * 3


def given_stops(pattern: str, batch: int) -> torch.Tensor:
    if pattern == "all_first":
        return torch.zeros(batch, dtype=torch.int64)
    if pattern == "none_early":
        return torch.full((batch,), 3, dtype=torch.int64)
    return torch.randint(0, 4, (batch,), generator=torch.Generator().manual_seed(batch))


def test_checks_are_the_exits_of_a_multi_exit_model():
    model = model_with()
    assert isinstance(model, MultiExit)
    assert model.check_steps == (3, 6, 9, 11) and model.num_exits == 4
    cell = 2 * 4 * 12 * (1 + 12)
    head = 2 * 12 * 10
    assert model.exit_costs((1, LENGTH)) == [3 * cell + head, 6 * cell + 2 * head, 9 * cell + 3 * head,
                                             11 * cell + 4 * head]
    out = model(signals(3))  # no stops asked for: the full read, every check's logits
    assert len(out.exit_logits) == 4 and torch.equal(out.logits, out.exit_logits[-1])
    assert torch.equal(out.decisions["stop_index"], torch.full((3,), 3))
    assert out.decisions["halt_probs"].shape == (3, 3)


def test_full_read_is_the_static_lstm_with_the_same_weights():
    model = model_with(halting=False)
    static = create_model("lstm_classifier", hidden=12, length=LENGTH).eval()
    static.load_state_dict(model.state_dict())
    x = signals(4)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, static(x).logits)
        torch.testing.assert_close(model.forward_features(x), static.forward_features(x))


@pytest.mark.parametrize("batch", [1, 6])
@pytest.mark.parametrize("pattern", ["all_first", "none_early", "random"])
def test_given_stops_compact_equals_masked(pattern, batch):
    model, x, stops = model_with(), signals(batch), given_stops(pattern, batch)
    with torch.no_grad():
        masked = model(x, stops=stops, execution="masked")
        compact = model(x, stops=stops, execution="compact")
        full = model(x)
    assert torch.equal(compact.decisions["stop_index"], stops)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    # the logits where each sample stops are that check's logits of the full read
    torch.testing.assert_close(compact.logits, torch.stack(full.exit_logits)[stops, torch.arange(batch)],
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.flops, masked.decisions["compact_flops"])
    steps = torch.tensor([3.0, 6.0, 9.0, 11.0], dtype=torch.float64)[stops]
    assert torch.equal(compact.decisions["steps_read"], steps)
    assert torch.equal(compact.decisions["executed_fraction"], steps / LENGTH)
    assert (masked.flops >= compact.flops).all()


def test_the_cell_runs_only_on_the_samples_still_reading():
    model, x = model_with(), signals(5)
    stops = torch.tensor([0, 3, 1, 0, 2])
    rows, heads = [], []
    model.cell.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    model.head.register_forward_hook(lambda m, i, o: heads.append(i[0].shape[0]))
    with torch.no_grad():
        out = model(x, stops=stops, execution="compact")
    assert sum(rows) == int(out.decisions["steps_read"].sum())  # one row per step read
    assert rows[:3] == [5, 5, 5] and rows[-2:] == [1, 1]  # the batch shrinks as samples stop
    assert sorted(heads) == [1, 1, 1, 2]  # the head runs only where samples stop


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_halting_policy_compact_equals_masked(batch, threshold):
    model, x = model_with(bias=0.0), signals(batch, seed=2)
    policy = model.halting_policy(threshold)
    with torch.no_grad():
        masked = model(x, policy=policy, execution="masked")
        compact = model(x, policy=policy, execution="compact")
    assert torch.equal(compact.decisions["stop_index"], masked.decisions["stop_index"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.flops, masked.decisions["compact_flops"])
    stops = compact.decisions["stop_index"]
    if threshold == 0.0:  # every probability is > 0: everyone stops at the first check
        assert (stops == 0).all()
    if threshold == 1.0:  # nobody stops before the last check
        assert (stops == 3).all()
    probs = masked.decisions["halt_probs"]
    expected = [next((k for k in range(3) if probs[b, k] > threshold), 3) for b in range(batch)]
    assert stops.tolist() == expected


def test_halting_decisions_are_mixed_at_the_default_threshold():
    model, x = model_with(bias=0.0), signals(64, seed=3)
    with torch.no_grad():
        stops = model(x, policy=model.halting_policy()).decisions["stop_index"]
    assert len(set(stops.tolist())) >= 3


def median_policy(criterion: str) -> ExitPolicy:
    """Thresholds at the median score of each check on a reference batch: about half of the
    samples still reading stop at each check."""
    if criterion == "patience":
        return ExitPolicy("patience", [2, 2, 3])
    model = model_with(halting=False)
    with torch.no_grad():
        exits = model(signals(32, seed=9)).exit_logits[:-1]
    scorer = ExitPolicy(criterion).resolve_criterion()
    return ExitPolicy(criterion, [float(scorer.score(e).median()) for e in exits])


@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("criterion", ["maxprob", "entropy", "margin", "patience"])
def test_confidence_criteria_run_through_the_early_exit_executor(batch, criterion):
    model, x, policy = model_with(halting=False), signals(batch, seed=4), median_policy(criterion)
    with torch.no_grad():
        compact = model(x, policy=policy)
        masked = model(x, policy=policy, execution="masked")
        direct = run_early_exit(model, x, policy)
        reference = run_all_then_select(model, x, policy)
        given = model(x, stops=reference.exit_index, execution="masked")
    assert torch.equal(compact.decisions["stop_index"], direct.exit_index)
    assert torch.equal(compact.decisions["stop_index"], reference.exit_index)
    assert torch.equal(masked.decisions["stop_index"], reference.exit_index)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.logits, given.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.flops, direct.flops)


@pytest.mark.parametrize("criterion", ["maxprob", "patience"])
def test_confidence_policies_stop_some_samples_and_let_others_read_on(criterion):
    model, x = model_with(halting=False), signals(9, seed=4)
    with torch.no_grad():
        stops = model(x, policy=median_policy(criterion)).decisions["stop_index"]
    assert 0 < int((stops < 3).sum()) < 9  # the executor test above sees both kinds


@pytest.mark.parametrize("case", ["given", "halting", "maxprob", "full", "capped"])
def test_per_sample_flops_match_the_flop_counter(case):
    model, x = model_with(bias=0.0), signals(8, seed=6)
    kwargs = {"given": {"stops": torch.tensor([0, 1, 2, 3, 3, 2, 1, 0]), "execution": "compact"},
              "halting": {"policy": model.halting_policy(0.5)},
              "maxprob": {"policy": median_policy("maxprob")},
              "full": {},
              "capped": {"policy": model.halting_policy(0.99, max_flops=model.exit_costs((1, LENGTH))[2])}}[case]
    with torch.no_grad():
        out = model(x, **kwargs)
    assert counted_flops(model, x, **kwargs) == pytest.approx(float(out.flops.sum()))
    masked_kwargs = {**kwargs, "execution": "masked"} if kwargs else {"execution": "masked"}
    assert counted_flops(model, x, **masked_kwargs) == pytest.approx(model.read_flops() * 8)


def test_a_flops_cap_bounds_every_sample():
    model, x = model_with(bias=-5.0), signals(6)  # the halting unit would read everything
    cap = model.exit_costs((1, LENGTH))[1] + 1
    with torch.no_grad():
        out = model(x, policy=model.halting_policy(0.5, max_flops=cap))
    assert (out.decisions["stop_index"] == 1).all()
    assert (out.flops <= cap).all()
    with pytest.raises(ConfigError, match="max_flops"):
        model(x, policy=model.halting_policy(0.5, max_flops=10))


def test_calibration_meets_the_budget_on_the_calibration_data():
    model, x = model_with(halting=False), signals(200, seed=7)
    y = torch.randint(0, 10, (200,), generator=torch.Generator().manual_seed(0))
    loader = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    costs = model.exit_costs((1, LENGTH))
    for budget in (costs[0] + 0.4 * (costs[1] - costs[0]), (costs[1] + costs[2]) / 2, costs[-1] * 0.9):
        fit = calibrate(model, loader, budget)
        assert fit.mean_flops <= budget
        with torch.no_grad():
            spent = torch.cat([model(xb, policy=fit.policy).flops for xb, _ in loader])
        assert float(spent.mean()) <= budget + 1e-6
        assert float(spent.mean()) == pytest.approx(fit.mean_flops)


def test_calibration_does_not_send_every_tied_sample_out():
    """Identical first steps (MNIST's blank top rows) give every sample the same score at
    the first check: a budget that wants some of them out there must not take them all."""
    model, x = model_with(halting=False), signals(120, seed=8)
    x[:, :, :3] = 0.0  # the first check sees the same three steps for every sample
    loader = [(x[i:i + 40], torch.zeros(40, dtype=torch.int64)) for i in range(0, 120, 40)]
    costs = model.exit_costs((1, LENGTH))
    budget = (costs[1] + costs[2]) / 2
    fit = calibrate(model, loader, budget)
    with torch.no_grad():
        out = model(x, policy=fit.policy)
    assert (out.decisions["stop_index"] > 0).all()
    assert costs[1] <= float(out.flops.mean()) <= budget


def test_training_is_masked_with_a_halting_loss_that_reaches_the_halting_unit():
    model = model_with(bias=0.0).train()
    x, y = signals(5), torch.tensor([0, 1, 2, 3, 4])
    out = model(x)
    assert len(out.exit_logits) == 4 and all(e.shape == (5, 10) for e in out.exit_logits)
    assert set(out.aux_losses) == {"halting"}
    loss = sum(F.cross_entropy(e, y) for e in out.exit_logits) / 4 + out.aux_loss()
    loss.backward()
    assert model.halting.weight.grad.abs().sum() > 0 and model.cell.weight_ih.grad.abs().sum() > 0
    # the cost term alone pushes every halting probability up (stop sooner)
    model.zero_grad()
    pricey = model_with(bias=0.0, cost_weight=10.0).train()
    pricey(x).aux_losses["halting"].backward()
    assert pricey.halting.bias.grad.item() < 0


def test_bad_arguments_and_inputs_raise_config_errors():
    with pytest.raises(ConfigError, match="every"):
        create_model("early_stop_lstm_classifier", every=0)
    with pytest.raises(ConfigError, match="length"):
        create_model("early_stop_lstm_classifier", length=0)
    with pytest.raises(ConfigError, match="every"):
        create_model("early_stop_lstm_classifier", length=4, every=4, halting=True)
    with pytest.raises(ConfigError, match="cost_weight"):
        create_model("early_stop_lstm_classifier", cost_weight=-1.0)
    model = model_with()
    with pytest.raises(ConfigError, match="at least one"):
        model(torch.zeros(2, 1, 0))
    with pytest.raises(ConfigError, match="length=11"):
        model(torch.zeros(2, 1, 12))
    with pytest.raises(ConfigError, match="stops"):
        model(signals(2), stops=torch.tensor([0, 4]))
    with pytest.raises(ConfigError, match="stops"):
        model(signals(2), stops=torch.tensor([0]))
    with pytest.raises(ConfigError, match="thresholds"):
        model(signals(2), policy=GatePolicy((0.5,)))
    with pytest.raises(ConfigError, match="halting unit"):
        model_with(halting=False)(signals(2), policy=GatePolicy((0.5, 0.5, 0.5)))


def digits_tensors(split):
    x = torch.stack([split[i][0] for i in range(len(split))])
    y = torch.tensor([int(split[i][1]) for i in range(len(split))])
    return x, y


def train_on_digits(cost_weight: float, steps: int = 300):
    from dynamicnets.data import load_data
    from dynamicnets.training import multi_exit_loss

    bundle = load_data("digits", val_size=0.2, seed=0)
    x, y = digits_tensors(bundle.train)
    x_val, y_val = digits_tensors(bundle.val)
    torch.manual_seed(0)
    model = create_model("early_stop_lstm_classifier", row_width=8, length=8, hidden=32, halting=True,
                         cost_weight=cost_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=g)
        out = model.train()(x[idx])
        loss = multi_exit_loss(out, y[idx]) + out.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        full = model(x_val)
        halted = model(x_val, policy=model.halting_policy())

    def accuracy(logits):
        return float((logits.argmax(1) == y_val).float().mean())

    return (accuracy(full.logits), accuracy(full.exit_logits[0]), accuracy(halted.logits),
            float(halted.decisions["executed_fraction"].mean()))


def test_learns_digits_and_the_price_of_reading_trades_rows_for_accuracy():
    """Digits read as 8 rows (about a second per run): every check learns to classify; the
    halting unit stops early, the more so the higher the price of reading."""
    full, first, halted, fraction = train_on_digits(0.5)
    assert full > 0.85 and first < 0.5
    assert fraction < 0.95 and halted > full - 0.03
    _, _, cheap_halted, cheap_fraction = train_on_digits(1.0)
    assert cheap_fraction < fraction - 0.2 and cheap_halted > 0.5
