"""The width cascade: one slimmable network's widths as a confidence cascade."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.deploy import DeployedModel, deployment_plan
from dynamicnets.flops import counted_flops
from dynamicnets.inference import ExitPolicy, calibrate_thresholds, collect_exit_logits, run_all_then_select, run_early_exit
from dynamicnets.models.width import WidthCascade


def _backbone():
    torch.manual_seed(0)
    model = create_model("slimmable_resnet_cifar", base_width=4)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # spread the logits so confidences differ between samples
    return model.eval()


def _images(n: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _median_policy(cascade, x) -> ExitPolicy:
    """Thresholds at each exit's median max-probability: some samples leave, some go on."""
    with torch.no_grad():
        logits = cascade(x).exit_logits
    return ExitPolicy("maxprob", [float(l.softmax(-1).amax(-1).median()) for l in logits[:-1]])


def test_stages_are_the_backbone_widths_and_share_its_weights():
    backbone = _backbone()
    cascade = WidthCascade(backbone, (0.25, 0.75, 1.0)).eval()
    x = _images(4)
    out = cascade(x)
    for width, logits in zip((0.25, 0.75, 1.0), out.exit_logits):
        torch.testing.assert_close(logits, backbone(x, width).logits)
    assert list(cascade.state_dict()) == [f"backbone.{k}" for k in backbone.state_dict()]
    with torch.no_grad():
        backbone.head.bias.add_(1.0)  # one set of weights: the cascade sees the change
    torch.testing.assert_close(cascade(x).logits, backbone(x, 1.0).logits)
    clone = copy.deepcopy(cascade)
    assert all(stage.backbone is clone.backbone for stage in clone.stages)


def test_costs_add_up_every_width_run_and_match_the_flop_counter():
    backbone = _backbone()
    cascade = WidthCascade(backbone, (0.5, 1.0)).eval()
    shape = (3, 16, 16)
    assert cascade.exit_costs(shape) == [backbone.flops(shape, 0.5), backbone.flops(shape, 0.5) + backbone.flops(shape, 1.0)]
    x = _images(1)
    for stage in cascade.stages:
        assert counted_flops(stage, x) == stage.flops_and_shape(shape)[0]
    assert counted_flops(cascade, x) == cascade.flops(shape)
    # budgets and speedups are relative to the widest width alone, not to running every width
    assert cascade.reference_flops(shape) == backbone.flops(shape, 1.0)
    torch.testing.assert_close(cascade.reference_forward(x), backbone(x, 1.0).logits)


def test_compact_run_equals_run_everything_reference_and_spends_what_it_reports():
    cascade = WidthCascade(_backbone()).eval()  # every configured width: four exits
    x = _images(32)
    policy = _median_policy(cascade, x)
    compact = run_early_exit(cascade, x, policy)
    reference = run_all_then_select(cascade, x, policy)
    assert len(set(compact.exit_index.tolist())) > 2  # the case is dynamic
    assert torch.equal(compact.exit_index, reference.exit_index)
    assert torch.equal(compact.predictions, reference.predictions)
    assert torch.equal(compact.flops, reference.flops)
    torch.testing.assert_close(compact.logits, reference.logits, rtol=1e-4, atol=1e-4)
    assert counted_flops(run_early_exit, cascade, x, policy) == pytest.approx(float(compact.flops.sum()))


def test_thresholds_calibrate_to_a_budget():
    cascade = WidthCascade(_backbone(), (0.5, 1.0)).eval()
    x = _images(64)
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(2))
    logits, targets = collect_exit_logits(cascade, [(x, y)])
    costs = [float(c) for c in cascade.exit_costs((3, 16, 16))]
    budget = costs[0] + 0.4 * (costs[1] - costs[0])
    fitted = calibrate_thresholds(logits, targets, costs, budget, criterion="maxprob")
    result = run_early_exit(cascade, x, ExitPolicy("maxprob", fitted.policy.thresholds))
    assert result.mean_flops() <= budget + 1e-6
    assert 0 < int((result.exit_index == 0).sum()) < 64


def test_deployed_runtime_equals_the_executor():
    cascade = WidthCascade(_backbone(), (0.25, 1.0)).eval()
    x = _images(12)
    policy = _median_policy(cascade, x)
    deployed = DeployedModel.from_plan(deployment_plan(cascade, (3, 16, 16), policy))
    out = deployed(x)
    reference = run_early_exit(cascade, x, policy)
    assert len(set(reference.exit_index.tolist())) == 2
    assert torch.equal(out.decisions["exit_index"], reference.exit_index)
    torch.testing.assert_close(out.logits, reference.logits)
    assert torch.equal(out.flops, reference.flops)


def test_training_runs_the_cascade_widths_as_a_sandwich():
    cascade = WidthCascade(_backbone(), (0.5, 1.0)).train()
    x, y = _images(4), torch.tensor([0, 1, 2, 3])
    out = cascade(x)
    assert len(out.exit_logits) == 2
    sum(F.cross_entropy(l, y) for l in out.exit_logits).backward()
    bns = cascade.backbone.stem.bn.bns  # one BatchNorm per configured width (0.25, 0.5, 0.75, 1.0)
    assert bns[1].weight.grad is not None and bns[3].weight.grad is not None
    assert bns[0].weight.grad is None and bns[2].weight.grad is None  # widths the cascade never runs


def test_registered_factory_and_classifier_api():
    cascade = create_model("width_cascade", widths=(0.5, 1.0), backbone_args={"base_width": 4}, num_classes=7)
    assert cascade.widths == (0.5, 1.0)
    assert cascade.classifier_paths == ("backbone.head",)
    assert cascade.num_features == cascade.backbone.channels(1.0)
    cascade.reset_classifier(3)
    assert cascade.eval()(_images(2)).logits.shape == (2, 3)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="slimmable network"):
        WidthCascade(create_model("resnet20"))
    with pytest.raises(ConfigError, match="increasing"):
        WidthCascade(_backbone(), (1.0, 0.5))
    with pytest.raises(ConfigError, match="not configured"):
        WidthCascade(_backbone(), (0.6, 1.0))
    with pytest.raises(ConfigError, match="backbone_args"):
        create_model("width_cascade", backbone_args={"num_classes": 3})
    with pytest.raises(ConfigError, match=r"backbone_args=\{'pretrained': 'cifar10'\}"):
        create_model("width_cascade", pretrained="cifar10")  # the weights are the backbone's


def test_the_shipped_slimmable_weights_load_into_a_cascade():
    cascade = create_model("width_cascade", widths=(0.5, 1.0), backbone_args={"pretrained": "cifar10"}).eval()
    shipped = create_model("slimmable_resnet_cifar", pretrained="cifar10").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(cascade(x).exit_logits[0], shipped(x, 0.5).logits)
