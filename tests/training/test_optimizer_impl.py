"""`optimizer_impl`: the foreach and fused optimizer kernels train like the default loop."""
import pytest
import torch

from dynamicnets.errors import ConfigError
from dynamicnets.training import TrainConfig, Trainer
from dynamicnets.training.trainer import build_optimizer

from .tiny import tiny_bundle, tiny_model


def fit(tmp_path, name: str, **overrides) -> tuple[Trainer, dict]:
    values = dict(name=name, model="tiny", data="synthetic", epochs=2, batch_size=16, lr=0.1, device="cpu",
                  out_dir=str(tmp_path), progress=False, augment=False, weight_decay=1e-3)
    values.update(overrides)
    trainer = Trainer(TrainConfig(**values), model=tiny_model(seed=0), bundle=tiny_bundle())
    return trainer, trainer.fit()


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_foreach_and_fused_kernels_train_to_the_default_losses_and_weights(tmp_path, optimizer, impl):
    ref, ref_result = fit(tmp_path, "loop", optimizer=optimizer)
    other, result = fit(tmp_path, impl, optimizer=optimizer, optimizer_impl=impl)
    assert all(g[impl] is True for g in other.optimizer.param_groups)
    assert all(not g[impl] for g in ref.optimizer.param_groups)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert result[key] == pytest.approx(ref_result[key], rel=1e-5, abs=1e-6), key
    a, b = ref.model.state_dict(), other.model.state_dict()
    assert a.keys() == b.keys()  # the checkpoint layout does not depend on the kernel
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    assert ref.optimizer.state_dict()["state"].keys() == other.optimizer.state_dict()["state"].keys()


def test_a_run_resumes_under_another_optimizer_impl(tmp_path):
    fit(tmp_path, "run", epochs=1)
    resumed, result = fit(tmp_path, "run", epochs=2, resume=True, optimizer_impl="fused")
    assert result["epoch"] == 2 and all(g["fused"] is True for g in resumed.optimizer.param_groups)


def test_unknown_optimizer_impl_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="optimizer_impl"):
        TrainConfig(optimizer_impl="fast")


def test_build_optimizer_passes_the_kernel_choice():
    model = tiny_model(seed=0)
    assert build_optimizer(model, TrainConfig(optimizer_impl="foreach")).defaults["foreach"] is True
    assert build_optimizer(model, TrainConfig(optimizer_impl="fused")).defaults["fused"] is True
    assert not build_optimizer(model, TrainConfig()).defaults["fused"]
