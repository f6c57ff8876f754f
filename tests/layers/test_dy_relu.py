"""DY-ReLU: fixed-coefficient special cases, the hyper function, variants A/B/C."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamicnets.errors import ConfigError
from dynamicnets.layers.dy_relu import DyReLU, PiecewiseLinearCoefficients, dy_relu
from dynamicnets.flops import counted_flops


def coefficients(slopes, intercepts, batch=1):
    """Pieces as `(B, K, C', 1, 1)` from `(K,)` or `(K, C)` nested lists."""
    a, b = torch.tensor(slopes), torch.tensor(intercepts)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    expand = lambda t: t[None, :, :, None, None].expand(batch, -1, -1, -1, -1)
    return PiecewiseLinearCoefficients(expand(a), expand(b))


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(3, 4, 5, 6)


def test_fixed_coefficients_give_relu(x):
    y = DyReLU.activate(x, coefficients([1.0, 0.0], [0.0, 0.0], batch=3))
    assert torch.equal(y, F.relu(x))


def test_fixed_coefficients_give_leaky_relu(x):
    y = dy_relu(x, coefficients([1.0, 0.01], [0.0, 0.0], batch=3))
    assert torch.equal(y, F.leaky_relu(x, 0.01))


def test_fixed_per_channel_coefficients_give_prelu(x):
    slopes = torch.tensor([0.25, -0.1, 0.5, 0.0])  # max(x, a x) is PReLU for any a <= 1
    prelu = nn.PReLU(4)
    with torch.no_grad():
        prelu.weight.copy_(slopes)
    pieces = coefficients([[1.0] * 4, slopes.tolist()], [[0.0] * 4, [0.0] * 4], batch=3)
    assert torch.equal(dy_relu(x, pieces), prelu(x).detach())


def test_one_piece_is_se_style_scaling(x):
    attention = torch.rand(3, 4)
    pieces = PiecewiseLinearCoefficients(
        attention[:, None, :, None, None], torch.zeros(3, 1, 4, 1, 1)
    )
    assert torch.equal(dy_relu(x, pieces), x * attention[:, :, None, None])


def test_module_forward_takes_pinned_coefficients(x):
    layer = DyReLU(4, "B")
    assert torch.equal(layer(x, coefficients([1.0, 0.0], [0.0, 0.0], batch=3)), F.relu(x))


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_zero_residuals_start_at_relu(x, variant):
    layer = DyReLU(4, variant, spatial_gamma_ratio=1.0 / 30)  # keep variant C's pi below 1
    layer.hyper.start_at_initial_pieces()
    pieces = layer.hyper(x)
    if variant != "C":
        assert torch.equal(layer(x), F.relu(x))
    else:  # ReLU scaled by the spatial attention
        pi = layer.hyper.spatial_attention(x)
        torch.testing.assert_close(layer(x), F.relu(x) * pi)
    assert torch.equal(pieces.intercepts, torch.zeros_like(pieces.intercepts))


@pytest.mark.parametrize(
    "variant, shape", [("A", (3, 2, 1, 1, 1)), ("B", (3, 2, 4, 1, 1)), ("C", (3, 2, 4, 5, 6))]
)
def test_coefficient_shapes_and_ranges(x, variant, shape):
    torch.manual_seed(1)
    layer = DyReLU(4, variant)
    slopes, intercepts = layer.hyper(x)
    assert slopes.shape == intercepts.shape == shape
    if variant != "C":  # residuals in (-lambda, lambda) around a = (1, 0), b = 0
        assert ((slopes[:, 0] > 0) & (slopes[:, 0] < 2)).all()
        assert ((slopes[:, 1] > -1) & (slopes[:, 1] < 1)).all()
        assert (intercepts.abs() < 0.5).all()
    assert layer(x).shape == x.shape


def test_variant_c_spatial_attention_is_clipped_softmax(x):
    layer = DyReLU(4, "C")
    pi = layer.hyper.spatial_attention(x)
    assert pi.shape == (3, 1, 5, 6) and (pi > 0).all() and (pi <= 1).all()
    nn.init.zeros_(layer.hyper.spatial.weight)
    nn.init.zeros_(layer.hyper.spatial.bias)
    # uniform logits: gamma * 1/(HW) = 1/3 everywhere
    torch.testing.assert_close(layer.hyper.spatial_attention(x), torch.full((3, 1, 5, 6), 1 / 3))


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_cost_equals_flop_counter(x, variant):
    layer = DyReLU(4, variant, num_pieces=3)
    assert counted_flops(layer, x) == 3 * layer.flops(5, 6)


@pytest.mark.parametrize("variant", ["A", "B", "C"])
def test_gradcheck_double(variant):
    torch.manual_seed(0)
    layer = DyReLU(2, variant, dtype=torch.float64)
    x = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_nn_module_apply_still_works():
    layer = DyReLU(4, "B")
    layer.apply(lambda m: nn.init.zeros_(m.weight) if isinstance(m, nn.Linear) else None)
    assert torch.equal(layer.hyper.fc1.weight, torch.zeros_like(layer.hyper.fc1.weight))


def test_bad_arguments_raise_config_error(x):
    with pytest.raises(ConfigError, match="variant"):
        DyReLU(4, "D")
    with pytest.raises(ConfigError, match="init_slopes"):
        DyReLU(4, "B", num_pieces=3, init_slopes=(1.0, 0.0))
    with pytest.raises(ConfigError, match="expected input"):
        DyReLU(5, "B")(x)
    with pytest.raises(ConfigError, match="slopes and intercepts"):
        dy_relu(x, PiecewiseLinearCoefficients(torch.ones(3, 2, 4), torch.ones(3, 2, 4)))
