"""The `adversarial` training option: checked config, a neutral hook at zero budget,
attacked rows within budget, and slowdown training on a multi-exit model."""
from __future__ import annotations

import pytest
import torch

from dynamicnets import DynamicOutput
from dynamicnets.attacks import InputSpace
from dynamicnets.errors import ConfigError
from dynamicnets.training import TrainConfig, Trainer, load_checkpoint
from dynamicnets.training.adversarial import AdversarialTraining

from .tiny import tiny_bundle, tiny_model


def _trainer(tmp_path, name: str, **overrides) -> Trainer:
    values = dict(name=name, model="tiny", data="synthetic", epochs=1, batch_size=16, lr=0.1, device="cpu",
                  out_dir=str(tmp_path), progress=False, augment=False, max_steps_per_epoch=3)
    values.update(overrides)
    return Trainer(TrainConfig(**values), model=tiny_model(), bundle=tiny_bundle())


def _weights(trainer: Trainer) -> dict:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_zero_budget_trains_exactly_as_without_the_option(tmp_path):
    plain = _trainer(tmp_path, "plain")
    plain.fit()
    zero = _trainer(tmp_path, "zero", adversarial={"kind": "pgd", "eps": 0, "steps": 2})
    zero.fit()
    attacked = _trainer(tmp_path, "attacked", adversarial={"kind": "pgd", "eps": 0.5, "steps": 2})
    attacked.fit()
    a, b, c = _weights(plain), _weights(zero), _weights(attacked)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert attacked.history[0]["train_loss"] > plain.history[0]["train_loss"]  # harder batches
    assert load_checkpoint(tmp_path / "attacked" / "last.pt")["config"]["adversarial"]["kind"] == "pgd"


def test_a_fraction_of_each_batch_is_attacked_within_budget():
    model = tiny_model()
    defence = AdversarialTraining.from_config({"kind": "pgd", "eps": "8/255", "steps": 3, "fraction": 0.5})
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    space = InputSpace()
    out = defence.perturb(model, x, y, space)
    assert torch.equal(out[4:], x[4:])
    change = (out[:4] - x[:4]).abs()
    assert change.max() <= 8 / 255 + 1e-6 and change.max() > 0
    assert out.min() >= 0 and out.max() <= 1


class _ConvClassifier(torch.nn.Module):
    """A conv net returning `DynamicOutput`, for 4-D channels-last batches."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return DynamicOutput(logits=self.fc(self.conv(x).flatten(1)))


def test_channels_last_batches_stay_channels_last():
    defence = AdversarialTraining.from_config({"kind": "pgd", "eps": 0.1, "steps": 1})
    x = torch.rand(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    out = defence.perturb(_ConvClassifier(), x, torch.zeros(4, dtype=torch.int64), InputSpace())
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert not torch.equal(out, x)


def test_slowdown_training_on_a_multi_exit_model(tmp_path):
    config = TrainConfig(name="sloth", model="multi_exit_cnn", model_args={"width": 4}, data="digits", epochs=1,
                         batch_size=32, max_steps_per_epoch=2, device="cpu", out_dir=str(tmp_path),
                         progress=False, adversarial={"kind": "slowdown", "eps": "8/255", "steps": 2})
    trainer = Trainer(config)
    assert trainer.input_space == InputSpace(low=0.0, high=1.0)  # digits: pixels in [0, 1]
    result = trainer.fit()
    assert result["train_loss"] == result["train_loss"]  # finite, not NaN
    assert result["val_accuracy"] is not None


def test_slowdown_training_needs_exits_or_gates(tmp_path):
    with pytest.raises(ConfigError, match=r"'adversarial.kind': 'slowdown' needs a model with early exits"):
        _trainer(tmp_path, "bad", adversarial={"kind": "slowdown", "eps": 0.1, "steps": 1})


@pytest.mark.parametrize("spec, named", [
    ({"kind": "fgsm", "eps": 0.1, "steps": 1}, "adversarial.kind"),
    ({"kind": "pgd", "eps": -0.1, "steps": 1}, "adversarial.eps"),
    ({"kind": "pgd", "eps": "8/x", "steps": 1}, "adversarial.eps"),
    ({"kind": "pgd", "eps": 0.1, "steps": 0}, "adversarial.steps"),
    ({"kind": "pgd", "eps": 0.1, "steps": 1, "fraction": 1.5}, "adversarial.fraction"),
    ({"kind": "pgd", "eps": 0.1, "steps": 1, "step_size": -1}, "adversarial.step_size"),
    ({"kind": "pgd", "eps": 0.1}, "'adversarial'"),
    ({"kind": "pgd", "eps": 0.1, "steps": 1, "norm": "l2"}, "'adversarial'"),
    ("pgd", "'adversarial'"),
])
def test_bad_config_names_the_key(spec, named):
    with pytest.raises(ConfigError, match=f"TrainConfig: key {named}"):
        TrainConfig(adversarial=spec)
