"""`calibrate_token_policy`: a token policy fitted to a mean-FLOPs budget."""
import pytest
import torch

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.inference import TokenPolicy, calibrate_token_policy


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = create_model("dynamic_vit_cifar", depth=4, embed_dim=32, num_heads=2).eval()
    with torch.no_grad():  # spread the fresh scorers' keep probabilities (all at the prior otherwise)
        for layer in model.predictors.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, 0.5)
    batches = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    return model, batches


def mean_flops(model, batches, policy):
    with torch.no_grad():
        return sum(float(model(x, policy=policy).flops.sum()) for x in batches) / 16


@pytest.mark.parametrize("by", ["threshold", "keep_ratio"])
def test_fitted_policy_stays_within_the_budget_and_uses_most_of_it(model_and_data, by):
    model, batches = model_and_data
    full = mean_flops(model, batches, TokenPolicy(keep_ratio=1.0))
    cheapest = mean_flops(model, batches, TokenPolicy(keep_ratio=1e-6))
    budget = cheapest + 0.5 * (full - cheapest)
    fit = calibrate_token_policy(model, batches, budget, by=by, iterations=10)
    assert getattr(fit.policy, by) is not None
    assert fit.mean_flops <= budget
    assert fit.mean_flops == pytest.approx(mean_flops(model, batches, fit.policy))
    assert fit.mean_flops > cheapest + 0.3 * (full - cheapest)


def test_a_generous_budget_keeps_everything(model_and_data):
    model, batches = model_and_data
    fit = calibrate_token_policy(model, batches, 1e12, by="keep_ratio")
    assert fit.policy.keep_ratio == 1.0 and fit.evaluations == 1


def test_an_unreachable_budget_is_a_clear_error(model_and_data):
    model, batches = model_and_data
    with pytest.raises(ConfigError, match="below the cheapest threshold policy"):
        calibrate_token_policy(model, batches, 1.0)
    with pytest.raises(ConfigError, match="budget_flops must be > 0"):
        calibrate_token_policy(model, batches, 0)
    with pytest.raises(ConfigError, match="by must be"):
        calibrate_token_policy(model, batches, 1e6, by="tokens")
