"""`dynamic_resolution_resnet`: compact == masked for the same resolutions (batch 1, mixed, all
the same), per-resolution norms, FLOPs against FlopCounterMode, the inference policy and its
calibration, the cost loss, clear errors, a short learning run."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynamicnets as dn
from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.inference.resolution_policy import ResolutionPolicy, calibrate_resolution_policy
from dynamicnets.layers.resize import resize, resize_flops
from spatial_test_helpers import randomise_norms

DT = torch.float64


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Different BatchNorm statistics in every norm (so the per-resolution norms differ)."""
    randomise_norms(model, torch.Generator().manual_seed(seed))
    return model


def make(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    args = {"depth": 8, "width": 8} | kwargs
    return randomise(create_model("dynamic_resolution_resnet", **args).to(DT)).eval()


def inputs(batch: int, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("forced", [[2], [0], [0, 2, 1, 1, 0], [1, 1, 1, 1], [2, 2, 2]],
                         ids=["batch1_full", "batch1_small", "mixed", "all_middle", "all_full"])
def test_compact_equals_masked_for_forced_resolutions(forced):
    model = make()
    x = inputs(len(forced))
    index = torch.tensor(forced)
    with torch.no_grad():
        compact = model(x, "compact", resolution_index=index)
        masked = model(x, "masked", resolution_index=index)
    torch.testing.assert_close(compact.logits, masked.logits)
    assert compact.decisions["resolution_index"].tolist() == forced
    assert compact.decisions["resolution"].tolist() == [(16, 24, 32)[i] for i in forced]
    costs = model.resolution_costs((3, 32, 32))
    assert compact.flops.tolist() == [costs[i] for i in forced]


def test_each_sample_is_the_backbone_at_its_resolution_with_that_resolutions_norms():
    model = make()
    x = inputs(3)
    with torch.no_grad():
        out = model(x, resolution_index=torch.tensor([0, 1, 2]))
        for k, size in enumerate((16, 24, 32)):
            alone = model(x[k:k + 1], resolution_index=torch.tensor([k]))
            torch.testing.assert_close(out.logits[k:k + 1], alone.logits)
            assert resize(x[k:k + 1], size).shape[-1] == size
        # the norms of resolution 1 only touch samples that run at resolution 1
        model.backbone.stem.bn.bns[1].running_mean.add_(1.0)
        changed = model(x, resolution_index=torch.tensor([0, 1, 2])).logits
    assert torch.equal(changed[0], out.logits[0]) and torch.equal(changed[2], out.logits[2])
    assert not torch.allclose(changed[1], out.logits[1])


def test_shared_norms_use_one_norm_for_every_resolution():
    model = make(private_norms=False)
    assert len(model.backbone.stem.bn.bns) == 1
    x = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, "compact", resolution_index=torch.tensor([0, 2])).logits,
                                   model(x, "masked", resolution_index=torch.tensor([0, 2])).logits)


@pytest.mark.parametrize("kwargs", [{}, {"resolution_index": torch.tensor([0, 2, 1, 0])},
                                    {"resolution_index": torch.tensor([1, 1, 1, 1])}, {"execution": "masked"}])
def test_reported_flops_equal_flop_counter(kwargs):
    model = make()
    x = inputs(4)
    with torch.no_grad():
        out = model(x, **kwargs)
    assert int(out.flops.sum()) == counted_flops(lambda: model(x, **kwargs))


def test_training_flops_equal_flop_counter():
    model = make().train()
    x = inputs(4).float()
    model.float()
    out = model(x)
    assert int(out.flops.sum()) == counted_flops(lambda: model(x))
    assert len(out.exit_logits) == 4


def test_costs_are_the_plain_resnet_at_each_resolution_plus_the_predictor():
    model = create_model("dynamic_resolution_resnet")
    parts = model.cost_breakdown((3, 32, 32))
    resnet20 = create_model("resnet20")
    for size, backbone in zip((16, 24, 32), parts["backbone"]):
        assert backbone + parts["head"] == resnet20.flops((3, size, size))
    assert model.resolution_costs((3, 32, 32)) == [20_813_248, 46_321_088, 82_032_064]
    assert parts["predictor"] == model.predictor.flops((3, 32, 32)) == 405_696
    # resizing is not counted in any reported cost; its arithmetic is stated apart
    assert parts["resize"] == [resize_flops((3, 32, 32), s) for s in (16, 24, 32)]
    assert parts["resize"][-1] == 0 and parts["resize"][0] == 2 * 3 * 16 * (32 * 4 + 16 * 4)


def test_policy_bias_and_cap_steer_the_choice():
    model = make()
    x = inputs(6)
    costs = model.resolution_costs((3, 32, 32))
    with torch.no_grad():
        small = model(x, policy=ResolutionPolicy(bias=(100.0, 0.0, 0.0)))
        large = model(x, policy=ResolutionPolicy(bias=(0.0, 0.0, 100.0)))
        capped = model(x, policy=ResolutionPolicy(bias=(0.0, 0.0, 100.0), max_flops=costs[1]))
        masked = model(x, "masked", policy=ResolutionPolicy(bias=(0.0, 0.0, 100.0), max_flops=costs[1]))
    assert small.decisions["resolution_index"].tolist() == [0] * 6
    assert large.decisions["resolution_index"].tolist() == [2] * 6
    assert capped.decisions["resolution_index"].tolist() == [1] * 6
    assert capped.decisions["resolution_capped"].all()
    assert (capped.flops <= costs[1]).all() and model.worst_case_flops((3, 32, 32), ResolutionPolicy(
        max_flops=costs[1])) == costs[1]
    torch.testing.assert_close(capped.logits, masked.logits)
    assert dn.inference.worst_case_flops(model, (3, 32, 32), ResolutionPolicy(max_flops=costs[1])) == costs[1]
    assert dn.inference.worst_case_flops(model, (3, 32, 32)) == costs[2]


def test_calibrated_policy_meets_the_budget_and_round_trips():
    model = make()
    # a predictor with an opinion: large logits for the largest resolution on most inputs
    with torch.no_grad():
        model.predictor.fc.bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
    x = inputs(32, seed=3)
    costs = model.resolution_costs((3, 32, 32))
    loose = calibrate_resolution_policy(model, x, budget_flops=costs[-1])
    assert loose.meta["lam"] == 0.0 and all(b == 0.0 for b in loose.bias)
    budget = (costs[0] + costs[2]) / 2
    policy = calibrate_resolution_policy(model, [(x[:16], None), (x[16:], None)], budget_flops=budget)
    with torch.no_grad():
        out = model(x, policy=policy)
    assert out.flops.mean() <= budget
    assert out.flops.mean() == pytest.approx(policy.meta["mean_flops"])
    assert ResolutionPolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ConfigError, match="budget_flops"):
        calibrate_resolution_policy(model, x, budget_flops=costs[0] - 1)


def test_cost_loss_reaches_the_predictor():
    model = make().float().train()
    out = model(inputs(4).float())
    out.aux_losses["target_flops"].backward()
    assert model.predictor.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("resolutions", [(), (16, 16, 32), (24, 16), (16, 48), (0, 16), (16.0, 32)])
def test_bad_resolutions_are_refused(resolutions):
    with pytest.raises(ConfigError, match="resolutions"):
        create_model("dynamic_resolution_resnet", resolutions=resolutions, input_size=32)


@pytest.mark.parametrize("kwargs, key", [({"target_flops_ratio": 0.0}, "target_flops_ratio"),
                                         ({"target_flops_ratio": 1.5}, "target_flops_ratio"),
                                         ({"cost_weight": -1.0}, "cost_weight"),
                                         ({"cost_weight": float("nan")}, "cost_weight")])
def test_bad_cost_settings_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError, match=f"{key} must be"):
        create_model("dynamic_resolution_resnet", depth=8, width=4, **kwargs)


def test_bad_inputs_are_refused():
    model = make()
    with pytest.raises(ConfigError, match="resolutions"):
        model(inputs(2, size=24))
    with pytest.raises(ConfigError, match="resolution_index"):
        model(inputs(2), resolution_index=torch.tensor([0, 3]))
    with pytest.raises(ConfigError, match="bias"):
        model(inputs(2), policy=ResolutionPolicy(bias=(0.0, 1.0)))
    with pytest.raises(ConfigError, match="max_flops"):
        model(inputs(2), policy=ResolutionPolicy(max_flops=1000))


@pytest.mark.slow
def test_learns_digits_at_a_budget():
    """sklearn digits (8x8) at resolutions 4 and 8, 4 epochs (about 10 s): accuracy far above
    chance, the cost loss holds the mean cost near its target (0.6 of the full cost), and the
    predictor uses both resolutions."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:900], dtype=torch.float32)[:, None] / 8 - 1
    y = torch.tensor(digits.target[:900])
    torch.manual_seed(0)
    model = create_model("dynamic_resolution_resnet", in_chans=1, depth=8, width=8, resolutions=(4, 8),
                         target_flops_ratio=0.6, cost_weight=5.0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        model.train()
        for rows in torch.randperm(800, generator=generator).split(50):
            optimiser.zero_grad()
            out = model(x[rows])
            loss = sum(F.cross_entropy(e, y[rows]) for e in out.exit_logits) / len(out.exit_logits)
            (loss + out.aux_loss()).backward()
            optimiser.step()
    with torch.no_grad():
        out = model.eval()(x[800:])
    full = model.resolution_costs((1, 8, 8))[-1]
    assert (out.logits.argmax(1) == y[800:]).float().mean() > 0.8
    assert 0.45 < out.mean_flops() / full < 0.75
    assert 0 < out.decisions["resolution_index"].float().mean() < 1


def test_plain_resnet_weights_load_into_every_resolution():
    """A plain ResNet's state_dict loads (each BatchNorm into every resolution's): at full size the
    model is the plain network, at 16 it is the plain network on the resized image."""
    torch.manual_seed(0)
    plain = randomise(create_model("resnet20", width=8)).to(DT).eval()
    model = make(depth=20)
    model.backbone.load_state_dict(plain.state_dict())
    x = inputs(3)
    with torch.no_grad():
        full = model(x, resolution_index=torch.tensor([2, 2, 2])).logits
        small = model(x, resolution_index=torch.tensor([0, 0, 0])).logits
        torch.testing.assert_close(full, plain(x).logits)
        torch.testing.assert_close(small, plain(resize(x, 16)).logits)
