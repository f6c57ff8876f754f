"""Slimmable ResNets: costs vs FlopCounterMode, masked == sliced, sandwich training, norms."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, DynamicOutput, create_model
from dynamicnets.layers.slimmable import build_slice_cache, set_execution
from dynamicnets.layers.switchable_norm import calibrate_batchnorm
from dynamicnets.models.static import CifarResNet
from dynamicnets.models.width import SlimmableResNet
from dynamicnets.models.width.slimmable_resnet import slimmable_resnet50
from dynamicnets.flops import counted_flops

WIDTHS = (0.25, 0.5, 0.75, 1.0)


def cifar(**kw) -> SlimmableResNet:
    torch.manual_seed(0)
    return create_model("slimmable_resnet_cifar", **{"num_classes": 7, **kw})


def tiny_bottleneck(**kw) -> SlimmableResNet:
    """ResNet-50's layout (ImageNet stem, bottlenecks) at 1/8 the channels, one block per stage."""
    torch.manual_seed(0)
    return SlimmableResNet("bottleneck", (1, 1, 1, 1), 7, 3, stem="imagenet", base_width=8, **kw)


def test_resnet20_figures_and_costs_equal_flop_counter():
    model = cifar(num_classes=10).eval()
    per_width = {w: model.flops((3, 32, 32), w) for w in WIDTHS}
    assert per_width == {1.0: 81_626_368, 0.75: 46_080_960, 0.5: 20_628_096, 0.25: 5_267_776}
    # width 1.0 is exactly the static resnet20 (same option-B shortcuts)
    static = CifarResNet(20, 10, 3, 16)
    assert per_width[1.0] == static.flops((3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    for w in (0.25, 0.75):
        out = model(x, w)
        assert torch.equal(out.flops, torch.full((2,), float(per_width[w]), dtype=torch.float64))
        assert counted_flops(model, x, w) == 2 * per_width[w]
        assert (out.decisions["width"] == w).all()
    full_params = sum(p.numel() for n, p in model.named_parameters() if "bns." not in n or "bns.3" in n)
    assert full_params == sum(p.numel() for p in static.parameters()) == 272_474


def test_resnet50_figures():
    model = slimmable_resnet50(device="meta")
    ideal = slimmable_resnet50(width_mult=0.25, widths=(1.0,), device="meta")
    shape = (3, 224, 224)
    assert model.flops(shape, 1.0) == 8_178_368_512  # 2 x 4.09 G multiply-adds
    assert model.flops(shape, 0.25) == ideal.flops(shape) == 556_171_264
    width1 = sum(p.numel() for n, p in model.named_parameters() if "bns." not in n or "bns.3" in n)
    assert width1 == 25_557_032  # the standard ResNet-50 parameter count
    assert sum(p.numel() for p in ideal.parameters()) == 1_993_976


@pytest.mark.parametrize("width", [0.25, 1.0])
def test_bottleneck_layout_costs_equal_flop_counter(width):
    model = tiny_bottleneck().eval()
    x = torch.randn(1, 3, 40, 40)
    assert model(x, width).flops.item() == counted_flops(model, x, width)


@pytest.mark.parametrize("build", [cifar, tiny_bottleneck], ids=["basic", "bottleneck"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_masked_and_indexed_execution_equal_sliced(build, train):
    model = build().train(train)
    shape = (3, 16, 16) if build is cifar else (3, 40, 40)
    x = torch.randn(3, *shape)
    masked = set_execution(copy.deepcopy(model), "masked")
    indexed = set_execution(copy.deepcopy(model), "indexed")
    for w in (0.25, 0.5):
        sliced = model(x, w)
        torch.testing.assert_close(masked(x, w).logits, sliced.logits, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(indexed(x, w).logits, sliced.logits, atol=1e-5, rtol=1e-5)
        # masking runs (and reports) the full network's FLOPs
        assert masked(x, w).flops[0].item() == model.flops(shape, 1.0) > sliced.flops[0].item()
    if train:  # and the two modes train the same weights the same way
        model.zero_grad()
        model(x, 0.5).logits.square().sum().backward()
        masked(x, 0.5).logits.square().sum().backward()
        grads = dict(masked.named_parameters())
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(grads[name].grad, p.grad, atol=1e-3, rtol=1e-3)


def test_sandwich_training_runs_every_width_and_reaches_every_norm():
    model = cifar(inplace_distill=1.0).train()
    x = torch.randn(3, 3, 32, 32)
    out = model(x)
    assert isinstance(out, DynamicOutput)
    assert len(out.exit_logits) == 4 and out.logits is out.exit_logits[-1]
    expected_flops = sum(model.flops((3, 32, 32), w) for w in WIDTHS)
    assert out.flops[0].item() == expected_flops
    assert "inplace_distill" in out.aux_losses
    y = torch.tensor([0, 3, 6])
    loss = sum(F.cross_entropy(lg, y) for lg in out.exit_logits) + out.aux_loss()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_inplace_distillation_loss_pulls_narrow_widths_only():
    model = cifar(inplace_distill=1.0).train()
    out = model(torch.randn(2, 3, 32, 32), widths=[0.25, 1.0])
    out.aux_losses["inplace_distill"].backward()
    assert out.aux_losses["inplace_distill"].item() > 0
    head_grad = model.head.weight.grad
    # the teacher (width 1.0) is detached: only the 25% slice of the head gets a gradient
    assert head_grad[:, 16:].abs().sum() == 0 and head_grad[:, :16].abs().sum() > 0


def test_eval_runs_the_default_width_and_rejects_unconfigured_widths():
    model = cifar().eval()
    x = torch.randn(2, 3, 32, 32)
    assert (model(x).decisions["width"] == 1.0).all()
    model.set_default_width(0.5)
    torch.testing.assert_close(model(x).logits, model(x, 0.5).logits)
    with pytest.raises(ConfigError, match="not configured"):
        model(x, 0.6)
    with pytest.raises(ConfigError, match="widths must include 1.0"):
        create_model("slimmable_resnet_cifar", widths=(0.25, 0.5))
    with pytest.raises(ConfigError, match="depth"):
        create_model("slimmable_resnet_cifar", depth=21)


@pytest.mark.parametrize("name", ["slimmable_resnet_cifar", "dsnet_resnet_cifar"])
@pytest.mark.parametrize("widths", [[], (), 0.5])
def test_empty_or_scalar_widths_raise_a_config_error_naming_widths(name, widths):
    with pytest.raises(ConfigError, match=r"widths must be a non-empty list of width fractions"):
        create_model(name, widths=widths)


def test_universal_norm_runs_any_width_and_calibrates():
    torch.manual_seed(0)
    model = cifar(norm="universal", widths=(0.3, 1.0), num_random_widths=1).train()
    widths = model.training_widths()
    assert len(widths) == 3 and widths[0] == 0.3 and widths[-1] == 1.0
    assert len(model(torch.randn(2, 3, 32, 32)).exit_logits) == 3
    model.eval()
    batches = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    assert calibrate_batchnorm(model, batches, width=0.37) == 8
    x = torch.randn(2, 3, 32, 32)
    out = model(x, 0.37)
    assert out.flops[0].item() == counted_flops(model, x, 0.37) / 2
    with pytest.raises(ConfigError, match="below the smallest"):
        model(x, 0.2)


def test_model_slice_cache_matches_views_and_is_dropped_by_train():
    model = cifar().eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x, 0.5).logits
    build_slice_cache(model, [0.5])
    assert model.stages[1][0].conv1.conv.cached_widths() == [(16, 8)]
    torch.testing.assert_close(model(x, 0.5).logits, expected)
    model.train()
    assert model.stages[1][0].conv1.conv.cached_widths() == []
