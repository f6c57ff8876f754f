"""DynConv CIFAR ResNets: sparse inference equals masked execution, honest per-batch
FLOPs, plain ResNet checkpoints load, the budget loss trains the gates, clear errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import dynamicnets as dn
from dynamicnets import ConfigError, create_model
from dynamicnets.gates.thresholds import GatePolicy
from spatial_test_helpers import randomise_norms

DT = torch.float64
GATE_FLOPS_20 = 147_456  # 7 gated blocks: 1x1 gates on 16x32x32 (3), 32x16x16 (2), 64x8x8 (2)


def randomise(model: nn.Module, seed: int = 0, gate_std: float = 1.0) -> nn.Module:
    """Non-trivial BN statistics, and gates whose logits spread around 0 (density ~1/2)."""
    generator = torch.Generator().manual_seed(seed)
    randomise_norms(model, generator)
    with torch.no_grad():
        for gate in getattr(model, "gates", []):
            gate.conv.weight.copy_(gate_std * torch.randn(gate.conv.weight.shape, generator=generator))
            gate.conv.bias.zero_()
    return model


def make_model(name: str = "dynconv_resnet20", **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return randomise(create_model(name, **kwargs).to(DT)).eval()


def make_input(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=DT)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# per-position gates with the positions strategy; 4x4 tile gates with the tiles strategy
# on 20x20 inputs (maps 20, 10, 5: the tiles do not divide the last two)
CONFIGS = {
    "positions": ({}, 32),
    "tiles": ({"gate_tile": 4}, 20),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request):
    kwargs, size = CONFIGS[request.param]
    return make_model(**kwargs), make_input(2, size)


# ------------------------------------------------------------------ compact == masked, FLOPs


def test_compact_equals_masked_with_the_models_own_gates(setup):
    model, x = setup
    with torch.no_grad():
        masked = model(x, execution="masked")
        compact = model(x)  # eval default: compact
        other = model(x, strategy="tiles" if model.gates[0].tile == 1 else "positions")
    torch.testing.assert_close(compact.logits, masked.logits, rtol=0, atol=1e-9)
    torch.testing.assert_close(other.logits, masked.logits, rtol=0, atol=1e-9)
    for i in range(model.num_gated_blocks):
        mask = masked.decisions[f"spatial_mask.{i}"]
        assert mask.dtype == torch.bool and mask.shape[0] == 2
        assert torch.equal(compact.decisions[f"spatial_mask.{i}"], mask)
    density = masked.decisions["density"]
    assert density.shape == (2,) and bool(((density > 0.2) & (density < 0.8)).all())  # non-trivial masks
    assert masked.decisions["block_density"].shape == (2, model.num_gated_blocks)
    torch.testing.assert_close(compact.flops, masked.decisions["compact_flops"], rtol=0, atol=0)
    torch.testing.assert_close(compact.decisions["compact_flops"], compact.flops, rtol=0, atol=0)


def test_out_flops_match_the_counter_per_batch(setup):
    model, x = setup
    with torch.no_grad():
        for execution in ("compact", "masked"):
            for strategy in ("positions", "tiles"):
                out = model(x, execution=execution, strategy=strategy)
                assert out.flops.shape == (2,) and out.flops.dtype == torch.float64
                got = counted(lambda: model(x, execution=execution, strategy=strategy))
                assert got == out.flops.sum().item(), (execution, strategy)
    size = x.shape[-1]
    gates = sum(gate.flops(*shape) for gate, shape in zip(model.gates, _gated_shapes(size)))
    assert masked_total(model, x) == 2 * (create_model("resnet20").flops((3, size, size)) + gates)


def _gated_shapes(size: int) -> list[tuple[int, int]]:
    stage = [size, -(-size // 2), -(-size // 4)]
    return [(stage[0], stage[0])] * 3 + [(stage[1], stage[1])] * 2 + [(stage[2], stage[2])] * 2


def masked_total(model, x) -> float:
    with torch.no_grad():
        return model(x, execution="masked").flops.sum().item()


def test_given_masks_replace_the_gates(setup):
    model, x = setup
    with torch.no_grad():
        own = model(x, execution="masked")
        shapes = [m.shape for m in (own.decisions[f"spatial_mask.{i}"] for i in range(model.num_gated_blocks))]
        generator = torch.Generator().manual_seed(7)
        masks = [torch.rand(s, generator=generator) < 0.4 for s in shapes]
        masked = model(x, masks=masks, execution="masked")
        for strategy in ("positions", "tiles"):
            compact = model(x, masks=masks, strategy=strategy)
            torch.testing.assert_close(compact.logits, masked.logits, rtol=0, atol=1e-9)
            assert counted(lambda: model(x, masks=masks, strategy=strategy)) == compact.flops.sum().item()
        assert counted(lambda: model(x, masks=masks, execution="masked")) == masked.flops.sum().item()
        # no gate runs: the masked path costs exactly the plain network
        assert masked.flops.tolist() == [float(create_model("resnet20").flops(tuple(x.shape[1:])))] * 2
        for i, m in enumerate(masks):
            assert torch.equal(masked.decisions[f"spatial_mask.{i}"], m)
        float_masks = [m.to(DT) for m in masks]  # 0/1 floats are hard masks too
        torch.testing.assert_close(model(x, masks=float_masks).logits, masked.logits, rtol=0, atol=1e-9)


def test_channels_last_model_and_input():
    model = make_model()
    x = make_input(2)
    with torch.no_grad():
        want = model(x, execution="masked").logits
        model_cl = make_model().to(memory_format=torch.channels_last)
        got = model_cl(x.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-9)


def test_compact_runs_under_bf16_autocast_as_validation_in_training_does():
    """The sparse path's in-place matmul is outside autocast: it must follow the bf16 rows."""
    torch.manual_seed(0)
    model = randomise(create_model("dynconv_resnet20")).eval()  # float32, as trained
    x = make_input(2).float()
    with torch.no_grad():
        masks = [m for _, m in sorted(model(x, execution="masked").decisions.items())
                 if _.startswith("spatial_mask.")]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            masked = model(x, masks=masks, execution="masked").logits.float()
            compact = model(x, masks=masks).logits.float()
    assert torch.isfinite(compact).all()
    torch.testing.assert_close(compact, masked, rtol=0.05, atol=0.05)


# ------------------------------------------------------------------ policies


def test_policy_thresholds_switch_every_position_off_or_on():
    model = make_model()
    x = make_input(2)
    plain = randomise(create_model("resnet20").to(DT)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    n = model.num_gated_blocks
    with torch.no_grad():
        none = model(x, policy=GatePolicy.constant(math.inf, n))
        every = model(x, policy=GatePolicy.constant(-math.inf, n))
        want_plain = plain(x).logits
    fixed = model.spatial_fixed_flops((3, 32, 32)) + GATE_FLOPS_20
    assert none.flops.tolist() == [float(fixed)] * 2
    assert none.decisions["density"].tolist() == [0.0, 0.0]
    assert every.decisions["density"].tolist() == [1.0, 1.0]
    assert every.flops.tolist() == [float(plain.flops((3, 32, 32)) + GATE_FLOPS_20)] * 2
    torch.testing.assert_close(every.logits, want_plain, rtol=0, atol=1e-9)
    with torch.no_grad():
        assert counted(lambda: model(x, policy=GatePolicy.constant(math.inf, n))) == 2 * fixed


# ------------------------------------------------------------------ plain checkpoints


def test_a_plain_resnet20_checkpoint_loads_and_reproduces_the_plain_network():
    torch.manual_seed(3)
    plain = randomise(create_model("resnet20").to(DT), seed=5).eval()
    model = make_model()
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    gate_keys = {k for k in model.state_dict() if k.startswith("gates.")}
    assert set(result.missing_keys) == gate_keys == {f"gates.{i}.conv.{p}" for i in range(7) for p in ("weight", "bias")}
    x = make_input(3)
    with torch.no_grad():
        want = plain(x).logits
        shapes = [(3, 32, 32)] * 3 + [(3, 16, 16)] * 2 + [(3, 8, 8)] * 2
        ones = [torch.ones(s, dtype=torch.bool) for s in shapes]
        for kwargs in ({}, {"execution": "masked"}, {"strategy": "tiles"}):
            torch.testing.assert_close(model(x, masks=ones, **kwargs).logits, want, rtol=0, atol=1e-9)


# ------------------------------------------------------------------ training


def test_training_adds_the_budget_loss_that_reaches_the_gates():
    torch.manual_seed(0)
    model = create_model("dynconv_resnet20", width=8, budget=0.5).train()
    x = make_input(4, 16).float()
    out = model(x, generator=torch.Generator().manual_seed(0))
    assert set(out.aux_losses) == {"flops_budget"}
    for i in range(model.num_gated_blocks):
        mask = out.decisions[f"spatial_mask.{i}"]
        assert mask.dtype == torch.bool
    biases = [gate.conv.bias for gate in model.gates]
    budget_grads = torch.autograd.grad(out.aux_losses["flops_budget"], biases, retain_graph=True)
    assert all(bool(g.abs().sum() > 0) for g in budget_grads)  # the budget alone trains every gate
    (F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])) + out.aux_loss()).backward()
    for gate in model.gates:
        assert gate.conv.weight.grad is not None and bool(gate.conv.weight.grad.abs().sum() > 0)
        assert bool(gate.conv.bias.grad.abs() > 0)
    for name, p in model.named_parameters():  # every parameter gets a gradient in training
        assert p.grad is not None, name


def test_progress_changes_the_budget_loss():
    torch.manual_seed(0)
    model = create_model("dynconv_resnet20", width=8, budget=0.5).train()
    x = make_input(2, 16).float()
    losses = {}
    for progress in (None, 0.0, 1 / 6, 1.0):
        out = model(x, progress=progress, generator=torch.Generator().manual_seed(0))
        losses[progress] = out.aux_losses["flops_budget"].item()
    # the gates start with ~95% of positions on: every block sits above the budget, so the
    # block term adds most at progress 0, less at 1/6, nothing once the bounds are [0, 1]
    assert losses[0.0] > losses[1 / 6] > losses[1.0] > 0
    assert losses[1.0] == pytest.approx(losses[None], rel=1e-6)
    model.eval()
    with torch.no_grad():
        assert model(x, progress=0.0).aux_losses == {}


def test_a_few_sgd_steps_move_the_density_towards_the_budget():
    """Labels depend on the left half of 16x16 inputs; budget 0.5, gates start ~all on."""
    def batch(seed, n=32):
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 3, 16, 16, generator=generator)
        return x, (x[..., :8].mean(dim=(1, 2, 3)) > 0).long()

    torch.manual_seed(0)
    model = create_model("dynconv_resnet20", num_classes=2, width=8, budget=0.5)
    held_out, _ = batch(99, 64)

    def eval_density():
        model.eval()
        with torch.no_grad():
            density = model(held_out, execution="masked").decisions["density"].mean().item()
        model.train()
        return density

    before = eval_density()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    generator = torch.Generator().manual_seed(5)
    trained, budget_losses = [], []
    steps = 6
    for step in range(steps):
        x, y = batch(step)
        out = model(x, progress=step / steps, generator=generator)
        loss = F.cross_entropy(out.logits, y) + out.aux_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        trained.append(out.decisions["density"].mean().item())
        budget_losses.append(out.aux_losses["flops_budget"].item())
    after = eval_density()
    # measured (seeded): eval density 1.00 -> 0.73, sampled density 0.96 -> 0.81, budget loss 4.1 -> 1.0
    assert before > 0.95
    assert 0.5 - 0.15 < after < before - 0.15
    assert trained[-1] < trained[0] - 0.1
    assert budget_losses[-1] < budget_losses[0] / 2


# ------------------------------------------------------------------ bad input


def test_bad_masks_are_refused():
    model = make_model()
    x = make_input(2)
    good = [torch.ones(2, 32, 32, dtype=torch.bool)] * 3 + [torch.ones(2, 16, 16, dtype=torch.bool)] * 2 + \
        [torch.ones(2, 8, 8, dtype=torch.bool)] * 2
    with pytest.raises(ConfigError, match=r"dynconv_resnet20.*masks must hold one .* per gated block \(7\), got 6"):
        model(x, masks=good[:6])
    wrong = list(good)
    wrong[3] = torch.ones(2, 32, 32, dtype=torch.bool)
    for execution in ("masked", "compact"):
        with pytest.raises(ConfigError, match=r"dynconv_resnet20.*masks\[3\].*\(B, H, W\) = \(2, 16, 16\)"):
            model(x, masks=wrong, execution=execution)
    soft = list(good)
    soft[0] = torch.full((2, 32, 32), 0.5, dtype=DT)
    with pytest.raises(ConfigError, match="hard"):
        model(x, masks=soft)


@pytest.mark.parametrize("budget", [0, 1.5, -0.1, math.nan, "x"])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(ConfigError, match=r"dynconv_resnet20.*budget.*\(0, 1\]"):
        create_model("dynconv_resnet20", budget=budget)


def test_bad_policy_strategy_and_arguments_are_refused():
    model = make_model()
    x = make_input(1)
    with pytest.raises(ConfigError, match="dynconv_resnet20.*gate policy has 6 thresholds, the model has 7 gates"):
        model(x, policy=GatePolicy.constant(0.0, 6))
    with pytest.raises(ConfigError, match="sparse strategy must be one of.*got 'rows'"):
        model(x, strategy="rows")
    with pytest.raises(ConfigError, match="execution must be one of"):
        model(x, execution="indexed")
    for kwargs, match in [({"gate_tile": 0}, "gate_tile"), ({"tau": 0.0}, "tau"),
                          ({"budget_weight": -1.0}, "budget_weight"),
                          ({"strategy": "tiles", "sparse_tile": 0}, "tile size >= 1")]:
        with pytest.raises(ConfigError, match=match):
            create_model("dynconv_resnet20", **kwargs)
    with pytest.raises(ConfigError, match="dynconv_resnet20"):
        model(torch.randn(1, 1, 32, 32, dtype=DT))


# ------------------------------------------------------------------ library integration


def test_count_flops_is_the_masked_forward():
    model = create_model("dynconv_resnet20")
    assert dn.count_flops(model, (3, 32, 32)) == 81_626_368 + GATE_FLOPS_20
    assert "dynconv_resnet20" in dn.list_models() and "dynconv_resnet32" in dn.list_models()


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_gate_noise_end_outside_unit_interval_is_refused(bad):
    with pytest.raises(ConfigError, match="gate_noise_end"):
        create_model("dynconv_resnet20", gate_noise_end=bad)


def test_full_flops_is_every_position_with_its_gates_whatever_the_gates_decide():
    from dynamicnets.pipelines.evaluate import full_flops_per_sample

    model = create_model("dynconv_resnet20").train()
    for gate in model.gates:  # gates that switch everything off: a zero input would count almost nothing
        nn.init.constant_(gate.conv.bias, -100.0)
    full = model.full_flops((3, 32, 32))
    assert full == 81_626_368 + GATE_FLOPS_20
    assert model.training  # restored
    x = torch.zeros(1, 3, 32, 32)
    everything = GatePolicy.constant(float("-inf"), model.num_gated_blocks)
    with torch.no_grad():
        model.eval()
        assert counted(lambda: model(x, policy=everything, strategy="dense")) == full
        assert model(x).flops.item() < full / 2
    assert full_flops_per_sample(model, (3, 32, 32)) == full


def test_the_cached_fixed_cost_follows_a_new_head():
    model = create_model("dynconv_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)  # fills the cache for (3, 32, 32)
        model.reset_classifier(100)
        out = model(x)
        assert out.flops.sum().item() == counted(lambda: model(x))
