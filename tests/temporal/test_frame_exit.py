"""FrameExit-style video classifier (frame_exit_classifier) and its static baseline."""
import math

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.data import moving_digits
from dynamicnets.data.embedded import digits_arrays
from dynamicnets.errors import ConfigError
from dynamicnets.flops import flop_counter, gru_cell_flops, linear_flops
from dynamicnets.inference import ExitPolicy, calibrate_thresholds, run_early_exit
from dynamicnets.models.temporal.video_frames import frame_order

T, SIZE = 6, 32


def model(name="frame_exit_classifier", **kwargs):
    torch.manual_seed(0)
    return create_model(name, frames=T, size=SIZE, hidden=12, widths=(4, 8), **kwargs).eval()


def videos(batch, seed=0):
    return torch.rand(batch, 1, T, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def counted(fn):
    with torch.no_grad(), flop_counter() as counter:
        out = fn()
    return out, counter.get_total_flops()


def test_frame_orders():
    assert frame_order(5, "sequential") == [0, 1, 2, 3, 4]
    assert frame_order(9, "spread") == [0, 8, 4, 2, 6, 1, 3, 5, 7]
    assert sorted(frame_order(16, "spread")) == list(range(16))
    assert frame_order(1, "spread") == [0]


STOPS = {
    "mixed": [1, 3, 6, 2, 3],
    "everyone_first": [1, 1, 1, 1, 1],
    "everyone_last": [6, 6, 6, 6, 6],
    "nobody_stops_early": [6, 5, 6, 5, 6],
}


@pytest.mark.parametrize("order", ["sequential", "spread"])
@pytest.mark.parametrize("case", list(STOPS))
@pytest.mark.parametrize("batch", [1, 5])
def test_forced_stop_compact_equals_masked(batch, case, order):
    m, x = model(order=order), videos(batch)
    stop = torch.tensor(STOPS[case][:batch])
    with torch.no_grad():
        masked = m(x, execution="masked", stop=stop)
        compact = m(x, execution="compact", stop=stop)
    assert torch.equal(compact.decisions["exit_index"], stop - 1)
    assert torch.equal(masked.decisions["exit_index"], stop - 1)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    assert len(masked.exit_logits) == T and len(compact.exit_logits) == 1
    torch.testing.assert_close(compact.decisions["frames_read"], stop.float())
    assert torch.equal(compact.flops, masked.decisions["compact_flops"])
    frame = m.frame_flops(x.shape[1:])
    assert torch.equal(compact.flops, stop.double() * frame + linear_flops(m.head))


@pytest.mark.parametrize("batch", [1, 4])
def test_per_sample_frame_orders_compact_equals_masked(batch):
    """Decisions naming each sample's frames (AdaFrame-style choices) are gathered per sample."""
    m, x = model(), videos(batch, seed=2)
    g = torch.Generator().manual_seed(1)
    frames = torch.stack([torch.randperm(T, generator=g)[:4] for _ in range(batch)])
    stop = torch.tensor([2, 4, 1, 3][:batch])
    with torch.no_grad():
        masked = m(x, execution="masked", stop=stop, frames=frames)
        compact = m(x, execution="compact", stop=stop, frames=frames)
        # the same as the default order on videos whose frames were put in that order beforehand
        reordered = torch.stack([x[b, :, torch.cat([frames[b], frames[b, :2]])] for b in range(batch)])
        reference = m(reordered, execution="compact", stop=stop)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.logits, reference.logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(compact.decisions["frames"], frames)


def _thresholds_between(scores, step, fraction):
    """A threshold halfway between two scores at `step`: about `fraction` of them above it."""
    ranked = scores[step].sort(descending=True).values
    k = max(1, int(fraction * len(ranked)))
    return float(ranked[k - 1] + ranked[k]) / 2


@pytest.mark.parametrize("batch", [1, 8])
def test_policy_compact_equals_masked(batch):
    m, x = model(), videos(8, seed=5)
    with torch.no_grad():
        scores = [F.softmax(e, -1).amax(-1) for e in m(x, execution="masked").exit_logits]
    thresholds = [_thresholds_between(scores, s, 0.3) for s in range(T - 1)]
    thresholds[2] = math.inf  # nobody may stop after the third frame: no head runs there
    policy = ExitPolicy("maxprob", thresholds)
    x = x[:batch]
    with torch.no_grad():
        masked = m(x, execution="masked", policy=policy)
    head_rows = []
    m.head.register_forward_hook(lambda mod, i, o: head_rows.append(i[0].shape[0]))
    with torch.no_grad():
        compact = m(x, execution="compact", policy=policy)
    assert torch.equal(compact.decisions["exit_index"], masked.decisions["exit_index"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(compact.flops, masked.decisions["compact_flops"])
    assert sum(head_rows) == _heads(compact, thresholds)
    if batch == 8:
        assert 0 < int((compact.decisions["exit_index"] < T - 1).sum()) < 8  # some stop early, some not


def _heads(out, thresholds):
    """Heads a policy runs: one after every step up to the stop, except closed steps."""
    total = 0
    for stop in out.decisions["exit_index"].tolist():
        total += sum(1 for s in range(stop + 1) if s == T - 1 or s == stop or thresholds[s] != math.inf)
    return total


@pytest.mark.parametrize("batch", [1, 5])
def test_everyone_stops_at_the_first_frame(batch):
    m, x = model(), videos(batch)
    policy = ExitPolicy("maxprob", [-math.inf] * (T - 1))
    encoded = []
    m.encoder.register_forward_hook(lambda mod, i, o: encoded.append(i[0].shape[0]))
    compact, flops = counted(lambda: m(x, policy=policy))
    assert encoded == [batch]  # one frame per sample, then everybody left
    assert compact.decisions["exit_index"].tolist() == [0] * batch
    with torch.no_grad():
        masked = m(x, execution="masked", policy=policy)
    torch.testing.assert_close(compact.logits, masked.exit_logits[0], rtol=1e-5, atol=1e-6)
    assert flops == compact.flops.sum() == batch * m.exit_costs(x.shape[1:])[0]


def test_flops_equal_the_flop_counter():
    m, x = model(), videos(7, seed=3)
    with torch.no_grad():
        scores = [F.softmax(e, -1).amax(-1) for e in m(x, execution="masked").exit_logits]
    policy = ExitPolicy("maxprob", [_thresholds_between(scores, s, 0.25) for s in range(T - 1)])
    for kwargs in ({"policy": policy}, {"stop": torch.tensor([1, 2, 3, 4, 5, 6, 6])}, {}):
        out, flops = counted(lambda: m(x, execution="compact", **kwargs))
        assert flops == out.flops.sum(), kwargs
    out, flops = counted(lambda: m(x, execution="masked"))
    assert flops == out.flops.sum() == 7 * m.exit_costs(x.shape[1:])[-1]
    static = model("video_gru_classifier")
    out, flops = counted(lambda: static(x))
    frame = static.encoder.flops(SIZE, SIZE) + gru_cell_flops(static.cell)
    assert flops == out.flops.sum() == 7 * (T * frame + linear_flops(static.head))
    assert out.flops[0] == static.full_flops(x.shape[1:])


def test_max_flops_cap_bounds_every_sample():
    m, x = model(), videos(6)
    costs = m.exit_costs(x.shape[1:])
    policy = ExitPolicy("maxprob", [math.inf] * (T - 1), max_flops=costs[2])
    out = m(x, policy=policy)
    assert out.decisions["exit_index"].tolist() == [2] * 6
    assert bool((out.flops <= costs[2]).all())
    with pytest.raises(ConfigError, match="max_flops"):
        m(x, policy=ExitPolicy("maxprob", [math.inf] * (T - 1), max_flops=costs[0] - 1))


def test_no_policy_reads_every_frame_and_runs_every_head():
    m, x = model(), videos(3)
    static = model("video_gru_classifier")
    static.load_state_dict(m.state_dict())
    for execution in ("masked", "compact"):
        out, flops = counted(lambda: m(x, execution=execution))
        torch.testing.assert_close(out.logits, static(x).logits, rtol=1e-5, atol=1e-6)
        assert len(out.exit_logits) == T
        assert flops == out.flops.sum() == 3 * m.exit_costs(x.shape[1:])[-1]
        assert out.decisions["update_fraction"].tolist() == [1.0] * 3
    forced_full, flops = counted(lambda: m(x, stop=torch.full((3,), T)))  # one head: the static cost
    assert flops == forced_full.flops.sum() == 3 * static.full_flops(x.shape[1:])


def test_exit_executor_and_calibration_drive_the_model():
    m, x = model(), videos(8, seed=4)
    with torch.no_grad():
        full = m(x)
    costs = m.exit_costs(x.shape[1:])
    targets = full.logits.argmax(1)
    fit = calibrate_thresholds(full.exit_logits, targets, costs, budget_flops=0.5 * costs[-1])
    with torch.no_grad():
        own = m(x, policy=fit.policy)
        executed = run_early_exit(m, x, fit.policy)
    assert torch.equal(executed.exit_index, own.decisions["exit_index"])
    torch.testing.assert_close(executed.logits, own.logits, rtol=1e-5, atol=1e-6)
    assert torch.equal(executed.flops, own.flops)
    assert float(own.flops.mean()) <= 0.5 * costs[-1]


def test_forward_features_match_the_logits():
    m, x = model(), videos(4)
    stop = torch.tensor([2, 1, 6, 3])
    with torch.no_grad():
        for execution in ("masked", "compact"):
            features = m.forward_features(x, execution=execution, stop=stop)
            torch.testing.assert_close(m.forward_head(features), m(x, execution=execution, stop=stop).logits)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m(torch.rand(2, 1, T - 1, SIZE, SIZE)), "frames"),
        (lambda m: m(torch.rand(2, 1, SIZE, SIZE)), "x"),
        (lambda m: m(videos(2), stop=torch.tensor([0, 2])), "stop"),
        (lambda m: m(videos(2), stop=torch.tensor([1, T + 1])), "stop"),
        (lambda m: m(videos(2), stop=torch.tensor([1.0, 2.0])), "stop"),
        (lambda m: m(videos(2), frames=torch.tensor([[0, T]] * 2)), "frames"),
        (lambda m: m(videos(2), frames=torch.zeros(2, 0, dtype=torch.long)), "frames"),
        (lambda m: m(videos(2), policy=ExitPolicy("maxprob", [0.5] * 2)), "thresholds"),
        (lambda m: m(videos(2), policy=ExitPolicy("patience", [2] * (T - 1))), "patience"),
        (lambda m: m(videos(2), policy=ExitPolicy("maxprob", [0.5] * (T - 1)), stop=torch.tensor([1, 1])),
         "either"),
        (lambda m: create_model("frame_exit_classifier", order="random"), "order"),
        (lambda m: create_model("frame_exit_classifier", frames=0), "frames"),
        (lambda m: create_model("video_gru_classifier", widths=()), "widths"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ConfigError, match=match):
        call(model())


def _digit_videos(count, generator):
    """Videos of scikit-learn's digits (upscaled to 28x28), 6 frames of 32x32, the digit
    visible in 3 of them (hidden under noise in the others)."""
    x, y = digits_arrays()
    digits = (F.interpolate(x[:count], size=24, mode="nearest") * 255).to(torch.uint8)
    digits = F.pad(digits, (2, 2, 2, 2))[:, 0]
    options = moving_digits.MovingOptions(frames=T, height=SIZE, width=SIZE, visible=3, occluders=0)
    video, _ = moving_digits.generate(digits, options, generator)
    return video.float() / 255, y[:count]


@pytest.mark.slow
def test_learns_and_stops_early_on_moving_digits():
    """Trained with the multi-exit loss, the model classifies the videos and a calibrated
    policy at half the full cost keeps most of the accuracy while reading fewer frames."""
    torch.manual_seed(0)
    x, y = _digit_videos(900, torch.Generator().manual_seed(0))
    m = create_model("frame_exit_classifier", frames=T, size=SIZE, hidden=32, widths=(8, 16, 32)).train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(7):
        for idx in torch.randperm(700).split(50):
            out = m(x[idx])
            loss = sum(F.cross_entropy(e, y[idx]) for e in out.exit_logits) / T
            opt.zero_grad()
            loss.backward()
            opt.step()
    m.eval()
    with torch.no_grad():
        val = m(x[700:800], execution="masked")
        test_x, test_y = x[800:], y[800:]
        full = m(test_x)
    full_acc = float((full.logits.argmax(1) == test_y).float().mean())
    first_acc = float((val.exit_logits[0].argmax(1) == y[700:800]).float().mean())
    assert full_acc > 0.6 and full_acc > first_acc + 0.1
    costs = m.exit_costs(x.shape[1:])
    fit = calibrate_thresholds(val.exit_logits, y[700:800], costs, budget_flops=0.5 * costs[-1])
    with torch.no_grad():
        dyn = m(test_x, policy=fit.policy)
    dyn_acc = float((dyn.logits.argmax(1) == test_y).float().mean())
    assert float(dyn.decisions["frames_read"].mean()) < 0.7 * T
    assert float(dyn.flops.mean()) < 0.7 * m.full_flops(x.shape[1:])
    assert dyn_acc > full_acc - 0.15
