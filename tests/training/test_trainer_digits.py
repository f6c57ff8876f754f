"""Integration: the Trainer building `small_cnn` and sklearn digits from the config alone."""
import math

import pytest
import torch

from dynamicnets import create_model
from dynamicnets.training import TrainConfig, Trainer, check_compatible, evaluate, load_checkpoint


def digits_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(name="digits", model="small_cnn", model_args={"width": 8}, data="digits", epochs=2,
                  batch_size=64, lr=0.05, device="cpu", out_dir=str(tmp_path), progress=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_small_cnn_learns_digits_and_checkpoint_rebuilds_the_model(tmp_path):
    result = Trainer(digits_config(tmp_path)).fit()
    assert result["val_accuracy"] > 0.85
    assert result["val_mean_flops"] == create_model("small_cnn", width=8).flops((1, 8, 8))
    ckpt = load_checkpoint(tmp_path / "digits" / "best.pt")
    model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"], in_chans=ckpt["input_shape"][0],
                         **ckpt["model_args"])
    check_compatible(ckpt, "small_cnn", model)
    model.load_state_dict(ckpt["model"])
    trainer = Trainer(digits_config(tmp_path, name="other", epochs=1))
    again = evaluate(model, trainer.val_loader, "cpu")
    assert again["accuracy"] == pytest.approx(result["best_val_accuracy"])


def test_trainer_built_model_is_seeded(tmp_path):
    cfg = dict(epochs=1, max_steps_per_epoch=4)
    a = Trainer(digits_config(tmp_path, name="a", **cfg))
    b = Trainer(digits_config(tmp_path, name="b", **cfg))
    a.fit(), b.fit()
    for (key, ta), tb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(ta, tb), key


def test_channels_last_and_bf16_train_a_conv_net(tmp_path):
    trainer = Trainer(digits_config(tmp_path, epochs=1, channels_last=True, bf16=True, max_steps_per_epoch=5))
    assert trainer.model.features[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    result = trainer.fit()
    assert result["step"] == 5 and math.isfinite(result["train_loss"]) and math.isfinite(result["val_loss"])


@pytest.mark.parametrize("model_args", [{"model": "blockdrop_resnet"}, {"model": "skipnet_resnet", "rl": True}])
def test_reinforce_baseline_is_updated_after_each_step(tmp_path, model_args):
    args = dict(model_args)
    name = args.pop("model")
    config = TrainConfig(name="rl", model=name, model_args={"depth": 14, "width": 4, **args}, data="digits",
                         epochs=1, max_steps_per_epoch=3, batch_size=16, out_dir=str(tmp_path), progress=False,
                         device="cpu")
    trainer = Trainer(config)
    assert int(trainer.model.baseline.count) == 0
    trainer.fit()
    assert int(trainer.model.baseline.count) == 3
