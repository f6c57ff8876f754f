"""Reading images row by row or pixel by pixel (`models.temporal.sequence`), and the static GRU."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.models.temporal.sequence import as_sequence, sequence_steps, step_features

RECURRENT = ["lstm_classifier", "gru_classifier", "skip_lstm_classifier", "skip_gru_classifier"]


def images(batch: int, chans: int = 2, height: int = 3, width: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, chans, height, width, generator=torch.Generator().manual_seed(seed))


def test_pixel_reading_is_raster_order_with_channels_as_features():
    x = images(4)  # (B, C=2, H=3, W=5)
    seq = as_sequence("m", x, 2, 5, "pixels")
    assert seq.shape == (4, 15, 2)
    for t in range(15):
        assert torch.equal(seq[:, t], x[:, :, t // 5, t % 5])  # step t is pixel (t // W, t % W)
    assert step_features("m", 2, 5, "pixels") == 2 and sequence_steps((2, 3, 5), "pixels") == 15


def test_row_reading_is_unchanged_by_default():
    x = images(3)
    seq = as_sequence("m", x, 2, 5)
    assert seq.shape == (3, 3, 10)
    assert torch.equal(seq[:, 1], x[:, :, 1].reshape(3, 10))  # step h: row h, channel after channel
    assert step_features("m", 2, 5) == 10 and sequence_steps((2, 3, 5)) == 3


@pytest.mark.parametrize("name", ["lstm_classifier", "gru_classifier"])
def test_pixel_reading_equals_reading_the_flattened_image_as_a_signal(name):
    torch.manual_seed(0)
    pixels = create_model(name, in_chans=2, hidden=8, row_width=5, length=3, reading="pixels").eval()
    signal = create_model(name, in_chans=2, hidden=8).eval()
    signal.load_state_dict(pixels.state_dict())
    x = images(3)
    with torch.no_grad():
        out, ref = pixels(x), signal(x.flatten(2))
    torch.testing.assert_close(out.logits, ref.logits)
    assert torch.equal(out.flops, ref.flops)  # 15 steps either way


@pytest.mark.parametrize("name", RECURRENT)
def test_pixel_reading_keeps_the_state_dict_keys(name):
    rows = create_model(name, hidden=6, row_width=5, length=3)
    pixels = create_model(name, hidden=6, row_width=5, length=3, reading="pixels")
    assert list(rows.state_dict()) == list(pixels.state_dict())
    cell = pixels.cell if hasattr(pixels, "cell") else pixels.rnn.cell
    assert cell.input_size == 1 and (rows.cell if hasattr(rows, "cell") else rows.rnn.cell).input_size == 5


@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("bad", [{"reading": "columns"}, {"reading": None}, {"reading": "pixels", "row_width": None}])
def test_bad_reading_is_a_config_error_naming_it(name, bad):
    args = {"row_width": 5, "length": 3, **bad}
    with pytest.raises(ConfigError, match="reading"):
        create_model(name, hidden=6, **args)


@pytest.mark.parametrize("name", ["skip_lstm_classifier", "skip_gru_classifier"])
@pytest.mark.parametrize("batch", [1, 4])
def test_skip_models_read_pixels_compact_equals_masked(name, batch):
    torch.manual_seed(0)
    model = create_model(name, hidden=8, row_width=5, length=3, reading="pixels", update_bias_init=-0.5).eval()
    x = images(batch, chans=1)
    with torch.no_grad():
        masked, compact = model(x, execution="masked"), model(x, execution="compact")
        with FlopCounterMode(display=False) as counter:
            counted = model(x, execution="compact")
    gates = compact.decisions["gates"]
    assert gates.shape == (batch, 15) and 0 < gates.mean() < 1
    assert torch.equal(masked.decisions["gates"], gates)
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-5, atol=1e-6)
    assert counted.flops.sum().item() == counter.get_total_flops()
    assert model.full_flops((1, 3, 5)) == masked.flops[0].item()  # 15 steps, each updating


@pytest.mark.parametrize("batch", [1, 3])
def test_static_gru_is_the_skip_gru_updating_at_every_step(batch):
    torch.manual_seed(0)
    skip = create_model("skip_gru_classifier", hidden=8, row_width=5, length=3).eval()
    static = create_model("gru_classifier", hidden=8, row_width=5, length=3).eval()
    static.cell.load_state_dict(skip.rnn.cell.state_dict())
    static.head.load_state_dict(skip.head.state_dict())
    x = images(batch, chans=1)
    with torch.no_grad():
        ref = skip(x, updates=torch.ones(batch, 3))
        with FlopCounterMode(display=False) as counter:
            out = static(x)
    torch.testing.assert_close(out.logits, ref.logits)
    assert out.flops.sum().item() == counter.get_total_flops()
    assert out.flops[0].item() == ref.flops[0].item() - 3 * 2 * 8  # less the update gate's dot per step
