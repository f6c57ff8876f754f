"""CIFAR ResNets: published cost figures recomputed, structure, any input size, channels_last."""
import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.models.static import BasicBlock, CifarResNet, ConvNormAct
from dynamicnets.flops import counted_flops

CIFAR = (3, 32, 32)

# name, n, our params, our FLOPs (option B, 3x32x32, 10 classes), exact option-A params,
# option-A FLOPs, the paper's rounded params (He et al. 2016, Table 6) and the multiply-adds
# Li et al. 2017 ("Pruning Filters for Efficient ConvNets", Table 1) publish, in units of
# 1e8 (None where that paper has no figure).
FIGURES = [
    ("resnet20", 3, 272_474, 81_626_368, 269_722, 81_102_080, "0.27", None),
    ("resnet32", 5, 466_906, 138_249_472, 464_154, 137_725_184, "0.46", None),
    ("resnet56", 9, 855_770, 251_495_680, 853_018, 250_971_392, "0.85", "1.25"),
    ("resnet110", 18, 1_730_714, 506_299_648, 1_727_962, 505_775_360, "1.7", "2.53"),
]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_inputs(model: CifarResNet, x: torch.Tensor) -> list[tuple[BasicBlock, torch.Tensor]]:
    """Every block with the tensor it receives, found by running the stages one by one."""
    pairs = []
    with torch.no_grad():
        h = model.stem(x)
        for blocks in model.stages:
            for block in blocks:
                pairs.append((block, h))
                h = block(h)
    return pairs


def round_like(value: float, published: str) -> str:
    """`value` rounded to as many decimals as the `published` string shows."""
    decimals = len(published.split(".")[1]) if "." in published else 0
    return f"{value:.{decimals}f}"


@pytest.mark.parametrize("name,n,params,flops,a_params,a_flops,paper_params,paper_madds", FIGURES)
def test_published_cost_figures(
    name, n, params, flops, a_params, a_flops, paper_params, paper_madds
):
    model = create_model(name).eval()
    x = torch.randn(1, *CIFAR)
    assert [len(blocks) for blocks in model.stages] == [n, n, n]
    assert n_params(model) == params
    assert model.flops(CIFAR) == flops
    assert counted_flops(model, x) == flops

    # Option B = option A + the two projection shortcuts; measure those from the modules.
    projections = [(b, h) for b, h in block_inputs(model, x) if isinstance(b.shortcut, ConvNormAct)]
    assert len(projections) == 2
    proj_params = sum(n_params(b.shortcut) for b, _ in projections)
    proj_flops = sum(counted_flops(b.shortcut, h) for b, h in projections)
    assert (proj_params, proj_flops) == (2_752, 524_288)  # the figures the docstring states
    assert n_params(model) - proj_params == a_params
    assert model.flops(CIFAR) - proj_flops == a_flops

    # The exact option-A figures agree with what the papers print, at the precision printed.
    assert round_like(a_params / 1e6, paper_params) == paper_params
    # B sits within the paper's rounding plus the projections (resnet32: 0.467M vs 0.46M).
    half_unit = 0.5 * 10 ** -(len(paper_params.split(".")[1])) * 1e6
    assert abs(n_params(model) - float(paper_params) * 1e6) <= half_unit + proj_params
    if paper_madds is not None:
        assert round_like(a_flops / 2 / 1e8, paper_madds) == paper_madds


def test_stages_are_separately_callable_and_compose_to_forward():
    torch.manual_seed(0)
    model = create_model("resnet20", width=4).eval()
    x = torch.randn(2, *CIFAR)
    breakdown = model.cost_breakdown(CIFAR)
    assert isinstance(model.stages, torch.nn.ModuleList)
    assert all(isinstance(s, torch.nn.ModuleList) for s in model.stages)
    with torch.no_grad():
        h = model.stem(x)
        assert counted_flops(model.stem, x) == 2 * breakdown["stem"]
        for stage, costs in zip(model.stages, breakdown["stages"]):
            for block, cost in zip(stage, costs):
                assert counted_flops(block, h) == 2 * cost
                h = block(h)
        assert h.shape == (2, 16, 8, 8)
        logits = model.head(h)
        assert counted_flops(model.head, h) == 2 * breakdown["head"]
        torch.testing.assert_close(logits, model(x).logits)
    total = breakdown["stem"] + sum(map(sum, breakdown["stages"])) + breakdown["head"]
    assert total == model.flops(CIFAR)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 17, 23), (3, 5, 4), (2, 1, 1)])
def test_any_input_size(shape):
    model = create_model("resnet20", in_chans=shape[0], num_classes=3, width=4).eval()
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.logits.shape == (2, 3)
    assert int(out.flops.sum()) == counted_flops(model, x) == 2 * model.flops(shape)


@pytest.mark.parametrize("width", [4, 8, 24])
def test_width_sets_the_three_stage_widths(width):
    model = create_model("resnet32", width=width)
    widths = [stage[-1].conv2.conv.out_channels for stage in model.stages]
    assert widths == [width, 2 * width, 4 * width]
    assert model.stem.conv.out_channels == width
    assert model.head.fc.in_features == 4 * width
    x = torch.randn(1, *CIFAR)
    assert counted_flops(model.eval(), x) == model.flops(CIFAR)


def test_channels_last_gives_the_same_result_and_keeps_the_layout():
    torch.manual_seed(0)
    model = create_model("resnet20", width=8).eval()
    x = torch.randn(2, *CIFAR)
    with torch.no_grad():
        expected = model(x).logits
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        features = model.forward_features(x_cl)
        out = model(x_cl)
    assert features.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)

    model.train()
    loss = model(x_cl).logits.logsumexp(1).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("depth", [21, 2, 0, -4])
def test_bad_depth_raises_config_error(depth):
    with pytest.raises(ConfigError, match="depth"):
        CifarResNet(depth)


def test_bad_width_raises_config_error():
    with pytest.raises(ConfigError, match="width"):
        create_model("resnet20", width=0)


@pytest.mark.parametrize("shape", [(1, 32, 32), (3, 32), (3, 1, 32, 32)])
def test_input_of_the_wrong_shape_raises_config_error(shape):
    model = create_model("resnet20", width=4)
    with pytest.raises(ConfigError, match="in_chans = 3"):
        model(torch.randn(2, *shape))
