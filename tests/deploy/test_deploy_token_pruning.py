"""DynamicViT and EViT under a keep-ratio policy deploy as one graph: every sample keeps the
same number of tokens, so scoring, top-k and gather trace; the deployed model keeps the
tokens the eager compact path keeps and gives its logits."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.deploy import DeployedModel, deployment_plan, export_model
from dynamicnets.inference import ExitPolicy
from dynamicnets.inference.token_policy import TokenPolicy
from dynamicnets.models import create_model

SIZES = {"depth": 6, "embed_dim": 32, "num_heads": 2}


def _model(name: str) -> torch.nn.Module:
    """A small model whose linear weights are spread like a trained one's: at initialisation
    every token scores within float rounding of the others, and two engines (PyTorch,
    onnxruntime) may then break such near-ties differently."""
    torch.manual_seed(0)
    model = create_model(name, **SIZES).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.3)
    return model


def _check_same(out, ref) -> None:
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.flops, ref.flops.to(out.flops.dtype))
    for key, value in ref.decisions.items():
        assert torch.equal(out.decisions[key].to(value.dtype), value), key


@pytest.mark.parametrize("name, fmt", [pytest.param("dynamic_vit_cifar", "onnx", marks=pytest.mark.slow),
                                       ("evit_cifar", "torch.export")])  # ONNX export: ~12 s, kept out of `make test`
def test_a_keep_ratio_token_model_is_one_graph_with_the_eager_decisions(name, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    model = _model(name)
    policy = TokenPolicy(keep_ratio=(0.8, 0.6, 0.5))
    plan = deployment_plan(model, policy=policy)
    assert plan.kind == "static" and list(plan.graphs) == ["model"]
    assert plan.policy == {"kind": "token_keep_ratio", "keep_ratio": [0.8, 0.6, 0.5], "min_tokens": 1}
    x = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x, policy=policy)
    # the graph's FLOPs, counted by FlopCounterMode, are what the eager compact path reports
    assert plan.graphs["model"].flops == pytest.approx(float(ref.flops[0]))
    export_model(model, tmp_path, format=fmt, policy=policy)
    deployed = DeployedModel.load(tmp_path)
    _check_same(deployed(x), ref)
    assert deployed(x[:1]).logits.shape == (1, 10)  # the batch stays dynamic


@pytest.mark.slow  # the other format of each model than the test above
@pytest.mark.parametrize("name", ["dynamic_vit_cifar", "evit_cifar"])
def test_a_token_model_runs_in_onnxruntime_like_pytorch(name, tmp_path):
    pytest.importorskip("onnxruntime")
    model = _model(name)
    export_model(model, tmp_path, format="onnx")  # the model's default keep ratio
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
    _check_same(DeployedModel.load(tmp_path)(x), ref)


def test_tied_scores_keep_the_earlier_token_as_the_eager_rule_does():
    # saturated keep probabilities tie at exactly 1.0; the traced rule must break ties as `select`
    policy = TokenPolicy(keep_ratio=0.5)
    scores = torch.tensor([[1.0, 0.2, 1.0, 1.0, 0.9, 1.0], [0.1, 0.3, 0.3, 0.3, 0.0, 0.2]])
    fixed = policy.select_fixed(scores, 0, 1)
    chosen = policy.select(scores, 0, 1)
    assert fixed.tolist() == [[0, 2, 3], [1, 2, 3]]
    assert torch.equal(torch.zeros_like(chosen).scatter(1, fixed, True), chosen)


def test_threshold_policies_and_wrong_policies_are_refused_with_clear_errors():
    model = _model("dynamic_vit_cifar")
    with pytest.raises(ConfigError, match="different number of tokens in each sample"):
        deployment_plan(model, policy=TokenPolicy(threshold=0.5))
    with pytest.raises(ConfigError, match="must be a TokenPolicy"):
        deployment_plan(model, policy=ExitPolicy("maxprob", []))
    with pytest.raises(ConfigError, match="select_fixed needs keep_ratio"):
        TokenPolicy(threshold=0.5).select_fixed(torch.rand(2, 4), 0, 1)
    deployed = DeployedModel.from_plan(deployment_plan(model))  # the plan's own modules: no export needed
    with pytest.raises(ConfigError, match="fixed at export"):
        deployed(torch.randn(2, 3, 32, 32), policy=TokenPolicy(keep_ratio=0.5))
