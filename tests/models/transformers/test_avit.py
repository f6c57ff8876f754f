"""A-ViT: compact == masked for the same halting decisions (pad / pack / bucket, batch 1
and > 1, several eps), each sample of a ragged batch computes what it computes alone,
per-sample FLOPs == FlopCounterMode, halting bookkeeping, the ponder and prior terms and
their gradients, late halting from a static checkpoint, argument errors."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.gates.token_halting import (
    HaltingPolicy,
    depth_prior,
    halting_distribution,
    prior_kl,
    token_halting_scores,
)
from dynamicnets.models.transformers import AViT
from dynamicnets.training.checkpoint import save_checkpoint
from dynamicnets.training.initialise import load_initial_weights

BATCHINGS = ["pad", "pack", "bucket"]
SMALL = dict(embed_dim=32, num_heads=2, mlp_ratio=2.0)
ROOT = Path(__file__).resolve().parents[3]
TRAINED_VIT = ROOT / "runs" / "transformers" / "cifar10_vit_cifar" / "best.pt"


def halting(model: AViT) -> AViT:
    """A first channel that varies over the tokens: a fresh model's is about 0 everywhere,
    where the default scale and shift never halt; with a steeper scale and a shift near 0
    tokens halt at different blocks."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.pos_embed[..., 0] = torch.randn(model.pos_embed.shape[1], generator=generator) * 0.3
    return model


def small_model(dtype=torch.float64, **kwargs) -> AViT:
    torch.manual_seed(0)
    kwargs = {"halting_scale": 10.0, "halting_shift": -1.5, **kwargs}
    return halting(create_model("avit_cifar", **SMALL, **kwargs).to(dtype)).eval()


def images(batch: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


# ------------------------------------------------------------------ layout and checkpoints
def test_registered_layouts():
    model = create_model("avit_cifar")
    assert (model.halting_scale, model.halting_shift, model.eps, model.target_depth) == (5.0, -10.0, 0.01, 4.0)
    deit = create_model("avit_deit_tiny_patch16_224", device="meta")
    assert deit.depth == 12 and deit.target_depth == 8.0


def test_a_static_vit_checkpoint_loads_whole_and_fresh_halting_is_late(tmp_path):
    torch.manual_seed(1)
    static = create_model("vit_cifar", **SMALL).eval()
    path = tmp_path / "vit.pt"
    save_checkpoint(path, {"model": static.state_dict(), "model_name": "vit_cifar"})
    model = create_model("avit_cifar", **SMALL).eval()
    assert model.state_dict().keys() == static.state_dict().keys()  # no parameters of its own
    copied, total = load_initial_weights(model, path)
    assert copied == total
    x = images(3, torch.float32)
    with torch.no_grad():
        want = static(x).logits
        for execution in ("masked", "compact"):
            out = model(x, execution=execution)
            # gamma = 5, beta = -10: no token halts before the last block, the static ViT
            assert (out.decisions["halting_depth"] == model.depth - 1).all()
            torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(not TRAINED_VIT.is_file(), reason="no trained vit_cifar checkpoint in runs/transformers")
def test_the_trained_vit_checkpoint_halts_late():
    """Fresh from the trained static ViT, tokens run most blocks: fine-tuning starts from
    the static network, not from one whose tokens all stop after the first block."""
    model = create_model("avit_cifar").eval()
    load_initial_weights(model, TRAINED_VIT)
    with torch.no_grad():
        out = model(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert (out.decisions["halting_depth"] >= 3).float().mean() > 0.9


# ------------------------------------------------------------------ compact == masked
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("batching", BATCHINGS)
def test_compact_equals_masked_for_the_same_halting(batching, batch):
    model = small_model()
    x = images(batch)
    for eps in (0.01, 0.3):
        policy = HaltingPolicy(eps, batching)
        with torch.no_grad():
            masked = model(x, execution="masked", policy=policy)
            compact = model(x, execution="compact", policy=policy)
            features = {e: model.forward_features(x, execution=e, policy=policy) for e in ("masked", "compact")}
        for key in ("halting_depth", "tokens_per_block"):
            assert torch.equal(masked.decisions[key], compact.decisions[key]), (eps, key)
        torch.testing.assert_close(compact.logits, masked.logits)
        torch.testing.assert_close(features["compact"], features["masked"])
        torch.testing.assert_close(compact.decisions["ponder"], masked.decisions["ponder"])
        torch.testing.assert_close(compact.decisions["compact_flops"], masked.decisions["compact_flops"])
        depth = masked.decisions["halting_depth"]
        assert depth.shape == (batch, 64) and depth.dtype == torch.int64
        assert len(set(depth.flatten().tolist())) > 2, "the test needs tokens halting at several blocks"


def test_halting_bookkeeping():
    model = small_model()
    with torch.no_grad():
        out = model(images(4), policy=HaltingPolicy(0.1))
    depth, per_block = out.decisions["halting_depth"], out.decisions["tokens_per_block"]
    assert per_block.shape == (4, model.depth) and (per_block[:, 0] == 65).all()
    assert (per_block[:, 1:] <= per_block[:, :-1]).all()
    for block in range(model.depth):  # block l runs the class token and the tokens that halt at l or later
        assert torch.equal(per_block[:, block], 1 + (depth >= block).sum(dim=1))
    # N + R: N = depth + 1 blocks run, R in (0, 1]
    assert ((out.decisions["ponder"] > (depth + 1).double().mean(dim=1))
            & (out.decisions["ponder"] <= (depth + 2).double().mean(dim=1))).all()


def test_eps_one_halts_every_patch_token_after_the_first_block_and_the_class_token_never():
    model = small_model()
    with torch.no_grad():
        out = model(images(3), policy=HaltingPolicy(1.0))
    assert (out.decisions["halting_depth"] == 0).all()
    assert (out.decisions["tokens_per_block"][:, 1:] == 1).all()
    assert (out.decisions["tokens_per_block"][:, 0] == 65).all()


@pytest.mark.parametrize("batching", BATCHINGS)
def test_each_sample_of_a_ragged_batch_computes_what_it_computes_alone(batching):
    model = small_model()
    x = images(5, seed=4)
    policy = HaltingPolicy(0.1, batching)
    with torch.no_grad():
        together = model(x, policy=policy)
        for i in range(5):
            alone = model(x[i:i + 1], policy=policy)
            torch.testing.assert_close(together.logits[i:i + 1], alone.logits)
            assert torch.equal(together.decisions["halting_depth"][i:i + 1], alone.decisions["halting_depth"])
            if batching != "pad":
                assert together.flops[i] == alone.flops[0]


def test_float32_compact_equals_masked():
    model = small_model(torch.float32)
    x = images(4, torch.float32)
    with torch.no_grad():
        masked = model(x, execution="masked")
        compact = model(x, execution="compact")
    assert torch.equal(masked.decisions["halting_depth"], compact.decisions["halting_depth"])
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ costs
@pytest.mark.parametrize("batching", BATCHINGS)
def test_per_sample_flops_equal_the_flop_counter_on_the_compact_path(batching):
    model = small_model()
    x = images(4)
    policy = HaltingPolicy(0.1, batching)
    with torch.no_grad():
        out = model(x, policy=policy)
    assert out.flops.shape == (4,) and out.flops.dtype == torch.float64
    assert int(out.flops.sum()) == counted_flops(lambda: model(x, policy=policy))
    if batching != "pad":  # pad charges every sample the longest sample's tokens
        assert len(set(out.flops.tolist())) > 1
        assert torch.equal(out.flops, out.decisions["compact_flops"])
        for i in range(4):
            assert int(out.flops[i]) == counted_flops(lambda: model(x[i:i + 1], policy=policy))


def test_masked_flops_are_the_static_vits_and_equal_the_flop_counter():
    model = small_model()
    x = images(3)
    with torch.no_grad():
        out = model(x, execution="masked")
    per_sample = counted_flops(lambda: model(x, execution="masked")) / 3
    assert (out.flops == per_sample).all() and model.flops() == per_sample
    assert model.flops() == create_model("vit_cifar", **SMALL).flops()
    assert (out.decisions["compact_flops"] < per_sample).all()


# ------------------------------------------------------------------ training terms
def test_halting_scores_read_the_first_channel():
    tokens = torch.tensor([[[0.0, 9.0], [2.0, -9.0], [3.0, 0.0]]])
    scores = token_halting_scores(tokens, 5.0, -10.0)
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([[-10.0, 0.0, 5.0]])))


def test_depth_prior_and_kl():
    prior = depth_prior(6, 4.0, 1.0)
    torch.testing.assert_close(prior.sum(), torch.tensor(1.0))
    assert int(prior.argmax()) == 3
    assert abs(float(prior_kl(prior, prior))) < 1e-5
    uniform = torch.full((6,), 1 / 6)
    assert float(prior_kl(uniform, prior)) > 0.1
    masses = [torch.full((2, 3), 0.25), torch.full((2, 3), 0.75)]
    torch.testing.assert_close(halting_distribution(masses), torch.tensor([0.25, 0.75]))


def test_training_losses_on_both_paths_agree_and_the_masses_sum_to_one():
    model = small_model().train()
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    results = {}
    for execution in ("masked", "compact"):
        model.zero_grad()
        out = model(x, execution=execution)
        assert set(out.aux_losses) == {"ponder", "halting_prior"}
        (F.cross_entropy(out.logits, y) + out.aux_loss()).backward()
        results[execution] = (out, {n: p.grad.clone() for n, p in model.named_parameters()})
    (masked, masked_grads), (compact, compact_grads) = results["masked"], results["compact"]
    torch.testing.assert_close(compact.logits, masked.logits)
    for key in ("ponder", "halting_prior"):
        torch.testing.assert_close(compact.aux_losses[key], masked.aux_losses[key])
    for name in masked_grads:
        torch.testing.assert_close(compact_grads[name], masked_grads[name], msg=name)
    ponder = masked.decisions["ponder"].mean()
    torch.testing.assert_close(masked.aux_losses["ponder"], model.ponder_weight * ponder)


def test_the_ponder_cost_pushes_the_first_channel_up():
    """A larger first channel after block 0 halts tokens earlier: the ponder gradient on
    block 0's last bias, channel 0, is negative (and only that term is backpropagated)."""
    model = small_model().train()
    out = model(images(4))
    out.aux_losses["ponder"].backward()
    bias = model.blocks[0].mlp.fc2.bias.grad
    assert bias[0] < 0
    assert model.blocks[model.depth - 1].mlp.fc2.bias.grad is None  # h = 1 after the last block


def test_the_prior_pulls_late_halting_earlier():
    """Fresh defaults halt every token at the last block; the prior, centred at 4 of 6
    blocks, asks for earlier halting: its gradient on the first channel is negative too."""
    torch.manual_seed(0)
    model = create_model("avit_cifar", **SMALL).double().train()
    out = model(images(2))
    assert (out.decisions["halting_depth"] == model.depth - 1).all()
    assert out.aux_losses["halting_prior"].item() > 0.1
    out.aux_losses["halting_prior"].backward()
    assert model.blocks[0].mlp.fc2.bias.grad[0] < 0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, match", [
    ({"eps": 0.0}, r"eps must be a number in \(0, 1\)"),
    ({"eps": 1.0}, "eps"),
    ({"halting_scale": float("inf")}, "halting_scale must be a finite number"),
    ({"halting_shift": "x"}, "halting_shift"),
    ({"target_depth": 0.5}, r"target_depth must be a number of blocks in \[1, depth = 6\]"),
    ({"target_depth": 7}, "target_depth"),
    ({"prior_std": 0.0}, "prior_std must be a number > 0"),
    ({"ponder_weight": -1.0}, "ponder_weight must be a number >= 0"),
    ({"prior_weight": float("nan")}, "prior_weight"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model("avit_cifar", **SMALL, **kwargs)


def test_bad_policies_are_config_errors():
    model = small_model()
    x = images(1)
    with pytest.raises(ConfigError, match="policy must be a HaltingPolicy"):
        model(x, policy=0.01)
    with pytest.raises(ConfigError, match=r"eps must be a number in \[0, 1\]"):
        HaltingPolicy(eps=1.5)
    with pytest.raises(ConfigError, match="token batching must be one of"):
        HaltingPolicy(token_batching="dense")


def test_full_flops_is_every_token_through_every_block_whatever_halts():
    from dynamicnets.pipelines.evaluate import full_flops_per_sample

    model = small_model(dtype=torch.float32, halting_shift=20.0)  # eval; every patch token halts at once
    x = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        halted = model(x).flops.item()
        every = counted_flops(lambda: model(x, execution="masked"))
    assert model.full_flops((3, 32, 32)) == every == model.flops((3, 32, 32)) > 2 * halted
    assert full_flops_per_sample(model, (3, 32, 32)) == every
