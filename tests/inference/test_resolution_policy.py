"""`ResolutionPolicy` on its own: bias + argmax, the cap, saving, clear errors; the resize helpers."""
import math

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.inference import ResolutionPolicy
from dynamicnets.layers import check_resolutions, resize, resize_flops

COSTS = [10.0, 20.0, 40.0]


def test_no_bias_is_the_argmax_and_bias_shifts_it():
    logits = torch.tensor([[0.0, 1.0, 0.5], [2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    chosen, capped = ResolutionPolicy().choose(logits, COSTS)
    assert chosen.tolist() == [1, 0, 2] and not capped.any()
    chosen, _ = ResolutionPolicy(bias=(0.0, -1.5, -2.5)).choose(logits, COSTS)
    assert chosen.tolist() == [0, 0, 2]


def test_the_cap_clamps_to_the_largest_resolution_it_allows():
    logits = torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    policy = ResolutionPolicy(max_flops=25)
    chosen, capped = policy.choose(logits, COSTS)
    assert chosen.tolist() == [1, 0] and capped.tolist() == [True, False]
    assert policy.largest_allowed(COSTS) == 1
    with pytest.raises(ConfigError, match="max_flops"):
        ResolutionPolicy(max_flops=5).choose(logits, COSTS)


def test_round_trip_and_bad_keys():
    policy = ResolutionPolicy(bias=(0.0, -1.0, -2.0), max_flops=30, meta={"budget_flops": 25.0})
    assert ResolutionPolicy.from_dict(policy.to_dict()) == policy
    assert ResolutionPolicy.from_dict(ResolutionPolicy().to_dict()) == ResolutionPolicy()
    for kwargs, key in (({"bias": ()}, "bias"), ({"bias": (0.0, math.nan)}, "bias"), ({"max_flops": 0}, "max_flops"),
                        ({"max_flops": True}, "max_flops")):
        with pytest.raises(ConfigError, match=key):
            ResolutionPolicy(**kwargs)
    with pytest.raises(ConfigError, match="bias"):
        ResolutionPolicy(bias=(0.0, 1.0)).choose(torch.zeros(2, 3), COSTS)
    with pytest.raises(ConfigError, match="resolution policy"):
        ResolutionPolicy.from_dict({"kind": "width_cap"})


def test_resize_helpers():
    x = torch.randn(2, 3, 32, 32)
    assert resize(x, 32) is x and resize(x, 16).shape == (2, 3, 16, 16)
    # 2x shrink without antialias: bilinear at align_corners=False averages each 2x2 block
    torch.testing.assert_close(resize(x, 16, antialias=False), torch.nn.functional.avg_pool2d(x, 2))
    # a (H', W') pair: a rectangle (RANet's fusion layers resize to a feature map's shape)
    assert resize(x, (32, 32)) is x and resize(x, torch.Size([16, 8])).shape == (2, 3, 16, 8)
    torch.testing.assert_close(resize(x, (16, 32), antialias=False),
                               torch.nn.functional.avg_pool2d(x, (2, 1)))
    assert resize_flops((3, 32, 32), 32) == 0
    assert resize_flops((3, 32, 32), 16, antialias=False) == 2 * 3 * 16 * (32 * 2 + 16 * 2)
    assert check_resolutions([8, 16], 16, "m") == (8, 16)
    with pytest.raises(ConfigError, match="resolutions"):
        check_resolutions([8, 17], 16, "m")
