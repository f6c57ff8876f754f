"""MoE ViT: masked == compact for the same routing, honest per-sample FLOPs, aux losses,
ragged token batches, and upcycling a static checkpoint."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import counted_flops
from dynamicnets.layers.moe_feed_forward import MoEMlp
from dynamicnets.layers.ragged_tokens import RaggedTokens
from dynamicnets.layers.token_batching import executed_flops, run_blocks
from dynamicnets.models.transformers.moe_vit import upcycled_state_dict
from dynamicnets.training.checkpoint import save_checkpoint
from dynamicnets.training.initialise import load_initial_weights

SMALL = {"img_size": 16, "embed_dim": 32, "num_heads": 2, "depth": 4}


def _small(seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    return create_model("moe_vit_cifar", **SMALL, **kwargs).eval()


def _images(batch: int, seed: int = 1, side: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _spread_router(model, scale: float = 20.0):
    """Sharper routers, so that a random model uses every expert and capacity drops some tokens."""
    with torch.no_grad():
        for layer in model.moe_layers():
            layer.router.gate.weight.mul_(scale)
    return model


def test_figures_of_the_module_docstring():
    model = create_model("moe_vit_cifar").eval()
    assert model.moe_blocks == (1, 3, 5)
    assert sum(p.numel() for p in model.parameters()) == 1_405_962
    assert model.flops() == 116_204_032 and model.flops(execution="masked") == 193_080_832
    # a token's compact cost is the dense block's plus the router
    assert model.flops() - create_model("vit_cifar").flops() == 3 * 65 * 2 * 128 * 4


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("capacity_factor", [None, 0.5])
def test_masked_equals_compact_for_the_same_routing(k, capacity_factor):
    torch.manual_seed(0)
    layer = MoEMlp(16, 24, num_experts=4, k=k, capacity_factor=capacity_factor)
    x = torch.randn(3, 7, 16)
    routing = layer.router(x)
    masked = layer.run(x, routing, execution="masked")
    compact = layer.run(x, routing, execution="compact")
    torch.testing.assert_close(masked.output, compact.output)
    assert masked.output.shape == x.shape and torch.equal(masked.kept, compact.kept)
    assert masked.aux_losses.keys() == compact.aux_losses.keys() == {"load_balance", "router_z"}
    for name in masked.aux_losses:
        torch.testing.assert_close(masked.aux_losses[name], compact.aux_losses[name])
    if capacity_factor is not None:
        assert not compact.kept.all()  # some assignments were dropped, the same in both
    # on packed (T, D) rows the layer gives the same per-token result
    torch.testing.assert_close(layer.eval()(x.reshape(-1, 16)), compact.output.reshape(-1, 16))


def test_model_masked_equals_compact_and_both_count_their_flops():
    model = _spread_router(_small(capacity_factor=1.0))
    x = _images(5)
    with torch.no_grad():
        compact = model(x)
        masked = model(x, execution="masked")
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(masked.decisions["expert_indices"], compact.decisions["expert_indices"])
    indices = compact.decisions["expert_indices"]
    assert indices.shape == (5, 2, 17, 1) and (indices == -1).any()  # capacity dropped some tokens
    # compact: per-sample FLOPs are what ran (the batch's drops differ per sample) ...
    assert counted_flops(model, x) == int(compact.flops.sum().item())
    assert len(set(compact.flops.tolist())) > 1 and (compact.flops <= model.flops((3, 16, 16))).all()
    torch.testing.assert_close(compact.decisions["compact_flops"], compact.flops)
    torch.testing.assert_close(masked.decisions["compact_flops"], compact.flops)
    # ... and every sample's own: its tokens' kept experts and routers
    rows = (indices >= 0).sum(dim=(1, 2, 3)).double()
    row = 4 * 32 * 64
    expected = model.fixed_flops((3, 16, 16)) + 2 * 17 * 2 * 32 * 4 + rows * row
    torch.testing.assert_close(compact.flops, expected)
    # masked: every expert on every token, the same for every sample
    assert counted_flops(lambda: model(x, execution="masked")) == 5 * model.flops((3, 16, 16), "masked")
    assert masked.flops.tolist() == [float(model.flops((3, 16, 16), "masked"))] * 5


def test_dropless_cost_is_fixed_per_sample_at_any_batch():
    model = _spread_router(_small(k=2))
    x = _images(4)
    with torch.no_grad():
        out = model(x)
    assert out.flops.tolist() == [float(model.flops((3, 16, 16)))] * 4
    assert counted_flops(model, x) == 4 * model.flops((3, 16, 16))


@pytest.mark.parametrize("k", [1, 2])
def test_training_surfaces_aux_losses_and_trains_the_router(k):
    model = _small(k=k).train()
    out = model(_images(3))
    assert set(out.aux_losses) == {"load_balance", "router_z"}
    assert all(v.dim() == 0 for v in out.aux_losses.values())
    # the task loss alone reaches the routers (Switch's raw probability at k = 1)
    torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2])).backward()
    for layer in model.moe_layers():
        assert layer.router.gate.weight.grad.abs().sum() > 0


def test_compact_training_gives_the_masked_gradients():
    """`train_execution: compact` trains the same model as the masked default, cheaper."""
    grads = {}
    for execution in ("masked", "compact"):
        model = _spread_router(_small()).train()
        out = model(_images(3), execution=execution)
        loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 2])) + out.aux_loss()
        loss.backward()
        grads[execution] = {n: torch.zeros_like(p) if p.grad is None else p.grad
                            for n, p in model.named_parameters()}
    for name, grad in grads["masked"].items():
        torch.testing.assert_close(grads["compact"][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("strategy", ["pad", "pack", "bucket"])
def test_blocks_run_ragged_token_batches(strategy):
    """Each sample of a ragged batch gets what it gets alone; the cost is `executed_flops`."""
    model = _spread_router(_small())
    tokens = model.embed(_images(3))
    keep = torch.ones(3, 17, dtype=torch.bool)
    keep[0, 5:] = False
    keep[2, 11:] = False
    ragged = RaggedTokens.from_mask(tokens, keep)
    with torch.no_grad():
        out = run_blocks(model.blocks, ragged, strategy)
        for sample, (part, length) in enumerate(zip(out.split(), ragged.lengths)):
            alone = tokens[sample : sample + 1, :length]
            for block in model.blocks:
                alone = block(alone)
            torch.testing.assert_close(part, alone[0], rtol=1e-4, atol=1e-5)
    counted = counted_flops(run_blocks, model.blocks, ragged, strategy)
    assert counted == sum(executed_flops(model.blocks, ragged.lengths, strategy))


def test_upcycled_checkpoint_copies_the_dense_mlp_into_every_expert(tmp_path):
    torch.manual_seed(1)
    static = create_model("vit_cifar", **SMALL).eval()
    model = _small(seed=2)
    save_checkpoint(tmp_path / "moe.pt", {"model": upcycled_state_dict(model, static.state_dict())})
    copied, total = load_initial_weights(model, tmp_path / "moe.pt")
    assert total - copied == 2 * (1 + 4)  # per MoE block: router, and the experts' second name under layer.
    x = torch.randn(2, 5, 32)
    for index, layer in zip(model.moe_blocks, model.moe_layers()):
        dense = static.blocks[index].mlp
        with torch.no_grad():
            out = layer.run(x)
            weight = out.routing.expert_weights.view(2, 5, 1)
            torch.testing.assert_close(out.output, weight * dense(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="fc1.weight"):
        upcycled_state_dict(model, {})


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"moe_blocks": (0, 4)}, "moe_blocks"), ({"moe_blocks": []}, "moe_blocks"), ({"moe_blocks": "1,3"}, "moe_blocks"),
    ({"router": "expert_choice"}, "router"), ({"k": 5}, "k=5"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model("moe_vit_cifar", **SMALL, **kwargs)
