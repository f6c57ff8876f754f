"""Gate execution-rate calibration: thresholds of layer-skipping gates fitted on data."""
import sys
from pathlib import Path

import pytest
import torch

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.inference import calibrate_gate_rate, gate_logit_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "skipping"))
from skipping_helpers import build, inputs  # noqa: E402

PER_BLOCK = ["skipnet_ff", "skipnet_rl", "convnet_aig", "blockdrop"]


def eval_gates(model, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x).decisions["gates"]


@pytest.mark.parametrize("config", PER_BLOCK)
def test_every_gated_block_runs_on_exactly_the_asked_fraction(config):
    model, x = build(config, depth=20), inputs(40)
    before = [layer.bias.clone() for layer in gate_logit_layers(model)]
    cuts = calibrate_gate_rate(model, x, 0.25)
    gates = eval_gates(model, x)
    assert gates.shape == (40, model.num_gated_blocks)
    assert torch.equal(gates.sum(0), torch.full((model.num_gated_blocks,), 10.0))  # 25% of 40, every block
    masked = model(x, execution="masked").decisions["gates"]
    assert torch.equal(masked, gates)
    for layer, old, cut in zip(gate_logit_layers(model), before, cuts):
        torch.testing.assert_close(layer.bias, old - cut)


@pytest.mark.parametrize("config", ["skipnet_ff", "convnet_aig"])
def test_the_lean_batch_one_path_takes_the_calibrated_decisions(config):
    model, x = build(config, depth=14), inputs(12)
    calibrate_gate_rate(model, x, 0.5)
    batched = eval_gates(model, x)
    one_by_one = torch.cat([eval_gates(model, x[i : i + 1]) for i in range(12)])
    assert torch.equal(one_by_one, batched)
    assert batched.sum().item() == 0.5 * batched.numel()


def test_one_rate_per_block_and_rate_one_runs_everything():
    model, x = build("convnet_aig", depth=20), inputs(20)
    rates = [1.0, 0.5, 0.25, 0.75, 0.05, 1.0]
    calibrate_gate_rate(model, x, rates)
    torch.testing.assert_close(eval_gates(model, x).mean(0), torch.tensor(rates))


def test_a_loader_of_batches_fits_the_same_thresholds_as_one_tensor():
    x = inputs(30)
    whole, batched = build("skipnet_ff", depth=14), build("skipnet_ff", depth=14)
    cuts_whole = calibrate_gate_rate(whole, x, 0.4)
    cuts_batched = calibrate_gate_rate(batched, [(x[:10], None), (x[10:25], None), (x[25:], None)], 0.4)
    for a, b in zip(cuts_whole, cuts_batched):
        torch.testing.assert_close(a, b)


def test_the_recurrent_gate_gets_one_threshold_for_the_rate_over_all_blocks():
    model, x = build("skipnet_rnn", depth=20), inputs(64)
    cuts = calibrate_gate_rate(model, x, 0.3, passes=4)
    assert len(cuts) == 1 and cuts[0].shape == (1,)
    assert abs(eval_gates(model, x).mean().item() - 0.3) < 0.05


def test_bad_calibration_requests_raise_config_errors():
    gated, x = build("convnet_aig", depth=14), inputs(8)
    with pytest.raises(ConfigError, match="no layer-skipping gates"):
        calibrate_gate_rate(create_model("resnet20", num_classes=5), x, 0.5)
    for rate in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"\(0, 1\]"):
            calibrate_gate_rate(gated, x, rate)
    with pytest.raises(ConfigError, match="expected one rate or 3"):
        calibrate_gate_rate(gated, x, [0.5, 0.5])
    with pytest.raises(ConfigError, match="passes"):
        calibrate_gate_rate(gated, x, 0.5, passes=0)
    with pytest.raises(ConfigError, match="empty"):
        calibrate_gate_rate(gated, [], 0.5)
