"""Deformable CIFAR ResNets: the plain network at start, honest costs, learnable offsets."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, DynamicOutput, create_model, list_models
from dynamicnets.flops import count_flops, counted_flops
from dynamicnets.models import model_info, registered_model
from dynamicnets.models.spatial.deformable_resnet import (
    DeformableBasicBlock,
    DeformableCifarResNet,
    DeformConvNorm,
)

CIFAR = (3, 32, 32)

# name, params, FLOPs at the defaults (last stage, modulated), v1 params, v1 FLOPs,
# the plain ResNet's params and FLOPs (as in the module docstring)
FIGURES = [
    ("deformable_resnet20", 319_211, 87_598_336, 303_632, 85_607_680, 272_474, 81_626_368),
    ("deformable_resnet32", 544_801, 148_202_752, 518_836, 144_884_992, 466_906, 138_249_472),
]


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def offset_convs(model: DeformableCifarResNet) -> list[torch.nn.Conv2d]:
    return [m.conv2.conv.offset_conv for m in model.modules() if isinstance(m, DeformableBasicBlock)]


def randomise_offsets(model: DeformableCifarResNet, scale: float = 0.05) -> None:
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conv in offset_convs(model):
            conv.weight.copy_(scale * torch.randn(conv.weight.shape, generator=generator))
            conv.bias.copy_(scale * torch.randn(conv.bias.shape, generator=generator))


@pytest.mark.parametrize("name,params,flops,v1_params,v1_flops,plain_params,plain_flops", FIGURES)
def test_cost_figures(name, params, flops, v1_params, v1_flops, plain_params, plain_flops):
    model = create_model(name)
    plain = create_model(name.removeprefix("deformable_"))
    assert (n_params(model), model.flops(CIFAR)) == (params, flops)
    assert (n_params(plain), plain.flops(CIFAR)) == (plain_params, plain_flops)
    v1 = create_model(name, modulated=False)
    assert (n_params(v1), v1.flops(CIFAR)) == (v1_params, v1_flops)
    # the extra is exactly the offset convs: 3x3, (3 or 2) * 9 outputs on the last stage's 8x8
    n = len(model.stages[2])
    assert flops - plain_flops == n * 2 * 27 * 64 * 9 * 8 * 8
    assert params - plain_params == n * (27 * 64 * 9 + 27)
    assert f"{params:,} params, {flops:,} FLOPs" in registered_model(name).constructor.__doc__


@pytest.mark.parametrize("modulated", [True, False], ids=["v2", "v1"])
@pytest.mark.parametrize("stages", [(2,), (0, 1, 2)], ids=["last", "all"])
def test_plain_weights_reproduce_the_plain_network(stages, modulated):
    torch.manual_seed(0)
    plain = create_model("resnet20", num_classes=7)
    with torch.no_grad():  # trained-looking BN statistics, so eval mode is not the identity
        for module in plain.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    model = create_model("deformable_resnet20", num_classes=7, deformable_stages=stages, modulated=modulated)
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert result.unexpected_keys == []
    assert result.missing_keys and all(".conv2.conv.offset_conv." in k for k in result.missing_keys)
    assert len(result.missing_keys) == 2 * sum(len(model.stages[s]) for s in stages)

    x = torch.randn(3, *CIFAR)
    for train in (False, True):
        plain.train(train)
        model.train(train)
        with torch.no_grad():
            want, got = plain(x), model(x)
        torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-5)
        assert torch.equal(got.decisions["offset_magnitude"], torch.zeros(3))


@pytest.mark.parametrize(
    "kwargs,shape",
    [({}, CIFAR), ({"modulated": False, "deformable_stages": [1, 2]}, CIFAR),
     ({"in_chans": 1, "width": 8, "deformable_stages": 0}, (1, 28, 28))],
    ids=["default", "v1-two-stages", "mnist-first-stage"],
)
def test_per_sample_flops_equal_flop_counter(kwargs, shape):
    torch.manual_seed(0)
    model = create_model("deformable_resnet20", num_classes=5, **kwargs).eval()
    randomise_offsets(model)  # real, moving offsets: the count must not depend on them
    x = torch.randn(3, *shape)
    with torch.no_grad():
        out = model(x)
    counted = counted_flops(model, x)
    assert isinstance(out, DynamicOutput) and out.flops.shape == (3,) and out.flops.dtype == torch.float64
    assert torch.equal(out.flops, torch.full((3,), counted / 3, dtype=torch.float64))
    assert model.flops(shape) == counted // 3
    assert model.flops_and_shape(shape) == (counted // 3, (5,))
    assert count_flops(model, shape) == counted // 3
    # each deformable block's own answer matches what the counter sees in it
    with torch.no_grad():
        h = model.stem(x)
        for block in (b for blocks in model.stages for b in blocks):
            if isinstance(block, DeformableBasicBlock):
                assert count_flops(block, tuple(h.shape[1:])) * 3 == counted_flops(block, h)
                break
            h = block(h)


def test_gradients_reach_the_offset_convs_and_offsets_learn():
    torch.manual_seed(0)
    model = create_model("deformable_resnet20", num_classes=4, deformable_stages=(1, 2)).train()
    x, y = torch.randn(4, *CIFAR), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x).logits, y).backward()
    convs = offset_convs(model)
    assert len(convs) == 6
    for conv in convs:
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        assert conv.bias.grad is not None and conv.bias.grad.abs().sum() > 0
        # both the offsets (first 18 outputs) and the modulation (last 9) get a gradient
        assert conv.weight.grad[:18].abs().sum() > 0 and conv.weight.grad[18:].abs().sum() > 0
    with torch.no_grad():
        for conv in convs:
            conv.weight -= 10.0 * conv.weight.grad
            conv.bias -= 10.0 * conv.bias.grad
    magnitude = model.eval()(x).decisions["offset_magnitude"]
    assert magnitude.shape == (4,) and (magnitude > 0).all()
    assert len(set(magnitude.tolist())) == 4  # per sample, data dependent


def test_offset_magnitude_is_the_mean_absolute_offset():
    torch.manual_seed(0)
    model = create_model("deformable_resnet20", deformable_stages=(1, 2)).eval()
    randomise_offsets(model)
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        out = model(x)
        h, offsets = model.stem(x), []
        for blocks in model.stages:
            for block in blocks:
                if isinstance(block, DeformableBasicBlock):
                    h, offset = block.forward_with_offset(h)
                    offsets.append(offset.abs().flatten(1))
                else:
                    h = block(h)
    want = torch.cat(offsets, dim=1).mean(dim=1)
    assert (want > 0).all()
    torch.testing.assert_close(out.decisions["offset_magnitude"], want)
    torch.testing.assert_close(out.logits, model.forward_head(h))
    torch.testing.assert_close(out.logits, model.forward_head(model.forward_features(x)))


def test_bad_inputs_and_arguments_raise_clear_errors():
    model = create_model("deformable_resnet20").eval()
    with pytest.raises(ConfigError, match=r"'deformable_resnet20' expects a batch of shape \(B, 3, H, W\)"):
        model(torch.randn(*CIFAR))
    with pytest.raises(ConfigError, match=r"'deformable_resnet20'.*C = in_chans = 3, got \(1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="deformable_stages must be stage indices in 0..2"):
        create_model("deformable_resnet20", deformable_stages=(3,))
    with pytest.raises(ConfigError, match="deformable_stages"):
        create_model("deformable_resnet32", deformable_stages="2")
    with pytest.raises(ConfigError, match="modulated must be True or False"):
        create_model("deformable_resnet20", modulated="yes")
    with pytest.raises(ConfigError, match="'deformable_resnet20': width must be a positive int"):
        create_model("deformable_resnet20", width=0)
    with pytest.raises(ConfigError, match="DeformConvNorm expects"):
        DeformConvNorm(8, 8).flops_and_shape((4, 5, 5))


def test_registered_in_the_spatial_family():
    assert {"deformable_resnet20", "deformable_resnet32"} <= set(list_models(family="spatial"))
    assert list_models("deformable_*") == ["deformable_resnet20", "deformable_resnet32"]
    model = create_model("deformable_resnet32", num_classes=3, deformable_stages=[2, 1, 2])
    assert isinstance(model, DeformableCifarResNet) and model.deformable_stages == (1, 2)
    assert [sum(isinstance(b, DeformableBasicBlock) for b in s) for s in model.stages] == [0, 5, 5]
    info = model_info("deformable_resnet20")
    assert (info.family, info.params, info.flops) == ("spatial", 319_211, 87_598_336)
    assert create_model("deformable_resnet20", deformable_stages=()).flops(CIFAR) == 81_626_368
