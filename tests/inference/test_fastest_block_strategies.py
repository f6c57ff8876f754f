"""`fastest_block_strategies`: one measured choice per gated block, and the choice changes
time only, never the outputs."""
import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.inference import fastest_block_strategies


def _model():
    torch.manual_seed(0)
    return create_model("dynconv_resnet20", gate_bias_init=0.0).eval()  # mixed masks


def test_one_choice_per_gated_block_with_the_same_outputs():
    model = _model()
    x = torch.randn(2, 3, 32, 32)
    chosen, times = fastest_block_strategies(model, x, ("dense", "positions"), min_run_time=0.001, rounds=1)
    assert len(chosen) == len(times) == model.num_gated_blocks
    assert set(chosen) <= {"dense", "positions"}
    assert all(set(t) == {"dense", "positions"} and min(t.values()) > 0 for t in times)
    assert all(t[name] == min(t.values()) for name, t in zip(chosen, times))
    with torch.no_grad():
        reference = model(x, execution="masked")
        out = model(x, strategy=chosen)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-5)
    assert model.training is False


def test_unknown_candidate_and_static_model_are_refused():
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match="candidates"):
        fastest_block_strategies(_model(), x, ("sparse",))
    with pytest.raises(ConfigError, match="spatially gated"):
        fastest_block_strategies(create_model("resnet20"), x)
