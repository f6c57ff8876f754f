"""Mixup and CutMix: the mixed batches, their label shares, and mixed training runs."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from dynamicnets.data import DataBundle
from dynamicnets.errors import ConfigError
from dynamicnets.training import TrainConfig, Trainer
from dynamicnets.training.mixing import BatchMixing, MixedBatch, cutmix_box

from .test_trainer import SimulatedKill, assert_same_weights, kill_at, make_config, make_trainer, read_metrics
from .tiny import tiny_bundle, tiny_model

B, H, W = 8, 6, 6


def constant_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i + 1; its label is i (so a pixel says where it came from)."""
    x = (torch.arange(B, dtype=torch.float32) + 1).view(B, 1, 1, 1).expand(B, 3, H, W).contiguous()
    return x, torch.arange(B)


def test_mixup_is_a_convex_mix_with_a_permutation_of_the_batch():
    torch.manual_seed(0)
    x, y = constant_images()
    mixed = BatchMixing(mixup_alpha=0.8)(x, y)
    assert 0 < mixed.lam < 1 and torch.equal(mixed.target_a, y)
    partner = (mixed.x[:, 0, 0, 0] - mixed.lam * (y + 1)) / (1 - mixed.lam) - 1
    assert torch.allclose(partner, mixed.target_b.float(), atol=1e-4)
    assert sorted(mixed.target_b.tolist()) == y.tolist()  # a permutation


def test_the_dominant_labels_are_those_of_the_larger_share():
    a, b = torch.tensor([0, 1]), torch.tensor([1, 0])
    assert torch.equal(MixedBatch(torch.zeros(2, 1), a, b, 0.7).dominant, a)
    assert torch.equal(MixedBatch(torch.zeros(2, 1), a, b, 0.3).dominant, b)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_pastes_one_box_and_lam_is_the_exact_share_left(seed):
    torch.manual_seed(seed)
    x, y = constant_images()
    mixed = BatchMixing(cutmix_alpha=1.0)(x, y)
    for i in range(B):
        own = mixed.x[i, 0] == i + 1
        other = mixed.x[i, 0] == mixed.target_b[i] + 1
        assert bool((own | other).all())
        if mixed.target_b[i] != i:
            assert own.float().mean().item() == pytest.approx(mixed.lam)
            rows, cols = torch.nonzero(~own, as_tuple=True)
            if rows.numel():  # the pasted pixels form one rectangle
                assert rows.numel() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)


def test_the_cutmix_box_is_clipped_at_the_borders():
    torch.manual_seed(0)
    for _ in range(50):
        top, bottom, left, right = cutmix_box(32, 32, 0.3)
        assert 0 <= top <= bottom <= 32 and 0 <= left <= right <= 32
        side = int(32 * (1 - 0.3) ** 0.5)  # a box of 70% of the area, before clipping
        assert bottom - top <= side and right - left <= side


def test_with_both_on_each_batch_uses_one_of_them():
    torch.manual_seed(0)
    x, y = constant_images()
    kinds = set()
    for _ in range(40):
        mixed = BatchMixing(mixup_alpha=0.8, cutmix_alpha=1.0)(x, y)
        values = set(mixed.x[:, 0].flatten().tolist())
        kinds.add("cutmix" if values <= set(range(1, B + 1)) else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_off_is_the_identity_and_draws_nothing():
    x, y = constant_images()
    state = torch.get_rng_state()
    mixed = BatchMixing()(x, y)
    assert mixed.x is x and mixed.lam == 1.0 and torch.equal(torch.get_rng_state(), state)


def test_bad_settings_raise_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="mixup"):
        make_config(tmp_path, mixup=-0.1)
    with pytest.raises(ConfigError, match="cutmix"):
        BatchMixing(cutmix_alpha=float("nan"))
    with pytest.raises(ConfigError, match="cutmix"):
        BatchMixing(cutmix_alpha=1.0)(torch.randn(4, 10), torch.arange(4))
    flat = DataBundle(name="flat", train=TensorDataset(torch.randn(32, 16), torch.arange(32) % 3),
                      val=TensorDataset(torch.randn(8, 16), torch.arange(8) % 3), test=None, num_classes=3,
                      input_shape=(16,))
    with pytest.raises(ConfigError, match="'cutmix': needs image data"):
        Trainer(make_config(tmp_path, cutmix=1.0), model=tiny_model(), bundle=flat)

    class Reinforced(type(tiny_model())):
        def update_baseline(self, out, target):
            pass

    with pytest.raises(ConfigError, match="REINFORCE"):
        Trainer(make_config(tmp_path, mixup=0.8), model=Reinforced(), bundle=tiny_bundle())


def test_a_mixed_run_learns_is_reproducible_and_resumes_exactly(tmp_path):
    mix = dict(mixup=0.8, cutmix=1.0)
    plain = make_trainer(make_config(tmp_path, name="plain"))
    plain.fit()
    reference = make_trainer(make_config(tmp_path, name="ref", **mix))
    reference.fit()
    assert read_metrics(tmp_path / "ref")[0]["train_loss"] != read_metrics(tmp_path / "plain")[0]["train_loss"]
    assert read_metrics(tmp_path / "ref")[-1]["val_accuracy"] > 0.5

    killed = make_trainer(make_config(tmp_path, name="k", **mix))
    kill_at(killed, epoch=1, index=3)
    with pytest.raises(SimulatedKill):
        killed.fit()
    resumed = make_trainer(make_config(tmp_path, name="k", resume=True, **mix))
    resumed.fit()
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())
