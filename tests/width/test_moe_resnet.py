"""MoE ResNet: published params/FLOPs, compact == masked == per-sample, per-sample FLOPs,
decisions, aux losses, argument errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import ConfigError, create_model
from dynamicnets.models.width import MoECifarResNet
from dynamicnets.flops import counted_flops

SHAPE = (3, 16, 16)
EXPERT_CONV = 2 * 64 * 64 * 9 * 8 * 8  # one 64-channel 3x3 expert at 8x8, 3x32x32 input


def moe_resnet(**kw) -> MoECifarResNet:
    """A model whose routers spread the images over the experts."""
    torch.manual_seed(0)
    model = create_model("moe_resnet_cifar", **{"num_classes": 5, **kw})
    with torch.no_grad():
        for block in model.routed_blocks():
            block.moe.router.gate.weight.normal_(0, 1.0)
    return model


def inputs(batch: int = 6) -> torch.Tensor:
    offsets = torch.linspace(-3, 3, batch).view(batch, 1, 1, 1)
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(0)) + offsets


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_published_params_and_flops_at_the_default_config():
    static = create_model("resnet20")
    x = torch.randn(1, 3, 32, 32)
    for k, compact in ((1, 81_627_904), (2, 95_783_680)):
        torch.manual_seed(0)
        model = create_model("moe_resnet_cifar", k=k).eval()
        # three last-stage second convs become 4 experts; three 64x4 routers
        assert count_params(model) == count_params(static) + 3 * 3 * 64 * 64 * 9 + 3 * 64 * 4
        assert count_params(model) == 605_018
        assert compact == static.flops(x.shape[1:]) + 3 * (512 + (k - 1) * EXPERT_CONV)
        assert model(x).flops.tolist() == [compact] and counted_flops(model, x) == compact
    # masked: every expert on every image plus the mix, 2 * 4 per output element
    masked = 81_626_368 + 3 * (512 + 3 * EXPERT_CONV + 2 * 4 * 64 * 8 * 8)
    assert masked == 124_193_536
    assert model(x, "masked").flops.tolist() == [masked]
    assert counted_flops(model, x, "masked") == masked


@pytest.mark.parametrize("k", [1, 2])
def test_compact_equals_masked_and_each_image_alone(k):
    model = moe_resnet(k=k).eval()
    x = inputs()
    with torch.no_grad():
        compact = model(x)
        masked = model(x, "masked")
        torch.testing.assert_close(compact.logits, masked.logits, atol=1e-4, rtol=1e-4)
        for b in range(x.shape[0]):  # dropless top-k: an image's output ignores the batch
            alone = model(x[b : b + 1]).logits
            torch.testing.assert_close(compact.logits[b : b + 1], alone, atol=1e-4, rtol=1e-4)
    for key in ("experts", "expert_indices", "compact_flops"):
        assert torch.equal(compact.decisions[key], masked.decisions[key]), key
    torch.testing.assert_close(
        compact.decisions["expert_weights"], masked.decisions["expert_weights"]
    )
    assert torch.equal(compact.decisions["compact_flops"], compact.flops)
    indices = compact.decisions["expert_indices"]
    assert indices.shape == (6, 3, k) and indices.unique().numel() >= 2
    assert torch.equal(
        compact.decisions["experts"], F.one_hot(indices, 4).sum(2).bool()
    )


def test_training_masked_equals_compact_with_batch_statistics():
    model = moe_resnet(k=2).train()
    x = inputs()
    masked = model(x, "masked")
    compact = model(x, "compact")
    torch.testing.assert_close(masked.logits, compact.logits, atol=1e-4, rtol=1e-4)
    assert (masked.flops > compact.flops).all()


def test_per_sample_flops_are_what_each_image_ran():
    """Expert choice: images get 0..E experts, so their costs differ."""
    model = moe_resnet(router="expert_choice", k=1).eval()
    x = inputs()
    out = model(x)
    assert int(out.flops.sum()) == counted_flops(model, x)
    ran = out.decisions["experts"].sum(dim=(1, 2)).double()
    fixed = model.flops(SHAPE) + 3 * 2 * 64 * 4
    assert torch.equal(out.flops, fixed + ran * (2 * 64 * 64 * 9 * 4 * 4))
    assert out.flops.unique().numel() >= 2


def test_capacity_drops_show_in_decisions_and_flops():
    model = moe_resnet(capacity_factor=0.5).eval()  # 6 images, k=1, E=4: 1 per expert
    out = model(inputs())
    indices = out.decisions["expert_indices"]
    assert (indices == -1).any()
    assert torch.equal(out.decisions["experts"].sum(2), (indices != -1).sum(2))
    assert int(out.flops.sum()) == counted_flops(model, inputs())


def test_aux_losses_sum_over_layers_and_reach_every_router():
    assert len(moe_resnet(depth=8).routed_blocks()) == 1  # "last_stage"
    model = moe_resnet(depth=8, moe_blocks="all", k=2).train()
    out = model(inputs(4))
    assert out.decisions["experts"].shape == (4, 3, 4)
    assert set(out.aux_losses) == {"load_balance", "router_z"}
    out.aux_loss().backward()
    for block in model.routed_blocks():
        assert block.moe.router.gate.weight.grad.abs().sum() > 0


def test_bad_arguments_raise_config_errors_naming_them():
    cases = {
        "k=3 exceeds": {"num_experts": 2, "k": 3},
        "moe_blocks": {"moe_blocks": "first"},
        "depth": {"depth": 21},
        "num_experts": {"num_experts": 0},
        "router must be": {"router": "hash"},
        "capacity_factor": {"capacity_factor": -1.0},
    }
    for match, kwargs in cases.items():
        with pytest.raises(ConfigError, match=match):
            create_model("moe_resnet_cifar", **kwargs)
    with pytest.raises(ConfigError, match="execution"):
        create_model("moe_resnet_cifar")(torch.randn(1, *SHAPE), "sparse")
    with pytest.raises(ConfigError, match="in_chans"):
        create_model("moe_resnet_cifar").eval()(torch.randn(1, 1, 16, 16))
