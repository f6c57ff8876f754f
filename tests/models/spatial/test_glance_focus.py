"""`glance_focus_cnn`: compact == masked for given decisions, FLOPs == FlopCounterMode,
bad input, the label-free policy gradient equals the exact one, and focusing on the
right place pays."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.inference.executor import run_early_exit
from dynamicnets.inference.policy import ExitPolicy

from spatial_test_helpers import fit_on_locations

SMALL = dict(num_classes=5, image_size=20, glance_size=10, patch_size=8, grid=4, steps=4, width=4, hidden=16,
             policy_hidden=8)


def small_model(**kwargs):
    torch.manual_seed(0)
    model = create_model("glance_focus_cnn", **{**SMALL, **kwargs})
    # a few training steps' worth of BN statistics, so eval features are not all alike
    with torch.no_grad():
        model.train()(torch.randn(16, 1, 20, 20))
    return model.eval()


def inputs(batch, seed=1):
    return torch.randn(batch, 1, 20, 20, generator=torch.Generator().manual_seed(seed))


def assert_same(a, b):
    torch.testing.assert_close(a.logits, b.logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(a.decisions["exit_index"], b.decisions["exit_index"])
    assert torch.equal(a.decisions["compact_flops"], b.decisions["compact_flops"])


def staggered_policy(model, x, locations=None, per_exit=2):
    """A max-probability `ExitPolicy` under which `per_exit` samples leave at each exit
    but the last (thresholds: the `per_exit`-th highest confidence of those still running)."""
    with torch.no_grad():
        probs = [F.softmax(lg, 1).amax(1) for lg in model(x, locations=locations).exit_logits]
    running = torch.ones(x.shape[0], dtype=torch.bool)
    thresholds = []
    for p in probs[:-1]:
        threshold = float(p[running].topk(per_exit).values[-1])
        thresholds.append(threshold)
        running &= p < threshold
    return ExitPolicy("maxprob", thresholds)


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("same_patch", [False, True], ids=["own_patch", "same_patch"])
def test_compact_equals_masked_for_given_locations_and_exits(batch, same_patch):
    model, x = small_model(), inputs(batch)
    g = torch.Generator().manual_seed(2)
    locations = torch.randint(0, 16, (batch, 3), generator=g)
    if same_patch:
        locations = torch.full((batch, 3), 9)
    exits = torch.randint(0, 4, (batch,), generator=g)
    with torch.no_grad():
        compact = model(x, locations=locations, exits=exits, execution="compact")
        masked = model(x, locations=locations, exits=exits, execution="masked")
        full = model(x, locations=locations)
    assert_same(compact, masked)
    torch.testing.assert_close(compact.logits, torch.stack(full.exit_logits)[exits, torch.arange(batch)],
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(full.decisions["locations"], locations)


@pytest.mark.parametrize("forced", [True, False], ids=["given_locations", "policy_locations"])
def test_compact_equals_masked_under_an_exit_policy(forced):
    model, x = small_model(), inputs(9)
    locations = torch.randint(0, 16, (9, 3), generator=torch.Generator().manual_seed(3)) if forced else None
    policy = staggered_policy(model, x, locations)
    with torch.no_grad():
        compact = model(x, locations=locations, policy=policy, execution="compact")
        masked = model(x, locations=locations, policy=policy, execution="masked")
    assert_same(compact, masked)
    assert sorted(compact.decisions["exit_index"].tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 3]


def test_the_executor_drives_the_model_unchanged():
    model, x = small_model(), inputs(6)
    policy = ExitPolicy("entropy", [-0.5, -0.5, -0.5])
    with torch.no_grad():
        result = run_early_exit(model, x, policy)
        out = model(x, policy=policy)
    torch.testing.assert_close(result.logits, out.logits)
    assert torch.equal(result.flops, out.flops)


@pytest.mark.parametrize("forced", [True, False], ids=["given_locations", "policy_locations"])
def test_compact_flops_equal_the_flop_counter(forced):
    model, x = small_model(), inputs(8)
    locations = torch.randint(0, 16, (8, 3), generator=torch.Generator().manual_seed(4)) if forced else None
    exits = torch.tensor([0, 1, 2, 3, 3, 1, 0, 2])
    policy = staggered_policy(model, x, locations)
    for kwargs in ({"exits": exits}, {"policy": policy}):
        with torch.no_grad():
            out = model(x, locations=locations, **kwargs)
        assert out.flops.sum().item() == counted_flops(lambda z: model(z, locations=locations, **kwargs), x)
    glance, focus, head = model._step_flops((1, 20, 20), policy=not forced)
    assert out.flops.tolist() == [glance + k * focus + (k + 1) * head for k in out.decisions["exit_index"].tolist()]


def test_everyone_exits_at_the_glance_and_no_patch_is_read():
    model, x = small_model(), inputs(5)
    calls = []
    model.local_encoder.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        out = model(x, policy=ExitPolicy("maxprob", [0.0, 0.0, 0.0]))
        counted = counted_flops(lambda z: model(z, policy=ExitPolicy("maxprob", [0.0, 0.0, 0.0])), x)
    assert calls == [] and out.decisions["exit_index"].tolist() == [0] * 5
    glance, _, head = model._step_flops((1, 20, 20))
    assert out.flops.tolist() == [glance + head] * 5 and counted == 5 * (glance + head)


@pytest.mark.parametrize("kwargs,name", [({"patch_size": 21}, "patch_size"), ({"steps": 0}, "steps"),
                                         ({"grid": 14}, "grid"), ({"glance_size": 30}, "glance_size"),
                                         ({"exit_weights": [1, 1]}, "exit_weights")])
def test_bad_configuration_names_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        create_model("glance_focus_cnn", **{**SMALL, **kwargs})


def test_bad_decisions_name_the_argument():
    model, x = small_model(), inputs(2)
    with pytest.raises(ConfigError, match="locations"):
        model(x, locations=torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="locations"):
        model(x, locations=torch.full((2, 3), 16))
    with pytest.raises(ConfigError, match="exits"):
        model(x, exits=torch.tensor([0, 4]))
    with pytest.raises(ConfigError, match="image_size"):
        model(torch.randn(2, 1, 24, 24))


def test_label_free_policy_gradient_equals_the_exact_one():
    model, x = small_model(), inputs(6)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    model.train()
    torch.manual_seed(5)
    model.update_baseline(model(x), y)  # a non-zero baseline

    def policy_grads(target):
        model.zero_grad()
        torch.manual_seed(6)  # same sampled locations
        out = model(x, target=target)
        task = sum(F.cross_entropy(lg, y) for lg in out.exit_logits) / len(out.exit_logits)
        (task + out.aux_loss()).backward()
        return [p.grad.clone() for p in model.policy.parameters()], out

    free, out_free = policy_grads(None)
    exact, out_exact = policy_grads(y)
    assert torch.equal(out_free.decisions["locations"], out_exact.decisions["locations"])
    torch.testing.assert_close(out_free.logits, out_exact.logits)
    assert out_free.aux_loss().item() == 0.0
    for a, b in zip(free, exact):
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def pattern_canvases(count, templates, generator, canvas=24, size=8, grid=5):
    """Canvases with one class template at a grid-aligned place, plus noise; their boxes."""
    labels = torch.randint(0, templates.shape[0], (count,), generator=generator)
    offsets = torch.arange(grid) * (canvas - size) // (grid - 1)
    tops = offsets[torch.randint(0, grid, (count,), generator=generator)]
    lefts = offsets[torch.randint(0, grid, (count,), generator=generator)]
    x = 0.3 * torch.randn(count, 1, canvas, canvas, generator=generator)
    for i in range(count):
        x[i, 0, tops[i]:tops[i] + size, lefts[i]:lefts[i] + size] += templates[labels[i]]
    boxes = torch.stack([tops, lefts, tops + size, lefts + size], dim=1)
    return x, labels, boxes


def test_focusing_on_the_pattern_beats_random_patches():
    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (4, 8, 8), generator=g).float() * 2 - 1
    # zero mean in every 4x4 block: a 4x smaller glance sees (almost) nothing of the class
    templates = signs - F.avg_pool2d(signs, 4).repeat_interleave(4, 1).repeat_interleave(4, 2)
    x_train, y_train, box_train = pattern_canvases(512, templates, g)
    x_test, y_test, box_test = pattern_canvases(256, templates, g)
    config = dict(num_classes=4, image_size=24, glance_size=6, patch_size=8, grid=5, steps=2, width=4, hidden=16,
                  policy_hidden=8)
    accuracy = {}
    for how in ("true", "random"):
        torch.manual_seed(0)
        model = create_model("glance_focus_cnn", **config)
        true_train = model.crop.nearest(box_train[:, :2]).view(-1, 1)
        true_test = model.crop.nearest(box_test[:, :2]).view(-1, 1)
        fit_on_locations(model, x_train, y_train, lambda rows: true_train[rows] if how == "true" else torch.randint(
            0, 25, (32, 1), generator=g), train_size=512, steps=120, generator=g)
        where = true_test if how == "true" else torch.randint(0, 25, (256, 1), generator=g)
        with torch.no_grad():
            out = model(x_test, locations=where, exits=torch.ones(256, dtype=torch.long))
        accuracy[how] = (out.logits.argmax(1) == y_test).float().mean().item()
    assert accuracy["true"] > 0.85 and accuracy["true"] > accuracy["random"] + 0.3, accuracy


def test_budget_calibration_and_flops_cap_drive_the_model():
    from dynamicnets.inference import calibrate

    model, x = small_model(), inputs(32)
    y = torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(7))
    full = model.read_flops()
    calibration = calibrate(model, [(x, y)], 0.6 * full)
    with torch.no_grad():
        out = model(x, policy=calibration.policy)
    assert out.flops.mean().item() <= 0.6 * full
    assert out.flops.mean().item() == pytest.approx(calibration.mean_flops)
    costs = model.exit_costs((1, 20, 20))
    capped = ExitPolicy("maxprob", [1.1, 1.1, 1.1], max_flops=costs[1])  # nobody confident: all run to the cap
    with torch.no_grad():
        out = model(x, policy=capped)
    assert out.decisions["exit_index"].tolist() == [1] * 32 and out.flops.max().item() <= costs[1]


@pytest.mark.slow
def test_the_policy_learns_where_to_look():
    """Trained as the trainer does (no label in `forward`: the surrogate, then
    `update_baseline`), the greedy policy's patches beat random ones; the pattern is
    visible in the glance (brighter) but its class only at full resolution."""
    from dynamicnets.training.objective import dynamic_loss

    g = torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, (4, 8, 8), generator=g).float() * 2 - 1
    templates = signs - F.avg_pool2d(signs, 4).repeat_interleave(4, 1).repeat_interleave(4, 2) + 1.0
    x_train, y_train, _ = pattern_canvases(1024, templates, g)
    x_test, y_test, _ = pattern_canvases(256, templates, g)
    torch.manual_seed(0)
    model = create_model("glance_focus_cnn", num_classes=4, image_size=24, glance_size=6, patch_size=8, grid=5,
                         steps=2, width=4, hidden=16, policy_hidden=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(600):
        rows = torch.randint(0, 1024, (64,), generator=g)
        out = model(x_train[rows])
        loss = dynamic_loss(out, y_train[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.update_baseline(out, y_train[rows])
    model.eval()
    with torch.no_grad():
        learned = (model(x_test).logits.argmax(1) == y_test).float().mean().item()
        random = model(x_test, locations=torch.randint(0, 25, (256, 1), generator=g)).logits.argmax(1)
    random = (random == y_test).float().mean().item()
    assert learned > random + 0.15, (learned, random)
