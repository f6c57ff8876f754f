"""DynamicViT: compact == masked for the same policy decisions (keep ratio and threshold,
pad / pack / bucket, batch 1 and > 1), each sample of a ragged batch computes what it
computes alone, per-sample FLOPs == FlopCounterMode, the ratio loss, static checkpoints,
the prediction module, argument errors."""
import math

import pytest
import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.gates.token_scorer import TokenScorer, keep_probability
from dynamicnets.inference.token_policy import TokenPolicy
from dynamicnets.layers.ragged_tokens import RaggedTokens
from dynamicnets.layers.token_batching import executed_flops
from dynamicnets.models.transformers import DynamicViT, default_prune_before
from dynamicnets.training.checkpoint import save_checkpoint
from dynamicnets.training.initialise import load_initial_weights

BATCHINGS = ["pad", "pack", "bucket"]
SMALL = dict(embed_dim=32, num_heads=2, mlp_ratio=2.0)


def spread(model: DynamicViT) -> DynamicViT:
    """Larger weights in the prediction modules: keep probabilities spread over (0, 1), so
    thresholds keep clearly different counts per sample (fresh modules all say ~rho)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for predictor in model.predictors:
            for layer in (predictor.proj, predictor.fc1, predictor.fc2, predictor.out):
                std = 2.0 / layer.in_features ** 0.5
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
            predictor.out.bias.copy_(torch.tensor([2.5, 0.0]))  # about half kept at 0.5
    return model


def small_model(dtype=torch.float64, **kwargs) -> DynamicViT:
    torch.manual_seed(0)
    return spread(create_model("dynamic_vit_cifar", **SMALL, **kwargs).to(dtype)).eval()


def images(batch: int, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed)).to(dtype)


def policies(batching: str) -> dict[str, TokenPolicy]:
    return {
        "ratio": TokenPolicy(keep_ratio=0.7, token_batching=batching),
        "ratio_per_stage": TokenPolicy(keep_ratio=(0.9, 0.5, 0.6), token_batching=batching),
        "threshold": TokenPolicy(threshold=0.5, token_batching=batching),
        "threshold_per_stage": TokenPolicy(threshold=(0.3, 0.6, 0.5), min_tokens=2, token_batching=batching),
    }


# ------------------------------------------------------------------ layout
def test_default_stages_follow_the_paper():
    assert default_prune_before(12) == (3, 6, 9)
    assert default_prune_before(6) == (1, 3, 5)
    assert default_prune_before(4) == (1, 2, 3)
    assert default_prune_before(2) == (1,)
    with pytest.raises(ConfigError, match="depth must be >= 2"):
        default_prune_before(1)
    assert create_model("dynamic_vit_cifar").prune_before == (1, 3, 5)
    assert create_model("dynamic_deit_tiny_patch16_224", device="meta").prune_before == (3, 6, 9)


def test_a_static_vit_checkpoint_initialises_all_but_the_prediction_modules(tmp_path):
    torch.manual_seed(1)
    static = create_model("vit_cifar", **SMALL).eval()
    path = tmp_path / "vit.pt"
    save_checkpoint(path, {"model": static.state_dict(), "model_name": "vit_cifar"})
    model = create_model("dynamic_vit_cifar", **SMALL)
    copied, total = load_initial_weights(model, path)
    fresh = [k for k in model.state_dict() if k not in static.state_dict()]
    assert copied == len(static.state_dict()) and total == copied + len(fresh)
    assert fresh and all(k.startswith("predictors.") for k in fresh)
    # keeping every token is the static ViT, on every path
    x = images(3, torch.float32)
    everything = TokenPolicy(keep_ratio=1.0)
    with torch.no_grad():
        expected = static(x).logits
        for execution in ("compact", "masked"):
            out = model.eval()(x, execution=execution, policy=everything)
            torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)
            assert out.decisions["tokens"].tolist() == [64] * 3


# ------------------------------------------------------------------ compact == masked
@pytest.mark.parametrize("batching", BATCHINGS)
@pytest.mark.parametrize("batch", [1, 5])
def test_compact_equals_masked_for_the_same_policy(batching, batch):
    model = small_model()
    x = images(batch)
    for name, policy in policies(batching).items():
        with torch.no_grad():
            compact = model(x, execution="compact", policy=policy)
            masked = model(x, execution="masked", policy=policy)
        assert compact.decisions.keys() == masked.decisions.keys() == {"kept.0", "kept.1", "kept.2", "tokens", "spatial_mask.0", "spatial_mask.1", "spatial_mask.2"}
        for key in compact.decisions:
            assert torch.equal(compact.decisions[key], masked.decisions[key]), (name, key)
        torch.testing.assert_close(compact.logits, masked.logits, rtol=1e-6, atol=1e-6, msg=name)
        assert torch.equal(compact.flops, masked.flops), name
        assert not compact.aux_losses and not masked.aux_losses


def test_threshold_policies_keep_different_counts_and_every_sample_computes_what_it_computes_alone():
    model = small_model()
    x = images(6)
    for batching in BATCHINGS:
        policy = TokenPolicy(threshold=0.5, token_batching=batching)
        with torch.no_grad():
            out = model(x, policy=policy)
            alone = [model(x[i:i + 1], policy=policy) for i in range(6)]
        assert len(set(out.decisions["tokens"].tolist())) > 1, "the threshold should keep different counts"
        for i, single in enumerate(alone):
            torch.testing.assert_close(out.logits[i:i + 1], single.logits, rtol=1e-9, atol=1e-9)
            assert torch.equal(out.flops[i:i + 1], single.flops)
            for key, value in single.decisions.items():
                assert torch.equal(out.decisions[key][i:i + 1], value)


def test_decisions_are_hierarchical_and_the_default_policy_is_the_keep_ratio():
    model = small_model()
    x = images(4)
    with torch.no_grad():
        out = model(x)  # eval: compact, TokenPolicy(keep_ratio=0.7)
        explicit = model(x, policy=TokenPolicy(keep_ratio=0.7))
    torch.testing.assert_close(out.logits, explicit.logits, rtol=0, atol=0)
    counts = [out.decisions[f"kept.{s}"].sum(dim=1).tolist() for s in range(3)]
    assert counts == [[45] * 4, [32] * 4, [23] * 4]  # ceil(0.7 n) of 64, 45, 32
    for s in range(2):
        earlier, later = out.decisions[f"kept.{s}"], out.decisions[f"kept.{s + 1}"]
        assert not (later & ~earlier).any(), "a dropped token came back"
    assert out.decisions["tokens"].dtype == torch.int64
    assert out.decisions["kept.0"].shape == (4, 64) and out.decisions["kept.0"].dtype == torch.bool


# ------------------------------------------------------------------ FLOPs
def test_flops_formula_by_hand():
    model = small_model()
    with torch.no_grad():
        out = model(images(2))
    blocks, predictors = model.blocks, model.predictors
    expected = (model.patch_embed.flops() + blocks[0].flops(65)
                + predictors[0].flops(64) + blocks[1].flops(46) + blocks[2].flops(46)
                + predictors[1].flops(45) + blocks[3].flops(33) + blocks[4].flops(33)
                + predictors[2].flops(32) + blocks[5].flops(24) + model.head_flops())
    assert out.flops.dtype == torch.float64 and out.flops.tolist() == [expected] * 2
    assert expected < model.flops()


@pytest.mark.parametrize("batching", ["pack", "bucket"])
def test_reported_flops_equal_the_flop_counter_on_the_compact_path(batching):
    model = small_model()
    x = images(5)
    for name, policy in policies(batching).items():
        with torch.no_grad():
            out = model(x, policy=policy)
        assert int(out.flops.sum()) == counted_flops(lambda: model(x, policy=policy)), name


def test_padded_batches_pay_for_the_padding():
    """With `pad` every block runs at the longest sample's count: the counter sees the
    reported FLOPs plus, per segment, what the padding adds (`executed_flops`)."""
    model = small_model()
    x = images(5)
    policy = TokenPolicy(threshold=0.5, token_batching="pad")
    with torch.no_grad():
        out = model(x, policy=policy)
    segments = [model.blocks[1:3], model.blocks[3:5], model.blocks[5:]]
    padding = 0
    for s, blocks in enumerate(segments):
        lengths = [1 + int(n) for n in out.decisions[f"kept.{s}"].sum(dim=1)]
        padding += sum(executed_flops(blocks, lengths, "pad")) - sum(executed_flops(blocks, lengths, "pack"))
    assert padding > 0
    assert counted_flops(lambda: model(x, policy=policy)) == int(out.flops.sum()) + padding


def test_static_cost_is_the_masked_forward():
    model = small_model()
    flops, shape = model.flops_and_shape((3, 32, 32))
    assert shape == (10,)
    x = images(1)
    assert flops == counted_flops(lambda: model(x, execution="masked"))


def test_another_image_size_runs_and_counts():
    model = small_model()
    x = torch.randn(3, 3, 48, 48, dtype=torch.float64)
    policy = TokenPolicy(threshold=0.5)
    with torch.no_grad():
        out = model(x, policy=policy)
        masked = model(x, execution="masked", policy=policy)
    assert out.decisions["kept.0"].shape == (3, 144)
    assert int(out.flops.sum()) == counted_flops(lambda: model(x, policy=policy))
    torch.testing.assert_close(out.logits, masked.logits, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ training
def test_training_samples_decisions_and_returns_the_ratio_loss():
    torch.manual_seed(0)
    model = create_model("dynamic_vit_cifar", **SMALL, keep_ratio=0.6, ratio_weight=2.0).train()
    x = images(4, torch.float32)
    out = model(x)
    masks = [out.decisions[f"kept.{s}"].float() for s in range(3)]
    expected = 2.0 * torch.stack([(m.mean(dim=1) - 0.6 ** (s + 1)) ** 2 for s, m in enumerate(masks)]).mean()
    torch.testing.assert_close(out.aux_losses["keep_ratio"], expected)
    for s in range(2):
        assert not (masks[s + 1] > masks[s]).any()
    # the reported FLOPs are the formula on the hard decisions: the compact cost of those counts
    counts = [m.sum(dim=1) for m in masks]
    torch.testing.assert_close(out.flops, model._flops(counts, 32, 32))
    # decisions and the ratio loss reach every prediction module
    (F.cross_entropy(out.logits, torch.tensor([0, 1, 2, 3])) + out.aux_loss()).backward()
    for name, p in model.predictors.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_the_ratio_loss_pulls_the_kept_fractions_towards_rho_powers():
    torch.manual_seed(0)
    model = create_model("dynamic_vit_cifar", **SMALL, keep_ratio=0.5).train()
    with torch.no_grad():  # start far from the targets: every module keeps ~95%
        for predictor in model.predictors:
            predictor.out.bias.copy_(torch.tensor([3.0, 0.0]))
    optimizer = torch.optim.SGD(model.predictors.parameters(), lr=3.0)
    x = images(8, torch.float32)
    fractions = []
    for _ in range(30):
        out = model(x)
        fractions.append([float(out.decisions[f"kept.{s}"].float().mean()) for s in range(3)])
        optimizer.zero_grad()
        out.aux_losses["keep_ratio"].backward()
        optimizer.step()
    assert fractions[0][0] > 0.9
    late = torch.tensor(fractions[-5:]).mean(dim=0)
    torch.testing.assert_close(late, torch.tensor([0.5, 0.25, 0.125]), rtol=0, atol=0.08)


def test_training_mode_accepts_a_policy_and_compact_execution():
    model = small_model(torch.float32).train()
    x = images(3, torch.float32)
    policy = TokenPolicy(threshold=0.5)
    masked = model(x, policy=policy)  # the policy's decisions, no sampling, no ratio loss
    compact = model(x, execution="compact", policy=policy)
    assert not masked.aux_losses and not compact.aux_losses
    torch.testing.assert_close(masked.logits, compact.logits, rtol=1e-4, atol=1e-5)
    assert torch.equal(model(x, execution="compact").decisions["tokens"], torch.full((3,), 23))


# ------------------------------------------------------------------ prediction module
def test_token_scorer_ragged_equals_masked_and_counts_its_flops():
    torch.manual_seed(0)
    scorer = TokenScorer(16, keep_prior=0.7).double()
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    keep = torch.rand(3, 10, generator=torch.Generator().manual_seed(0)) > 0.4
    keep[:, 0] = True
    masked = scorer(x, keep)
    ragged = RaggedTokens.from_mask(x, keep)
    torch.testing.assert_close(scorer.forward_ragged(ragged), masked[keep])
    assert torch.allclose(masked.exp().sum(-1), torch.ones(3, 10, dtype=torch.float64))
    assert scorer.flops(int(keep.sum())) == counted_flops(scorer.forward_ragged, ragged)
    assert 3 * scorer.flops(10) == counted_flops(scorer, x)
    # fresh modules keep about `keep_prior` of the tokens
    assert abs(float(keep_probability(scorer(x)).mean().detach()) - 0.7) < 0.02


def test_token_scorer_refuses_bad_arguments():
    with pytest.raises(ConfigError, match="dim"):
        TokenScorer(2)
    for prior in (0, 1.5, True):
        with pytest.raises(ConfigError, match="keep_prior"):
            TokenScorer(8, keep_prior=prior)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,match", [
    ({"prune_before": (0, 3)}, "prune_before"),
    ({"prune_before": (1, 6)}, "prune_before"),
    ({"prune_before": (3, 1)}, "prune_before"),
    ({"prune_before": (2, 2)}, "prune_before"),
    ({"prune_before": ()}, "prune_before"),
    ({"prune_before": "135"}, "prune_before"),
    ({"prune_before": (1.0, 3)}, "prune_before"),
    ({"keep_ratio": 0}, "keep_ratio"),
    ({"keep_ratio": 1.5}, "keep_ratio"),
    ({"keep_ratio": math.nan}, "keep_ratio"),
    ({"ratio_weight": -1.0}, "ratio_weight"),
    ({"tau": 0.0}, "tau"),
])
def test_bad_arguments_are_one_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_model("dynamic_vit_cifar", **SMALL, **kwargs)


def test_bad_policies_and_inputs_are_one_clear_error():
    model = small_model(torch.float32)
    x = images(2, torch.float32)
    with pytest.raises(ConfigError, match=r"keep_ratio has 2 entries, but the model prunes at 3 stages"):
        model(x, policy=TokenPolicy(keep_ratio=(0.5, 0.5)))
    with pytest.raises(ConfigError, match=r"threshold has 4 entries"):
        model(x, execution="masked", policy=TokenPolicy(threshold=(0.5,) * 4))
    with pytest.raises(ConfigError, match="TokenPolicy"):
        model(x, policy={"keep_ratio": 0.5})
    with pytest.raises(ConfigError, match=r"keep_ratio must be in \(0, 1\]"):
        TokenPolicy(keep_ratio=1.2)
    with pytest.raises(ConfigError, match="execution"):
        model(x, execution="indexed")
    with pytest.raises(ConfigError, match="expected input"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ConfigError, match="not divisible"):
        model(torch.randn(2, 3, 30, 30))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_full_flops_keep_every_token_whatever_the_mode(mode):
    from dynamicnets.pipelines.evaluate import full_flops_per_sample

    model = getattr(create_model("dynamic_vit_cifar", depth=4, embed_dim=32, num_heads=2), mode)()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        every = model.eval()(x, policy=TokenPolicy(keep_ratio=1.0), execution="compact").flops
        default = model(x, execution="compact").flops
    getattr(model, mode)()
    assert full_flops_per_sample(model, (3, 32, 32)) == model.full_flops((3, 32, 32)) == float(every[0])
    assert float(default[0]) < float(every[0])  # what a zero input in eval used to be counted as
