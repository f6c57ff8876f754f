"""`small_cnn`: stated figures, digits and MNIST sizes, learning, bad input."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops


def test_stated_figures():
    model = create_model("small_cnn").eval()
    assert model.default_input_shape == (1, 8, 8)
    assert sum(p.numel() for p in model.parameters()) == 131_178
    assert model.flops((1, 8, 8)) == counted_flops(model, torch.randn(1, 1, 8, 8)) == 2_398_720
    assert model.flops((1, 28, 28)) == counted_flops(model, torch.randn(1, 1, 28, 28)) == 29_355_520


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (1, 3, 5)])
def test_flops_on_any_size(shape):
    model = create_model("small_cnn", in_chans=shape[0], width=8).eval()
    x = torch.randn(2, *shape)
    out = model(x)
    assert int(out.flops.sum()) == counted_flops(model, x) == 2 * model.flops(shape)


def test_fits_a_small_batch():
    """25 Adam steps drive the loss on 16 fixed samples well down (training really works)."""
    torch.manual_seed(0)
    model = create_model("small_cnn", width=8).train()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = F.cross_entropy(model(x).logits, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first


@pytest.mark.parametrize("shape", [(3, 8, 8), (1, 40), (1, 1, 8, 8)])
def test_wrong_input_shape_raises_config_error(shape):
    model = create_model("small_cnn")
    with pytest.raises(ConfigError, match="small_cnn"):
        model(torch.randn(2, *shape))


@pytest.mark.parametrize("key", ["num_classes", "in_chans", "width"])
def test_bad_sizes_raise_config_error(key):
    with pytest.raises(ConfigError, match=key):
        create_model("small_cnn", **{key: 0})
