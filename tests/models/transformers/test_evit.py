"""EViT: compact == masked for the same token selections (keep ratio and threshold, pad /
pack / bucket, batch 1 and > 1), each sample of a ragged batch computes what it computes
alone, per-sample FLOPs == FlopCounterMode, the fusion and the keep scores, static
checkpoints, training on both paths, argument errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.inference.token_policy import TokenPolicy
from dynamicnets.layers.token_reorganisation import fusion_weights, keep_scores
from dynamicnets.models.transformers import EViT
from dynamicnets.training.checkpoint import save_checkpoint
from dynamicnets.training.initialise import load_initial_weights

BATCHINGS = ["pad", "pack", "bucket"]
SMALL = dict(embed_dim=32, num_heads=2, mlp_ratio=2.0)


def peaked(model: EViT) -> EViT:
    """Larger query/key weights: the class attention of a fresh model is nearly uniform,
    this spreads it so thresholds keep clearly different counts per sample."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.copy_(torch.randn(block.attn.qkv.weight.shape, generator=generator) * 0.6)
    return model


def small_model(dtype=torch.float64, **kwargs) -> EViT:
    torch.manual_seed(0)
    return peaked(create_model("evit_cifar", **SMALL, **kwargs).to(dtype)).eval()


def images(batch: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


def policies(batching: str) -> dict[str, TokenPolicy]:
    return {
        "ratio": TokenPolicy(keep_ratio=0.7, token_batching=batching),
        "ratio_per_stage": TokenPolicy(keep_ratio=(0.9, 0.5, 0.6), token_batching=batching),
        "threshold": TokenPolicy(threshold=0.3, token_batching=batching),
        "threshold_per_stage": TokenPolicy(threshold=(0.2, 0.5, 0.4), min_tokens=2, token_batching=batching),
    }


# ------------------------------------------------------------------ layout and checkpoints
def test_registered_layouts():
    model = create_model("evit_cifar")
    assert model.reorganize_in == (1, 3, 5) and model.keep_ratio == 0.7
    deit = create_model("evit_deit_tiny_patch16_224", device="meta")
    assert deit.reorganize_in == (3, 6, 9) and deit.depth == 12


def test_a_static_vit_checkpoint_loads_whole_and_keeping_everything_is_the_static_vit(tmp_path):
    torch.manual_seed(1)
    static = create_model("vit_cifar", **SMALL).eval()
    path = tmp_path / "vit.pt"
    save_checkpoint(path, {"model": static.state_dict(), "model_name": "vit_cifar"})
    model = create_model("evit_cifar", **SMALL, keep_ratio=1.0).eval()
    assert model.state_dict().keys() == static.state_dict().keys()  # EViT adds no parameters
    copied, total = load_initial_weights(model, path)
    assert copied == total == len(static.state_dict())
    x = images(3, torch.float32)
    with torch.no_grad():
        want = static(x).logits
        for execution in ("masked", "compact"):
            out = model(x, execution=execution)
            torch.testing.assert_close(out.logits, want, rtol=1e-4, atol=1e-5)
            assert (out.decisions["tokens"] == 65).all()  # nothing dropped, no fused token


def test_keep_ratio_counts_follow_ceil_and_the_fused_token_competes():
    model = small_model()
    with torch.no_grad():
        out = model(images(2))
    # 64 -> 45 kept + fused = 46 -> 33 + fused = 34 -> 24 + fused = 25, plus the class token
    assert out.decisions["tokens"].tolist() == [26, 26]
    for s in range(3):
        kept = out.decisions[f"kept.{s}"]
        assert kept.shape == (2, 64) and kept.dtype == torch.bool
        if s:
            assert not (kept & ~out.decisions[f"kept.{s - 1}"]).any()  # a dropped token never returns
    # the stage's 33 (24) kept tokens may include the earlier fused token: patches kept <= 33 (24)
    assert (out.decisions["kept.0"].sum(dim=1) == 45).all()
    assert (out.decisions["kept.1"].sum(dim=1) <= 33).all() and (out.decisions["kept.1"].sum(dim=1) >= 32).all()


# ------------------------------------------------------------------ compact == masked
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("batching", BATCHINGS)
def test_compact_equals_masked_for_the_same_selections(batching, batch):
    model = small_model()
    x = images(batch)
    for name, policy in policies(batching).items():
        with torch.no_grad():
            masked = model(x, execution="masked", policy=policy)
            compact = model(x, execution="compact", policy=policy)
        for s in range(model.num_stages):
            assert torch.equal(masked.decisions[f"kept.{s}"], compact.decisions[f"kept.{s}"]), (name, s)
        assert torch.equal(masked.decisions["tokens"], compact.decisions["tokens"]), name
        torch.testing.assert_close(compact.logits, masked.logits, msg=name)
        torch.testing.assert_close(compact.decisions["compact_flops"], masked.decisions["compact_flops"], msg=name)
        features = model.forward_features(x, execution="compact", policy=policy)
        assert features.shape == (batch, int(compact.decisions["tokens"].max()), model.embed_dim)
        torch.testing.assert_close(model.forward_head(features), compact.logits)


def test_thresholds_give_per_sample_counts_and_zero_keeps_everything():
    model = small_model()
    x = images(6)
    with torch.no_grad():
        counts = model(x, policy=TokenPolicy(threshold=0.3)).decisions["tokens"]
        everything = model(x, policy=TokenPolicy(threshold=0.0)).decisions["tokens"]
        fewer = model(x, policy=TokenPolicy(threshold=0.6)).decisions["tokens"]
    assert len(set(counts.tolist())) > 1
    assert (everything == 65).all()  # every attention weight is > 0: nothing dropped
    assert (fewer <= counts).all() and (fewer < counts).any()


@pytest.mark.parametrize("batching", BATCHINGS)
def test_each_sample_of_a_ragged_batch_computes_what_it_computes_alone(batching):
    model = small_model()
    x = images(5, seed=4)
    policy = TokenPolicy(threshold=0.3, token_batching=batching)
    with torch.no_grad():
        together = model(x, policy=policy)
        for i in range(5):
            alone = model(x[i:i + 1], policy=policy)
            torch.testing.assert_close(together.logits[i:i + 1], alone.logits)
            assert together.decisions["tokens"][i] == alone.decisions["tokens"][0]
            if batching != "pad":  # pad charges every sample the longest sample's tokens
                assert together.flops[i] == alone.flops[0]


def test_float32_compact_equals_masked_on_a_peaked_model():
    model = small_model(torch.float32)
    x = images(4, torch.float32)
    with torch.no_grad():
        masked = model(x, execution="masked")
        compact = model(x, execution="compact")
    torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ costs
@pytest.mark.parametrize("batching", BATCHINGS)
@pytest.mark.parametrize("policy_name", ["ratio", "threshold_per_stage"])
def test_per_sample_flops_equal_the_flop_counter_on_the_compact_path(batching, policy_name):
    model = small_model()
    x = images(4)
    policy = policies(batching)[policy_name]
    with torch.no_grad():
        out = model(x, policy=policy)
    assert out.flops.shape == (4,) and out.flops.dtype == torch.float64
    assert int(out.flops.sum()) == counted_flops(lambda: model(x, policy=policy))
    if batching != "pad":
        assert torch.equal(out.flops, out.decisions["compact_flops"])
        for i in range(4):
            assert int(out.flops[i]) == counted_flops(lambda: model(x[i:i + 1], policy=policy))
    if policy_name == "threshold_per_stage":
        assert len(set(out.flops.tolist())) > 1


def test_masked_flops_equal_the_flop_counter_and_the_cost_protocol():
    model = small_model()
    x = images(3)
    with torch.no_grad():
        out = model(x, execution="masked")
    per_sample = counted_flops(lambda: model(x, execution="masked")) / 3
    assert (out.flops == per_sample).all() and model.flops() == per_sample
    static = create_model("vit_cifar", **SMALL)
    assert model.flops() > static.flops(), "the masked path runs every slot, plus class attention and fusion"
    assert (out.decisions["compact_flops"] < static.flops()).all()


def test_the_registered_figures():
    model = create_model("evit_cifar").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.flops.tolist() == [80_664_832.0] * 2 and model.flops() == 118_475_520
    deit = create_model("evit_deit_tiny_patch16_224", device="meta")
    assert deit.flops() == 2_527_426_176


# ------------------------------------------------------------------ scores and fusion
def test_keep_scores_are_relative_to_the_most_attended_token():
    attention = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.5, 0.25, 0.0, 0.1]])
    present = torch.tensor([[True, True, True, True], [True, True, False, True]])
    scores = keep_scores(attention, present)
    torch.testing.assert_close(scores[0], torch.tensor([0.25, 1.0, 0.5, 0.75]))
    assert scores[1, 0] == 1 and scores[1, 2] == -math.inf
    policy = TokenPolicy(threshold=0.4)
    assert policy.select(scores, 0, 1).tolist() == [[False, True, True, True], [True, True, False, False]]


def test_fusion_weights_average_the_dropped_tokens_by_attention():
    attention = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.5, 0.25, 0.05, 0.1]])
    dropped = torch.tensor([[True, False, True, False], [False, False, False, False]])
    weights = fusion_weights(attention, dropped)
    torch.testing.assert_close(weights[0], torch.tensor([1 / 3, 0.0, 2 / 3, 0.0]))
    assert (weights[1] == 0).all()


def test_the_fused_token_is_the_attention_weighted_average_of_the_dropped_ones():
    model = small_model()
    x = images(2)
    block = model.blocks[1]
    seen = {}
    handle = block.norm2.register_forward_hook(lambda module, args, out: seen.setdefault("x", args[0]))
    with torch.no_grad():
        tokens = model.blocks[0](model.embed(x))
        _, attention = block.attn.forward_with_cls_attention(block.norm1(tokens))
        after = tokens + block.attn(block.norm1(tokens))
        out = model(x, execution="masked")
    handle.remove()
    kept = out.decisions["kept.0"]
    weights = attention * ~kept
    fused = (weights[..., None] * after[:, 1:]).sum(dim=1) / weights.sum(dim=1, keepdim=True)
    torch.testing.assert_close(seen["x"][:, -1], fused)
    torch.testing.assert_close(seen["x"][:, :-1], after)


# ------------------------------------------------------------------ training
def test_training_on_both_paths_gives_the_same_loss_and_gradients():
    model = small_model().train()
    x, y = images(4), torch.tensor([0, 1, 2, 3])
    grads = {}
    for execution in ("masked", "compact"):
        model.zero_grad()
        out = model(x, execution=execution)
        F.cross_entropy(out.logits, y).backward()
        grads[execution] = {n: p.grad.clone() for n, p in model.named_parameters()}
        grads[execution + "_logits"] = out.logits.detach()
    torch.testing.assert_close(grads["compact_logits"], grads["masked_logits"])
    for name in grads["masked"]:
        torch.testing.assert_close(grads["compact"][name], grads["masked"][name], msg=name)
    # the attention gets a gradient through the fusion weights too
    assert grads["masked"]["blocks.5.attn.qkv.weight"].abs().sum() > 0


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs, match", [
    ({"reorganize_in": ()}, "reorganize_in"),
    ({"reorganize_in": (1, 1)}, "reorganize_in"),
    ({"reorganize_in": (2, 6)}, r"reorganize_in must be distinct block indices in \[0, 6\)"),
    ({"reorganize_in": 3}, "reorganize_in"),
    ({"keep_ratio": 0.0}, r"keep_ratio must be in \(0, 1\]"),
    ({"keep_ratio": 1.5}, "keep_ratio"),
    ({"keep_ratio": (0.5, 0.7)}, "keep_ratio has 2 entries but reorganize_in has 3"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model("evit_cifar", **SMALL, **kwargs)


def test_bad_policies_are_config_errors():
    model = small_model()
    x = images(1)
    with pytest.raises(ConfigError, match="policy must be a TokenPolicy"):
        model(x, policy=0.5)
    with pytest.raises(ConfigError, match="threshold has 2 entries but the model reorganises in 3"):
        model(x, policy=TokenPolicy(threshold=(0.1, 0.2)))
    with pytest.raises(ConfigError, match="execution must be one of"):
        model(x, execution="indexed")


@pytest.mark.parametrize("ratio", [0.5, 0.7, 1.0])
def test_uniform_keep_ratio_path_equals_the_ragged_path(ratio):
    """A keep-ratio policy runs dense (one gather per stage); the ragged path with the same
    policy gives the same features, costs and decisions."""
    torch.manual_seed(0)
    model = create_model("evit_cifar").eval()
    x = torch.randn(4, 3, 32, 32)
    policy = TokenPolicy(keep_ratio=ratio)
    with torch.no_grad():
        dense = model._run_uniform(x, policy)
        ragged = model._run_compact(x, policy)
        counted = counted_flops(model, x, policy=policy)
    torch.testing.assert_close(dense[0], ragged[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(dense[1], ragged[1]) and int(dense[1].sum()) == counted
    assert dense[2].keys() == ragged[2].keys()
    for key in dense[2]:
        assert torch.equal(dense[2][key], ragged[2][key].to(dense[2][key].dtype)), key


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_full_flops_keep_every_token_whatever_the_mode(mode):
    from dynamicnets.pipelines.evaluate import full_flops_per_sample

    model = getattr(create_model("evit_cifar", depth=4, reorganize_in=(1, 2), embed_dim=32, num_heads=2), mode)()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = model(x, policy=TokenPolicy(keep_ratio=1.0), execution="compact").flops
        default = model.eval()(x, execution="compact").flops
    getattr(model, mode)()
    assert full_flops_per_sample(model, (3, 32, 32)) == model.full_flops((3, 32, 32)) == float(every[0])
    assert float(default[0]) < float(every[0])  # what a zero input in eval used to be counted as
    assert model.training == (mode == "train")
