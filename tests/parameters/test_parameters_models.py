"""Dynamic-parameter models: every conv/activation switch keeps the model contract."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import dynamicnets.models.parameters  # noqa: F401  (registers the models)
from dynamicnets import create_model, list_models
from dynamicnets.errors import ConfigError
from dynamicnets.models.parameters import CONVS, DynamicCifarResNet, MobileNetV2Cifar
from dynamicnets.flops import counted_flops

ACTS = ("relu", "dyrelu_a", "dyrelu_b", "dyrelu_c")


def tiny_resnet(conv, activation, **kw):
    torch.manual_seed(0)
    return DynamicCifarResNet(8, 5, 3, 4, conv=conv, activation=activation, num_experts=3, **kw)


def tiny_mobilenet(conv, activation, **kw):
    torch.manual_seed(0)
    return MobileNetV2Cifar(
        5, 3, 0.25, conv=conv, activation=activation, num_experts=3, last_channels=32, **kw
    )


BUILDERS = {"resnet": tiny_resnet, "mobilenetv2": tiny_mobilenet}
# every activation with static convs, every conv with ReLU, and one combination
SWITCHES = [("static", act) for act in ACTS] + [(conv, "relu") for conv in CONVS[1:]]
VARIANTS = [
    (arch, conv, act) for arch in BUILDERS for conv, act in SWITCHES + [("condconv", "dyrelu_b")]
]


def routed_convs(conv):
    return conv in ("condconv", "dyconv")


def test_models_are_registered():
    assert {"resnet20_condconv", "resnet20_dyconv", "resnet20_dyrelu", "mobilenetv2_cifar"} <= set(
        list_models()
    )


@pytest.mark.parametrize("arch, conv, act", VARIANTS)
def test_flops_equal_flop_counter_and_every_parameter_learns(arch, conv, act):
    model = BUILDERS[arch](conv, act)
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (3, 5)
    assert out.flops.dtype == torch.float64 and out.flops.shape == (3,)
    assert int(out.flops.sum()) == counted_flops(model, x)
    if routed_convs(conv):
        routing = out.decisions["routing"]
        assert routing.shape[0] == 3 and routing.shape[2] == 3
    else:
        assert "routing" not in out.decisions
    model.train()
    out = model(x)
    F.cross_entropy(out.logits, torch.tensor([0, 2, 4])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize(
    "arch, conv", list(itertools.product(BUILDERS, ("condconv", "dyconv", "weightnet")))
)
def test_batched_equals_per_sample_in_eval(arch, conv):
    model = BUILDERS[arch](conv, "dyrelu_b").eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        batched = model(x).logits
        looped = torch.cat([model(x[b : b + 1]).logits for b in range(4)])
        channels_last = model(x.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(batched, looped, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, channels_last, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", BUILDERS)
def test_temperature_reaches_every_dyconv(arch):
    model = BUILDERS[arch]("dyconv", "relu").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        sharp = model(x).decisions["routing"]
        flat = model(x, temperature=1e6).decisions["routing"]
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / 3), atol=1e-5, rtol=0)
    assert not torch.allclose(sharp, flat, atol=1e-3)
    torch.testing.assert_close(sharp.sum(dim=2), torch.ones(sharp.shape[:2]))


# (params, FLOPs) on 3x32x32, 10 classes: the figures quoted in the model docstrings.
FIGURES = {
    ("resnet20_condconv", ()): (1_076_834, 83_769_472),
    ("resnet20_dyconv", ()): (1_082_222, 83_779_936),
    ("resnet20_dyrelu", ()): (296_766, 81_669_248),
    ("mobilenetv2_cifar", ()): (700_490, 55_938_048),
    ("mobilenetv2_cifar", (("width_mult", 0.35),)): (408_938, 31_222_272),
    ("mobilenetv2_cifar", (("width_mult", 0.35), ("activation", "dyrelu_b"))): (
        2_168_858,
        34_688_512,
    ),
    ("mobilenetv2_cifar", (("activation", "dyrelu_b"),)): (3_180_086, 60_827_008),
    ("mobilenetv2_cifar", (("conv", "condconv"),)): (2_123_730, 59_711_936),
    ("mobilenetv2_cifar", (("conv", "dyconv"),)): (2_678_170, 60_816_896),
    ("mobilenetv2_cifar", (("conv", "weightnet"),)): (3_883_962, 63_200_896),
    ("mobilenetv2_cifar", (("width_mult", 1.0),)): (2_236_682, 175_952_896),
    ("mobilenetv2_cifar", (("width_mult", 0.35), ("stem_stride", 2))): (408_938, 7_824_768),
    ("mobilenetv2_cifar", (("width_mult", 0.35), ("stem_stride", 2), ("activation", "dyrelu_b"))): (
        2_168_858,
        11_291_008,
    ),
    ("mobilenetv2_cifar", (("width_mult", 0.35), ("stem_stride", 2), ("conv", "condconv"))): (1_146_498, 9_776_000),
    ("mobilenetv2_cifar", (("width_mult", 0.35), ("stem_stride", 2), ("conv", "dyconv"))): (1_418_500, 10_317_168),
}


@pytest.mark.parametrize("name, kwargs", list(FIGURES), ids=lambda v: str(v))
def test_published_figures(name, kwargs):
    model = create_model(name, device="meta", **dict(kwargs))
    params = sum(p.numel() for p in model.parameters())
    assert (params, model.flops((3, 32, 32))) == FIGURES[(name, kwargs)]


def test_stem_stride_2_cost_equals_flop_counter():
    model = create_model("mobilenetv2_cifar", width_mult=0.35, stem_stride=2, conv="dyconv").eval()
    x = torch.zeros(2, 3, 32, 32)
    assert counted_flops(model, x) == 2 * model.flops((3, 32, 32))


@pytest.mark.parametrize("conv, act", [("condconv", "dyrelu_c"), ("weightnet", "relu6")])
def test_device_and_dtype_reach_every_layer(conv, act):
    model = tiny_mobilenet(conv, act, device="meta")
    tensors = itertools.chain(model.parameters(), model.buffers())
    assert all(t.device.type == "meta" for t in tensors)
    model = tiny_resnet(conv, act, dtype=torch.float64).eval()
    out = model(torch.randn(2, 3, 8, 8, dtype=torch.float64))
    assert out.logits.dtype == torch.float64


def test_bad_switches_raise_config_error():
    with pytest.raises(ConfigError, match="conv must be one of"):
        create_model("mobilenetv2_cifar", conv="deformable")
    with pytest.raises(ConfigError, match="activation must be one of"):
        create_model("resnet20_condconv", activation="gelu")
    with pytest.raises(ConfigError, match="activation must be one of"):
        create_model("resnet20_dyrelu", variant="d")
    with pytest.raises(ConfigError, match="width_mult"):
        create_model("mobilenetv2_cifar", width_mult=0)
    with pytest.raises(ConfigError, match="stem_stride must be 1 or 2"):
        create_model("mobilenetv2_cifar", stem_stride=3)
    with pytest.raises(ConfigError, match="expects per-sample inputs"):
        create_model("resnet20_dyconv").flops((1, 32, 32))


@pytest.mark.parametrize("variant", ["a", "b"])
def test_dyrelu_started_as_relu_computes_the_static_resnet(variant):
    torch.manual_seed(0)
    static = create_model("resnet20").eval()
    for module in static.modules():  # non-trivial statistics, so the comparison means something
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    dynamic = create_model("resnet20_dyrelu", variant=variant, start_as_relu=True).eval()
    missing, unexpected = dynamic.load_state_dict(static.state_dict(), strict=False)
    assert not unexpected and all(".hyper." in key for key in missing)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dynamic(x).logits, static(x).logits, rtol=1e-5, atol=1e-5)
    # fc2 is zero but still learns: one backward step moves it.
    dynamic.train()
    dynamic(x).logits.sum().backward()
    assert any(m.fc2.weight.grad.abs().sum() > 0 for m in dynamic.modules() if hasattr(m, "fc2"))


def test_dyrelu_start_as_relu_is_checked():
    with pytest.raises(ConfigError, match="start_as_relu must be true or false"):
        create_model("resnet20_dyrelu", start_as_relu="yes")
    with pytest.raises(ConfigError, match="variant 'a' or 'b'"):
        create_model("resnet20_dyrelu", variant="c", start_as_relu=True)
