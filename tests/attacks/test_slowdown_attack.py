"""DeepSloth and PGD on a multi-exit CNN trained briefly on digits, and on a gated ResNet:
the attacks do what they claim, stay within their budget, and a cap bounds them."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.attacks import InputSpace, craft, pgd_attack, score_early_exit, score_forward, slowdown_attack
from dynamicnets.inference import calibrate_gate_rate

from attack_helpers import confident_policy, digits_split, trained_exits

EPS = 8 / 255


@pytest.fixture(scope="module")
def setup():
    model = trained_exits()
    _, _, x_val, y_val = digits_split()
    return model, x_val[:200], y_val[:200]


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_slowdown_raises_flops_and_lowers_efficacy_under_the_same_policy(setup):
    model, x, y = setup
    policy = confident_policy()
    clean = score_early_exit(model, x, y, policy)
    assert clean["exit_histogram"][-1] < len(y) * 0.5  # the exits are confident on clean digits
    for eps in (EPS, 0.1):
        attacked = score_early_exit(model, slowdown_attack(model, x, eps=eps, steps=20, generator=_seeded()), y, policy)
        assert attacked["mean_flops"] > clean["mean_flops"]
        assert attacked["efficacy"] < clean["efficacy"]
        assert attacked["exit_histogram"][-1] > clean["exit_histogram"][-1]
    assert attacked["exit_histogram"][-1] > 0.8 * len(y)  # at eps 0.1 nearly everyone runs to the end


def test_attacks_leave_the_model_untouched(setup):
    model, x, y = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    slowdown_attack(model, x[:16], eps=EPS, steps=2)
    pgd_attack(model, x[:16], y[:16], eps=EPS, steps=2)
    assert model.training and all(m.training for m in model.modules())  # modes restored
    model.eval()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN statistics too
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("kind", ["slowdown", "pgd"])
def test_perturbation_stays_within_eps_and_the_pixel_range(setup, kind):
    model, x, y = setup
    adv = craft(kind, model, x, y, eps=EPS, steps=5, step_size=0.05, generator=_seeded())
    change = (adv - x).abs().max()
    assert 0 < change <= EPS + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_budget_is_in_pixels_for_normalised_inputs(setup):
    model, x, _ = setup
    space = InputSpace(mean=(0.3,), std=(0.25,), low=0.0, high=1.0)
    inputs = space.to_inputs(x)  # what a pipeline that normalises would hand the model
    adv = slowdown_attack(model, inputs, eps=EPS, steps=5, step_size=0.05, space=space, generator=_seeded())
    pixels, clean = space.to_pixels(adv), space.to_pixels(inputs)
    assert (pixels - clean).abs().max() <= EPS + 1e-6
    assert (adv - inputs).abs().max() > EPS  # in input units the change is eps / std
    assert pixels.min() >= -1e-6 and pixels.max() <= 1 + 1e-6


def test_max_flops_bounds_every_attacked_sample(setup):
    model, x, y = setup
    costs = model.exit_costs((1, 8, 8))
    adv = slowdown_attack(model, x, eps=0.1, steps=20, generator=_seeded())
    uncapped = score_early_exit(model, adv, y, confident_policy())
    capped = score_early_exit(model, adv, y, confident_policy(max_flops=costs[1]))
    assert uncapped["max_flops"] == costs[-1]
    assert capped["max_flops"] <= costs[1] and capped["cap"] == costs[1]
    assert capped["exit_histogram"][-1] == 0
    assert capped["efficacy"] > uncapped["efficacy"]


def test_pgd_lowers_accuracy(setup):
    model, x, y = setup
    policy = confident_policy()
    clean = score_early_exit(model, x, y, policy)
    attacked = score_early_exit(model, pgd_attack(model, x, y, eps=0.1, steps=10, generator=_seeded()), y, policy)
    assert attacked["accuracy"] < clean["accuracy"] - 0.2


def test_slowdown_turns_the_gates_of_a_skipping_model_on():
    torch.manual_seed(0)
    model = create_model("convnet_aig_resnet", depth=14, width=4, in_chans=1).eval()
    x, y = torch.rand(64, 1, 8, 8), torch.randint(0, 10, (64,))
    calibrate_gate_rate(model, x, 0.3)
    clean = score_forward(model, x, y)
    attacked = score_forward(model, slowdown_attack(model, x, eps=0.1, steps=10, generator=_seeded()), y)
    assert clean["executed_fraction"] == pytest.approx(0.3, abs=0.05)
    assert attacked["executed_fraction"] > clean["executed_fraction"] + 0.3
    assert attacked["mean_flops"] > clean["mean_flops"]


@pytest.mark.parametrize("kwargs, named", [
    ({"eps": -0.1, "steps": 5}, "eps"),
    ({"eps": "8/0", "steps": 5}, "eps"),
    ({"eps": EPS, "steps": 0}, "steps"),
    ({"eps": EPS, "steps": 2.5}, "steps"),
    ({"eps": EPS, "steps": 5, "step_size": 0}, "step_size"),
    ({"eps": EPS, "steps": 5, "norm": "l2"}, "norm"),
])
def test_bad_arguments_name_the_argument(setup, kwargs, named):
    model, x, y = setup
    for attack in (lambda: slowdown_attack(model, x[:4], **kwargs), lambda: pgd_attack(model, x[:4], y[:4], **kwargs)):
        with pytest.raises(ConfigError, match=rf"^{named}:"):
            attack()


def test_slowdown_needs_exits_or_gates():
    model = create_model("small_cnn", width=4).eval()
    with pytest.raises(ConfigError, match=r"^model: SmallCNN has neither early exits"):
        slowdown_attack(model, torch.rand(2, 1, 8, 8), eps=EPS, steps=1)


def test_fraction_text_is_accepted(setup):
    model, x, _ = setup
    a = slowdown_attack(model, x[:8], eps="8/255", steps=2, generator=_seeded())
    b = slowdown_attack(model, x[:8], eps=EPS, steps=2, generator=_seeded())
    assert torch.equal(a, b)
