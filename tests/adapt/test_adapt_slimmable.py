"""make_slimmable: a user's plain conv net at several widths; clear refusals elsewhere."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

import dynamicnets as dn
from dynamicnets.errors import ConfigError
from dynamicnets.layers.slimmable import set_execution

from adapt_helpers import counted, make_resnet, randomize_bn

SHAPE = (3, 12, 12)
WIDTHS = (0.25, 0.5, 1.0)


def plain_net():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Conv2d(8, 8, 3, padding="same", groups=8), nn.BatchNorm2d(8), nn.ReLU6(),  # depthwise
        nn.Conv2d(8, 16, (3, 1), stride=2, padding=(1, 0)), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10),
    )
    return randomize_bn(net).eval()


@pytest.mark.parametrize("norm", ["switchable", "universal"])
def test_width_one_is_the_original_and_narrow_widths_cost_less(norm):
    net = plain_net()
    chain = dn.adapt.make_slimmable(net, input_shape=SHAPE, widths=WIDTHS, norm=norm).eval()
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(chain(x, 1.0).logits, net(x))
        costs = []
        for w in WIDTHS:
            out, total = counted(chain, x, w)
            assert out.logits.shape == (5, 10)
            assert out.flops.tolist() == [total / 5] * 5 == [chain.flops(SHAPE, w)] * 5
            costs.append(total)
    assert costs[0] < costs[1] < costs[2]


@pytest.mark.parametrize("width", WIDTHS)
def test_compact_equals_masked(width):
    chain = dn.adapt.make_slimmable(plain_net(), input_shape=SHAPE, widths=WIDTHS).eval()
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        compact = chain(x, width)
        set_execution(chain, "masked")
        masked, total = counted(chain, x, width)
    torch.testing.assert_close(compact.logits, masked.logits)
    assert masked.flops[0].item() == chain.flops(SHAPE, 1.0, "masked") == total / 4


def test_sandwich_training_reaches_every_parameter():
    chain = dn.adapt.make_slimmable(plain_net(), input_shape=SHAPE, widths=WIDTHS).train()
    x, y = torch.randn(4, *SHAPE), torch.randint(0, 10, (4,))
    out = chain(x)
    assert len(out.exit_logits) == 3
    dn.training.dynamic_loss(out, y, distill_weight=1.0).backward()
    assert not [n for n, p in chain.named_parameters() if p.grad is None]


def test_unsupported_structures_are_named():
    with pytest.raises(ConfigError, match=r"module 'layer1\.0' \(Block\) is not a chain layer: .*residual add"):
        resnet = make_resnet()
        dn.adapt.make_slimmable(nn.Sequential(OrderedDict(stem=resnet.stem, layer1=resnet.layer1)), input_shape=SHAPE)
    with pytest.raises(ConfigError, match=r"module the model \(TinyResNet\)"):
        dn.adapt.make_slimmable(make_resnet(), input_shape=SHAPE)
    grouped = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Flatten(), nn.Linear(8 * 64, 10))
    with pytest.raises(ConfigError, match=r"conv '1' has groups=2"):
        dn.adapt.make_slimmable(grouped, input_shape=SHAPE)
    spread = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 100, 10))
    with pytest.raises(ConfigError, match=r"Linear '2' reads a flattened feature map"):
        dn.adapt.make_slimmable(spread, input_shape=SHAPE)
    grouped_norm = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Flatten(), nn.Linear(8 * 100, 10))
    with pytest.raises(ConfigError, match=r"module '1' \(GroupNorm\) has no slimmable version here; supported"):
        dn.adapt.make_slimmable(grouped_norm, input_shape=SHAPE)
    chain = dn.adapt.make_slimmable(plain_net(), input_shape=SHAPE, widths=WIDTHS)
    with pytest.raises(ConfigError, match="not configured"):
        chain(torch.randn(1, *SHAPE), 0.75)


def test_a_width_policy_says_when_it_narrowed_the_run():
    from dynamicnets.inference.width_policy import WidthPolicy
    chain = dn.adapt.make_slimmable(plain_net(), input_shape=SHAPE, widths=WIDTHS).eval()
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        free = chain(x, 1.0)
        loose = chain(x, 1.0, policy=WidthPolicy(max_flops=chain.flops(SHAPE, 1.0)))
        tight = chain(x, 1.0, policy=WidthPolicy(max_flops=chain.flops(SHAPE, WIDTHS[0])))
    assert "width_capped" not in free.decisions
    assert loose.decisions["width_capped"].tolist() == [False] * 3 and loose.decisions["width"][0] == 1.0
    assert tight.decisions["width_capped"].tolist() == [True] * 3 and tight.decisions["width"][0] == WIDTHS[0]


def test_count_flops_is_the_inference_cost_in_any_mode_and_leaves_the_modes_alone():
    # A freshly built chain is in training mode, where its forward is the sandwich of
    # every width; counting it must give the one-width cost a deployed model runs.
    chain = dn.adapt.make_slimmable(plain_net(), input_shape=SHAPE, widths=WIDTHS).train()
    next(m for m in chain.modules() if isinstance(m, nn.Linear)).eval()  # a submodule keeps its own mode
    modes = [m.training for m in chain.modules()]
    in_train = dn.count_flops(chain, SHAPE)
    assert [m.training for m in chain.modules()] == modes
    assert in_train == dn.count_flops(chain.eval(), SHAPE) == chain.flops(SHAPE, 1.0)
