import pytest
import torch
import torch.nn.functional as F

from dynamicnets.errors import ConfigError
from dynamicnets.outputs import DynamicOutput
from dynamicnets.training import multi_exit_loss, normalized_exit_weights


def _output(num_exits=3, batch=6, classes=4, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    exits = [torch.randn(batch, classes, generator=g).requires_grad_(requires_grad) for _ in range(num_exits)]
    target = torch.randint(0, classes, (batch,), generator=g)
    return DynamicOutput(logits=exits[-1], exit_logits=exits), target


def test_default_weights_are_the_mean_of_exit_cross_entropies():
    out, y = _output()
    expected = sum(F.cross_entropy(e, y) for e in out.exit_logits) / 3
    assert torch.allclose(multi_exit_loss(out, y), expected)


def test_weights_are_normalised():
    out, y = _output()
    ces = [F.cross_entropy(e, y) for e in out.exit_logits]
    expected = (1 * ces[0] + 0 * ces[1] + 3 * ces[2]) / 4
    assert torch.allclose(multi_exit_loss(out, y, weights=[1, 0, 3]), expected)
    assert torch.allclose(multi_exit_loss(out, y, weights=[2, 0, 6]), expected)
    assert normalized_exit_weights([1, 0, 3], 3) == [0.25, 0.0, 0.75]


def test_single_exit_model_is_plain_cross_entropy_with_smoothing():
    out, y = _output(num_exits=1)
    got = multi_exit_loss(out, y, label_smoothing=0.1)
    assert torch.allclose(got, F.cross_entropy(out.logits, y, label_smoothing=0.1))
    assert got.shape == () and got.dtype == torch.float32


def test_zero_weight_exit_still_gets_a_gradient_for_ddp():
    out, y = _output(requires_grad=True)
    multi_exit_loss(out, y, weights=[0, 1, 1]).backward()
    assert out.exit_logits[0].grad is not None and torch.all(out.exit_logits[0].grad == 0)
    assert out.exit_logits[1].grad.abs().sum() > 0


def test_bf16_logits_are_scored_in_float32():
    out, y = _output()
    low = DynamicOutput(logits=out.logits.bfloat16(), exit_logits=[e.bfloat16() for e in out.exit_logits])
    assert multi_exit_loss(low, y).dtype == torch.float32


@pytest.mark.parametrize("weights", [[1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [-1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
def test_bad_weights_raise_config_error_naming_exit_weights(weights):
    out, y = _output()
    with pytest.raises(ConfigError, match="exit_weights"):
        multi_exit_loss(out, y, weights=weights)
