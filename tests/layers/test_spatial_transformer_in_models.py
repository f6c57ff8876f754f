"""`SpatialTransformer` inside a network of one's own: between convolutions on a multi-channel,
non-square feature map, every parameter learns, the library's cost walk counts it like
FlopCounterMode, and channels-last inputs give the same result."""
import torch
import torch.nn.functional as F
from torch import nn

from dynamicnets.flops import counted_flops, flops_and_shape
from dynamicnets.layers import SpatialTransformer

DT = torch.float64


def user_network() -> nn.Sequential:
    """conv (3 -> 8) on 16x24 images, a transformer sampling an 8x12 glimpse of that
    feature map, conv (8 -> 16), global pooling, linear: `(B, 3, 16, 24) -> (B, 10)`."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, dtype=DT), nn.ReLU(),
        SpatialTransformer(8, input_size=(16, 24), output_size=(8, 12), loc_pool=8, loc_width=4, dtype=DT),
        nn.Conv2d(8, 16, 3, padding=1, dtype=DT), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10, dtype=DT),
    )


def images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 16, 24, generator=torch.Generator().manual_seed(1), dtype=DT)


def test_every_parameter_learns_through_the_glimpse():
    net, x = user_network(), images(6)
    y = torch.arange(6) % 10
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # the regressor starts at zero weight: after one step the layers below it see gradient
        optimiser.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimiser.step()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    theta = net[2].transform(net[1](net[0](x)))
    assert not torch.allclose(theta, torch.eye(2, 3, dtype=DT).expand(6, 2, 3))  # it moved off the identity


def test_the_cost_walk_counts_the_network_like_flop_counter_mode():
    net, x = user_network().eval(), images(3)
    flops, shape = flops_and_shape(net, (3, 16, 24))
    assert shape == (10,)
    assert 3 * flops == counted_flops(net, x)
    conv_after = 2 * 8 * 9 * 16 * 8 * 12  # the second conv reads the 8x12 glimpse, not the 16x24 map
    assert flops == 2 * 3 * 9 * 8 * 16 * 24 + net[2].flops_and_shape((8, 16, 24))[0] + conv_after + 2 * 16 * 10


def test_channels_last_and_batch_one_agree_with_the_batch():
    net, x = user_network().eval(), images(5)
    with torch.no_grad():
        out = net(x)
        torch.testing.assert_close(net(x.contiguous(memory_format=torch.channels_last)), out)
        torch.testing.assert_close(torch.cat([net(x[i:i + 1]) for i in range(5)]), out)
