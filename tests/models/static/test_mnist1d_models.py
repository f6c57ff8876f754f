"""`mnist1d_mlp` and `mnist1d_cnn`: stated figures, options, learning, bad input."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops

SIGNAL = (1, 40)


@pytest.mark.parametrize(
    "name,params,flops", [("mnist1d_mlp", 78_858, 156_672), ("mnist1d_cnn", 19_562, 505_600)]
)
def test_stated_figures(name, params, flops):
    model = create_model(name).eval()
    assert model.default_input_shape == SIGNAL
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.flops(SIGNAL) == counted_flops(model, torch.randn(1, *SIGNAL)) == flops


@pytest.mark.parametrize("hidden,depth", [(16, 0), (16, 1), (64, 3)])
def test_mlp_hidden_and_depth(hidden, depth):
    model = create_model("mnist1d_mlp", hidden=hidden, depth=depth, num_classes=4).eval()
    assert len(model.hidden_layers) == depth
    assert model.head.in_features == (hidden if depth else 40)
    x = torch.randn(3, *SIGNAL)
    out = model(x)
    assert out.logits.shape == (3, 4)
    assert int(out.flops.sum()) == counted_flops(model, x) == 3 * model.flops(SIGNAL)


def test_mlp_flattens_several_channels():
    model = create_model("mnist1d_mlp", in_chans=2, length=12).eval()
    assert model.hidden_layers[0][0].in_features == 24
    assert model(torch.randn(2, 2, 12)).logits.shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 41), (2, 40), (1, 8, 5)])
def test_mlp_refuses_other_shapes(shape):
    model = create_model("mnist1d_mlp")
    with pytest.raises(ConfigError, match="mnist1d_mlp"):
        model(torch.randn(2, *shape))


@pytest.mark.parametrize("shape", [(1, 40), (1, 37), (2, 100), (1, 1)])
def test_cnn_any_length(shape):
    model = create_model("mnist1d_cnn", in_chans=shape[0], width=8).eval()
    x = torch.randn(2, *shape)
    out = model(x)
    assert int(out.flops.sum()) == counted_flops(model, x) == 2 * model.flops(shape)


@pytest.mark.parametrize("shape", [(2, 40), (1, 8, 8)])
def test_cnn_refuses_wrong_shapes(shape):
    with pytest.raises(ConfigError, match="mnist1d_cnn"):
        create_model("mnist1d_cnn")(torch.randn(2, *shape))


@pytest.mark.parametrize("name", ["mnist1d_mlp", "mnist1d_cnn"])
def test_fits_a_small_batch(name):
    """25 Adam steps drive the loss on 16 fixed samples well down (training really works)."""
    torch.manual_seed(0)
    model = create_model(name).train()
    x, y = torch.randn(16, *SIGNAL), torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = F.cross_entropy(model(x).logits, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first


@pytest.mark.parametrize("kwargs", [{"depth": -1}, {"hidden": 0}, {"length": 0}, {"depth": 1.5}])
def test_mlp_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        create_model("mnist1d_mlp", **kwargs)
