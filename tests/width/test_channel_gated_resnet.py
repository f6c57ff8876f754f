"""Channel-gated CIFAR ResNets (FBS, Gumbel): compact == masked, honest FLOPs, figures."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.models.width import ChannelGatedResNet
from dynamicnets.flops import counted_flops

SHAPE = (3, 8, 8)
NAMES = ["fbs_resnet_cifar", "gumbel_channel_resnet_cifar"]


def model(name: str, gate_bias: float | None = None, **kw) -> ChannelGatedResNet:
    """A model with non-trivial BatchNorm statistics; `gate_bias` sets every gate's bias."""
    torch.manual_seed(0)
    net = create_model(name, num_classes=5, **kw)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        if name.startswith("gumbel"):
            for gate in net.gates:
                gate.fc.weight.mul_(10.0)  # spread the keep decisions across samples
        if gate_bias is not None:
            for gate in net.gates:
                gate.fc.bias.fill_(gate_bias)
    return net


def batch(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(seed))


CASES = [
    ("fbs_resnet_cifar", None, {}),
    ("fbs_resnet_cifar", None, {"density": 1.0}),
    ("fbs_resnet_cifar", None, {"density": 0.01}),  # one channel per block
    ("gumbel_channel_resnet_cifar", 0.0, {}),
    ("gumbel_channel_resnet_cifar", 50.0, {}),  # all kept
    ("gumbel_channel_resnet_cifar", -50.0, {}),  # min_keep only
]


@pytest.mark.parametrize(
    "name, bias, kw, n", [(*case, 4) for case in CASES] + [(*CASES[0], 1), (*CASES[3], 1)],
    ids=lambda v: str(v),
)
def test_compact_equals_masked_in_eval(name, bias, kw, n):
    net = model(name, bias, **kw).eval()
    x = batch(n)
    with torch.no_grad():
        compact = net(x)  # eval default
        masked = net(x, execution="masked")
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-4, atol=1e-4)
    for key in ("channel_keep_rate", "block_keep_rates", "kept_flops"):
        assert torch.equal(compact.decisions[key], masked.decisions[key])
    full = net.cost_parts(SHAPE)
    assert (masked.flops == full[0] + float(full[1] @ full[2])).all()
    assert (compact.flops <= masked.flops).all()


@pytest.mark.parametrize("name", NAMES)
def test_reported_flops_equal_flop_counter_on_both_paths(name):
    net = model(name, 0.0 if name.startswith("gumbel") else None).eval()
    x = batch(3)
    for execution in ("compact", "masked"):
        with torch.no_grad():
            out = net(x, execution=execution)
        assert out.flops.dtype == torch.float64 and out.flops.shape == (3,)
        assert int(out.flops.sum()) == counted_flops(net, x, execution=execution)


def test_fbs_flops_are_per_sample_exact_and_keep_exactly_k():
    net = model("fbs_resnet_cifar", density=0.3).eval()
    x = batch(4)
    with torch.no_grad():
        out = net(x)
    _, per_channel, channels = net.cost_parts(SHAPE)
    ks = torch.ceil(0.3 * channels - 1e-9)
    assert torch.allclose(out.decisions["block_keep_rates"], (ks / channels).float().expand(4, -1))
    assert torch.equal(out.flops, out.decisions["kept_flops"])  # fixed k: no padding
    assert int(out.flops[0]) == counted_flops(net, x[:1])


def test_gumbel_padding_is_charged_and_a_sample_alone_costs_what_it_keeps():
    net = model("gumbel_channel_resnet_cifar", 0.0).eval()
    x = batch(6)
    with torch.no_grad():
        out = net(x)
    kept = out.decisions["kept_flops"]
    assert kept.unique().numel() > 1  # the samples keep different channel counts
    assert (out.flops >= kept).all() and (out.flops > kept).any()
    assert (out.flops == out.flops[0]).all()  # every sample ran the batch's K per block
    for b in (0, 3):
        with torch.no_grad():
            alone = net(x[b : b + 1])
        assert alone.flops[0] == kept[b] == counted_flops(net, x[b : b + 1])


def test_keep_rate_decisions():
    net = model("gumbel_channel_resnet_cifar", 0.0).eval()
    with torch.no_grad():
        out = net(batch(3))
    rates, overall = out.decisions["block_keep_rates"], out.decisions["channel_keep_rate"]
    _, _, channels = net.cost_parts(SHAPE)
    assert rates.shape == (3, 9) and overall.shape == (3,)
    assert ((rates > 0) & (rates <= 1)).all()
    expected = (rates.double() * channels).sum(dim=1) / channels.sum()
    torch.testing.assert_close(overall.double(), expected)


def test_default_figures_in_the_docstring():
    """The module docstring's params and FLOPs at depth 20, 3x32x32, 10 classes."""
    x = torch.randn(1, 3, 32, 32)
    fbs = create_model("fbs_resnet_cifar").eval()
    gumbel = create_model("gumbel_channel_resnet_cifar").eval()
    static = create_model("resnet20")
    params = [sum(p.numel() for p in m.parameters()) for m in (fbs, gumbel, static)]
    assert params == [286_378, 286_378, 272_474]
    with torch.no_grad():
        assert fbs(x).flops.item() == 41_545_472 == counted_flops(fbs, x)
        assert fbs(x, execution="masked").flops.item() == 81_653_504
        for bias, flops in ((50.0, 81_653_504), (-50.0, 4_423_424)):
            for gate in gumbel.gates:
                gate.fc.bias.fill_(bias)
            assert gumbel(x).flops.item() == flops == counted_flops(gumbel, x)
    gate_flops = sum(g.flops() for g in fbs.gates)
    assert (gate_flops, params[0] - params[2]) == (27_136, 13_904)
    assert 81_653_504 - gate_flops == static.flops((3, 32, 32))


@pytest.mark.parametrize("name, aux", [(NAMES[0], "saliency_l1"), (NAMES[1], "target_rate")])
def test_training_reports_full_cost_and_both_losses_train_the_gates(name, aux):
    net = model(name).train()
    out = net(batch(4), generator=torch.Generator().manual_seed(0))
    full = net.cost_parts(SHAPE)
    assert (out.flops == full[0] + float(full[1] @ full[2])).all()
    assert set(out.aux_losses) == {aux}
    gate_weights = [g.fc.weight for g in net.gates]
    task = F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3]))
    for loss in (task, out.aux_losses[aux]):  # each alone reaches every gate
        grads = torch.autograd.grad(loss, gate_weights, retain_graph=True)
        assert all(g.abs().sum() > 0 for g in grads)
    assert net.eval()(batch(2)).aux_losses == {}


def test_backbone_loads_a_static_resnet20():
    net = create_model("gumbel_channel_resnet_cifar")
    static = create_model("resnet20")
    net.backbone.load_state_dict(static.state_dict())  # strict: same keys and shapes
    with torch.no_grad():
        for gate in net.gates:
            gate.fc.bias.fill_(50.0)  # every channel kept: the static network
        x = batch(2)
        torch.testing.assert_close(net.eval()(x).logits, static.eval()(x).logits)


def test_compact_needs_eval_mode():
    net = model("fbs_resnet_cifar").train()
    with pytest.raises(ConfigError, match="eval mode"):
        net(batch(2), execution="compact")


@pytest.mark.parametrize(
    "name, kw, key",
    [
        ("fbs_resnet_cifar", {"density": 0.0}, "density"),
        ("fbs_resnet_cifar", {"l1_weight": -1.0}, "l1_weight"),
        ("fbs_resnet_cifar", {"depth": 21}, "depth"),
        ("gumbel_channel_resnet_cifar", {"target_rate": 2.0}, "target_rate"),
        ("gumbel_channel_resnet_cifar", {"tau": 0.0}, "tau"),
        ("gumbel_channel_resnet_cifar", {"min_keep": 17}, "min_keep"),
        ("gumbel_channel_resnet_cifar", {"rate_weight": -0.5}, "rate_weight"),
    ],
)
def test_bad_arguments_raise_config_error_naming_them(name, kw, key):
    with pytest.raises(ConfigError, match=key):
        create_model(name, **kw)


def test_bad_execution_and_input_raise_config_error():
    net = model("fbs_resnet_cifar").eval()
    with pytest.raises(ConfigError, match="execution"):
        net(batch(1), execution="slice")
    with pytest.raises(ConfigError, match="in_chans"):
        net(torch.randn(1, 1, 8, 8))
