"""LSTM-Jump: read R tokens, jump 0..K ahead; masked training, compact inference."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.gates.jump_policy import JumpPolicy
from dynamicnets.layers.lstm_jump import LSTMJump

VOCAB, LENGTH = 6, 20


def jump_model(**kwargs):
    torch.manual_seed(0)
    args = {"num_classes": VOCAB, "in_chans": VOCAB, "hidden": 12, "length": LENGTH, "max_jump": 5}
    return create_model("lstm_jump_classifier", **{**args, **kwargs})


def signals(batch: int, length: int = LENGTH, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, VOCAB, length, generator=torch.Generator().manual_seed(seed))


def random_jumps(model, batch: int, length: int = LENGTH, seed: int = 1) -> torch.Tensor:
    decisions = model.rnn.max_decisions(length)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.rnn.max_jump + 1, (batch, decisions), generator=g)


def both(model, x, **kwargs):
    with torch.no_grad():
        return model(x, execution="masked", **kwargs), model(x, execution="compact", **kwargs)


@pytest.mark.parametrize("batch", [1, 9])
@pytest.mark.parametrize("read_steps, max_jumps", [(1, None), (2, 3), (3, 1)])
def test_forced_jumps_compact_equals_masked(batch, read_steps, max_jumps):
    model = jump_model(read_steps=read_steps, max_jumps=max_jumps).eval()
    x = signals(batch)
    jumps = random_jumps(model, batch)
    masked, compact = both(model, x, jumps=jumps)
    assert torch.equal(masked.decisions["gates"], compact.decisions["gates"])
    assert torch.equal(masked.decisions["jumps"], compact.decisions["jumps"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.decisions["compact_flops"], masked.decisions["compact_flops"])
    assert torch.equal(compact.flops, compact.decisions["compact_flops"])
    assert (masked.flops > compact.flops).all()
    made = masked.decisions["jumps"]
    assert torch.equal(made[made >= 0], jumps[made >= 0])  # the forced choices were the ones made


@pytest.mark.parametrize("batch", [1, 7])
def test_greedy_decisions_compact_equals_masked(batch):
    model = jump_model(max_jump=4).eval()
    with torch.no_grad():  # a head biased to jump 2 or 3, so that samples travel
        model.rnn.jump.bias.copy_(torch.tensor([0.0, 0.0, 1.5, 1.5, 0.0]))
    masked, compact = both(model, signals(batch, seed=5))
    assert torch.equal(masked.decisions["jumps"], compact.decisions["jumps"])
    assert torch.equal(masked.decisions["gates"], compact.decisions["gates"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    assert 0 < compact.decisions["executed_fraction"].mean() < 1


def test_the_reading_trace_follows_the_paper_rule():
    """R = 2: read x0, x1; jump 3 skips x2, x3 and reads x4 (x_{R + k}), x5; jump 0 stops."""
    model = jump_model(read_steps=2).eval()
    jumps = torch.full((1, model.rnn.max_decisions(LENGTH)), -1)
    jumps[0, :2] = torch.tensor([3, 0])
    masked, compact = both(model, signals(1), jumps=jumps)
    read = torch.zeros(1, LENGTH)
    read[0, [0, 1, 4, 5]] = 1
    for out in (masked, compact):
        assert torch.equal(out.decisions["gates"], read)
        assert out.decisions["jumps"][0, :3].tolist() == [3, 0, -1]


def test_limits_stop_reading():
    """After N jumps the sample reads R more tokens and stops; a jump past the end stops;
    the last token stops."""
    model = jump_model(read_steps=2, max_jumps=2).eval()
    x = signals(3)
    jumps = torch.tensor([[1, 1], [5, 5], [4, 5]])
    long_model = jump_model(read_steps=2, max_jumps=None, max_jump=5).eval()
    with torch.no_grad():
        out = model(x, jumps=jumps)
    reads = out.decisions["gates"]
    assert reads[0].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert reads[1].nonzero().flatten().tolist() == [0, 1, 6, 7, 12, 13]
    assert out.decisions["jumps"].tolist() == jumps.tolist()
    jumps = torch.full((1, long_model.rnn.max_decisions(LENGTH)), 5)
    with torch.no_grad():  # 0,1 | 6,7 | 12,13 | 18,19: the last token ends it, no decision there
        trace = long_model(x[:1], jumps=jumps)
    assert trace.decisions["gates"][0].nonzero().flatten().tolist() == [0, 1, 6, 7, 12, 13, 18, 19]
    assert trace.decisions["jumps"][0].tolist()[:4] == [5, 5, 5, -1]
    jumps[0, 2] = 5
    jumps[0, 1] = 4  # 0,1 | 6,7 | 11,12 | 17,18 -> 23 is past the end
    with torch.no_grad():
        past = long_model(x[:1], jumps=jumps)
    assert past.decisions["gates"][0].nonzero().flatten().tolist() == [0, 1, 6, 7, 11, 12, 17, 18]
    assert past.decisions["jumps"][0].tolist()[:4] == [5, 4, 5, 5]


@pytest.mark.parametrize("batch", [1, 6])
def test_everybody_stops_at_once(batch):
    """All stop after the first R tokens: the batch empties at step R - 1."""
    model = jump_model(read_steps=3).eval()
    x = signals(batch)
    calls = []
    model.rnn.cell.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    jumps = torch.zeros(batch, model.rnn.max_decisions(LENGTH), dtype=torch.int64)
    masked, compact = both(model, x, jumps=jumps)
    expected = torch.zeros(batch, LENGTH)
    expected[:, :3] = 1
    assert torch.equal(compact.decisions["gates"], expected) and torch.equal(masked.decisions["gates"], expected)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    assert calls[LENGTH:] == [batch] * 3  # compact: three full-batch steps, then nothing


def test_nobody_reads_the_skipped_steps_and_the_cell_sees_only_readers():
    """Every sample jumps K = 5 after each token: steps 1-4, 6-9, ... have no reader and
    cost no cell call; then mixed jumps: one row per read, and samples reading different
    steps share a call (one call per read round: as many as the most tokens read)."""
    model = jump_model().eval()
    x = signals(4)
    calls = []
    model.rnn.cell.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    decisions = model.rnn.max_decisions(LENGTH)
    with torch.no_grad():
        out = model(x, execution="compact", jumps=torch.full((4, decisions), 5))
    assert out.decisions["gates"][0].nonzero().flatten().tolist() == [0, 5, 10, 15]
    assert calls == [4, 4, 4, 4]
    calls.clear()
    jumps = random_jumps(model, 4, seed=7)
    masked, compact = both(model, x, jumps=jumps)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    calls = calls[LENGTH:]  # after the masked run's full-batch steps
    gates = compact.decisions["gates"]
    assert sum(calls) == int(gates.sum())
    assert len(calls) == int(gates.sum(1).max()) < int((gates.sum(0) > 0).sum())


@pytest.mark.parametrize("execution", ["masked", "compact"])
def test_per_sample_flops_match_the_flop_counter(execution):
    model = jump_model(read_steps=2).eval()
    with torch.no_grad():  # greedy choices that differ between samples
        model.rnn.jump.weight.mul_(8)
        model.rnn.jump.bias.copy_(torch.tensor([1.5, 0.5, 1.0, 1.5, 0.5, 0.0]))
    x = signals(6, seed=2)
    with torch.no_grad():
        out = model(x, execution=execution)
    assert counted_flops(model, x, execution=execution) == pytest.approx(float(out.flops.sum()))
    if execution == "compact":
        assert len(set(out.flops.tolist())) > 1  # samples differ in cost
        for i in range(6):  # a sample alone costs what its own flops say
            assert counted_flops(model, x[i : i + 1], execution=execution) == pytest.approx(float(out.flops[i]))
    reads = out.decisions["gates"].sum(1).double()
    made = (out.decisions["jumps"] >= 0).sum(1).double()
    expected = reads * model.rnn.read_flops() + made * model.rnn.jump_flops() + 2 * 12 * VOCAB
    torch.testing.assert_close(out.decisions["compact_flops"], expected)


def test_reading_everything_is_the_static_lstm_with_the_same_weights():
    jump = jump_model(max_jumps=None).eval()
    static = create_model("lstm_classifier", num_classes=VOCAB, in_chans=VOCAB, hidden=12).eval()
    static.cell.load_state_dict(jump.rnn.cell.state_dict())
    static.head.load_state_dict(jump.head.state_dict())
    x = signals(3)
    ones = torch.ones(3, jump.rnn.max_decisions(LENGTH), dtype=torch.int64)
    with torch.no_grad():
        torch.testing.assert_close(jump(x, jumps=ones).logits, static(x).logits)
        assert jump.full_flops((VOCAB, LENGTH)) == static(x).flops[0].item()


def test_policy_stop_threshold_and_read_cap():
    model = jump_model().eval()
    with torch.no_grad():
        model.rnn.jump.weight.zero_()
        model.rnn.jump.bias.copy_(torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0, 0.0]))  # p(stop) ~ 0.08: jump 1
    x = signals(5)
    with torch.no_grad():
        greedy = model(x)
        stop_early = model(x, policy=JumpPolicy(stop_threshold=0.05))
        capped = model(x, policy=JumpPolicy(max_reads=3))
        capped_masked = model(x, policy=JumpPolicy(max_reads=3), execution="masked")
    assert torch.equal(greedy.decisions["gates"], torch.ones(5, LENGTH))
    assert stop_early.decisions["gates"].sum(1).tolist() == [1.0] * 5
    assert capped.decisions["gates"].sum(1).tolist() == [3.0] * 5
    assert torch.equal(capped_masked.decisions["gates"], capped.decisions["gates"])
    with torch.no_grad():  # one sample at a time (the single-sample path) takes the same decisions
        single = torch.cat([model(x[i : i + 1], policy=JumpPolicy(max_reads=3)).decisions["gates"] for i in range(5)])
    assert torch.equal(single, capped.decisions["gates"])
    policy = JumpPolicy(stop_threshold=0.3, max_reads=7, meta={"on": "val"})
    assert JumpPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ConfigError, match="stop_threshold"):
        JumpPolicy(stop_threshold=1.5)
    with pytest.raises(ConfigError, match="max_reads"):
        JumpPolicy(max_reads=0)
    with pytest.raises(ConfigError, match="jump policy"):
        JumpPolicy.from_dict({"kind": "gate_thresholds"})


def test_training_samples_jumps_and_the_surrogate_gives_the_exact_policy_gradient():
    """Without the label the policy gradient rides on the logits; with `target=` it is
    `reinforce_loss`: the jump head gets the same gradient both ways."""
    x, y = signals(8, seed=3), torch.randint(0, VOCAB, (8,), generator=torch.Generator().manual_seed(4))
    grads = []
    for target in (None, y):
        model = jump_model(read_steps=2).train()
        with torch.no_grad():
            model.baseline.update(torch.tensor([0.3]))
        out = model(x, target=target, generator=torch.Generator().manual_seed(0))
        assert set(out.aux_losses) == {"reinforce"} and out.aux_losses["reinforce"].item() == 0
        (F.cross_entropy(out.logits, y) + out.aux_loss()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        assert (out.decisions["jumps"][:, 0] >= 0).all()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    assert grads[0]["rnn.jump.weight"].abs().sum() > 0


def test_forced_jumps_in_training_make_no_policy_loss_and_baseline_updates():
    model = jump_model().train()
    x, y = signals(4), torch.zeros(4, dtype=torch.int64)
    out = model(x, jumps=random_jumps(model, 4))
    assert out.aux_losses == {}
    out = model(x)
    before = float(model.baseline.mean)
    model.update_baseline(out, y)
    reward = model.reward(out.logits, y).mean()
    assert float(model.baseline.mean) == pytest.approx(float(reward)) and int(model.baseline.count) == 1
    assert before == 0.0


@pytest.mark.parametrize("kwargs, key", [
    ({"read_steps": 0}, "read_steps"),
    ({"max_jump": 0}, "max_jump"),
    ({"max_jumps": 0}, "max_jumps"),
    ({"entropy_weight": -1.0}, "entropy_weight"),
    ({"reward_correct": -1.0, "reward_wrong": 1.0}, "reward_correct"),
])
def test_bad_settings_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        jump_model(**kwargs)
    if key in ("read_steps", "max_jump", "max_jumps"):
        with pytest.raises(ConfigError, match=key):
            LSTMJump(4, 8, **kwargs)


def test_bad_inputs_name_the_argument():
    model = jump_model().eval()
    with pytest.raises(ConfigError, match="at least one step"):
        model.rnn(torch.randn(2, 0, VOCAB))
    with pytest.raises(ConfigError, match="at least one step"):
        model(torch.randn(2, VOCAB, 0))
    with pytest.raises(ConfigError, match="jumps must be"):
        model(signals(2), jumps=torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ConfigError, match="jumps must lie"):
        model(signals(2), jumps=torch.full((2, model.rnn.max_decisions(LENGTH)), 6))
    with pytest.raises(ConfigError, match=r"\(B, 6, L\)"):
        model(torch.randn(2, 3, LENGTH))
    with pytest.raises(ConfigError, match="execution"):
        model(signals(2), execution="sparse")


@pytest.mark.parametrize("batch", [1, 3])
def test_one_token_sequences_read_one_token(batch):
    model = jump_model().eval()
    x = signals(batch, length=1)
    masked, compact = both(model, x)
    assert model.rnn.max_decisions(1) == 0 and compact.decisions["jumps"].shape == (batch, 0)
    assert torch.equal(compact.decisions["gates"], torch.ones(batch, 1))
    torch.testing.assert_close(compact.logits, masked.logits)


def test_sampled_jumps_in_compact_execution_carry_their_log_probability():
    """Compact sampling (batch and single-sample paths): replaying its jumps masked gives
    the same log-probability and entropy."""
    model = jump_model().eval()
    x = signals(4)
    for rows in (x, x[:1]):
        out = model.rnn(rows.transpose(1, 2), execution="compact", sample=True, generator=torch.Generator().manual_seed(0))
        replay = model.rnn(rows.transpose(1, 2), execution="masked", jumps=out.jumps)
        assert out.log_prob is not None and out.log_prob.shape == (rows.shape[0],)
        torch.testing.assert_close(out.log_prob, replay.log_prob, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.entropy, replay.entropy, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_learns_the_number_prediction_task_reading_a_fraction_of_the_tokens():
    """jump_task with 16 tokens of 6 values: LSTM-Jump learns to jump from the index token
    to the answer (about 20 s on one core)."""
    from dynamicnets.data import load_data

    bundle = load_data("jump_task?length=16&vocab=6&size=3000&seed=0", val_size=0.2, seed=0)
    x, y = bundle.train.fetch(torch.arange(len(bundle.train)))
    x_val, y_val = bundle.val.fetch(torch.arange(len(bundle.val)))
    model = jump_model(hidden=32, length=16, max_jump=6)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,), generator=g)
        out = model.train()(x[idx], generator=g)
        loss = F.cross_entropy(out.logits, y[idx]) + out.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_baseline(out, y[idx])
    with torch.no_grad():
        out = model.eval()(x_val)
    accuracy = float((out.logits.argmax(1) == y_val).float().mean())
    assert accuracy > 0.9  # chance is 1/6
    assert float(out.decisions["executed_fraction"].mean()) < 0.5


@pytest.mark.parametrize("read_steps, max_jumps, max_reads", [(1, None, None), (2, None, 5), (2, 3, None),
                                                              (3, 1, 4), (3, None, 1)])
def test_worst_case_flops_bounds_every_reading_and_is_attained(read_steps, max_jumps, max_reads):
    """Random jumps never cost more than `worst_case_flops`; always jumping 1 (read on) with
    the cap meets it exactly."""
    from dynamicnets.inference import worst_case_flops

    model = jump_model(read_steps=read_steps, max_jumps=max_jumps).eval()
    policy = None if max_reads is None else JumpPolicy(max_reads=max_reads)
    bound = worst_case_flops(model, (VOCAB, LENGTH), policy)
    assert bound == model.worst_case_flops((VOCAB, LENGTH), policy)
    x = signals(16)
    jumps = torch.cat([random_jumps(model, 15, seed=5).clamp(min=1), torch.ones(1, model.rnn.max_decisions(LENGTH),
                                                                                 dtype=torch.int64)])
    with torch.no_grad():
        out = model(x, jumps=jumps, policy=policy)
    assert (out.flops <= bound).all() and out.flops[-1] == bound
    assert bound <= model.full_flops((VOCAB, LENGTH)) + model.rnn.max_decisions(LENGTH) * model.rnn.jump_flops()
    with pytest.raises(ConfigError, match="JumpPolicy"):
        model.worst_case_flops((VOCAB, LENGTH), object())
