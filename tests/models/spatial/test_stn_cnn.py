"""`stn_cnn`: identity glimpse at init, honest FLOPs (the CNN runs on the glimpse, not the
canvas), forced transforms, a short learning run on translated digits."""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops


def make(**kwargs):
    torch.manual_seed(0)
    return create_model("stn_cnn", **kwargs)


def test_forward_reports_theta_and_the_identity_at_init():
    model = make().eval()
    x = torch.randn(3, 1, 60, 60)
    out = model(x)
    assert out.logits.shape == (3, 10)
    torch.testing.assert_close(out.decisions["theta"], torch.eye(2, 3).expand(3, 2, 3))
    glimpse = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    reference = model.classifier.forward_head(model.classifier.forward_features(glimpse))
    torch.testing.assert_close(out.logits, reference)


def test_flops_equal_flop_counter_and_beat_the_whole_canvas():
    model = make().eval()
    x = torch.randn(4, 1, 60, 60)
    with torch.no_grad():
        out = model(x)
    assert int(out.flops.sum()) == counted_flops(model, x)
    parts = model.cost_breakdown((1, 60, 60))
    assert out.flops[0] == parts["localisation"] + parts["regressor"] + parts["classifier"]
    assert model.flops((1, 60, 60), include_sampling=True) == out.flops[0] + parts["sampling"]
    canvas = create_model("small_cnn").flops((1, 60, 60))
    assert parts["classifier"] == create_model("small_cnn").flops((1, 28, 28))
    assert canvas / out.flops[0] > 4.5


def test_a_given_theta_is_used():
    model = make(glimpse=30).eval()
    x = torch.randn(2, 1, 60, 60)
    theta = torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]).expand(2, 2, 3)
    out = model(x, theta=theta)
    expected = model.classifier.forward_head(model.classifier.forward_features(x[..., 30:, 30:]))
    torch.testing.assert_close(out.logits, expected)


@pytest.mark.parametrize("kwargs, key", [({"glimpse": 61}, "output_size"), ({"glimpse": 0}, "output_size"),
                                         ({"canvas": -1}, "input_size")])
def test_bad_sizes_name_the_argument(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        make(**kwargs)


@pytest.mark.slow
def test_learns_translated_digits():
    """Translated sklearn digits (8x8 on a 20x20 canvas, 12x12 glimpse): 8 short epochs of Adam
    (about 5 s) lift held-out accuracy well above chance (0.1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    generator = torch.Generator().manual_seed(0)
    images = torch.tensor(digits.images[:800], dtype=torch.float32) / 16
    labels = torch.tensor(digits.target[:800])
    canvas = torch.zeros(800, 1, 20, 20)
    offsets = torch.randint(0, 13, (800, 2), generator=generator)
    for k, (r, c) in enumerate(offsets.tolist()):
        canvas[k, 0, r:r + 8, c:c + 8] = images[k]
    torch.manual_seed(0)
    model = create_model("stn_cnn", canvas=20, glimpse=12, width=8, loc_pool=20)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(8):
        for rows in torch.randperm(700, generator=generator).split(50):
            optimiser.zero_grad()
            F.cross_entropy(model(canvas[rows]).logits, labels[rows]).backward()
            optimiser.step()
    with torch.no_grad():
        accuracy = (model.eval()(canvas[700:]).logits.argmax(1) == labels[700:]).float().mean()
    assert accuracy > 0.25
