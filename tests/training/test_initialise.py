"""Fine-tuning from another run's weights (`init_from`) and the annealed `temperature`."""
import pytest
import torch

from dynamicnets import create_model
from dynamicnets.errors import CheckpointError, ConfigError
from dynamicnets.training import TrainConfig, Trainer, load_checkpoint
from dynamicnets.training.checkpoint import save_checkpoint
from dynamicnets.training.initialise import load_initial_weights

from .tiny import TinyTwoExitNet, tiny_bundle, tiny_model


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(name="run", model="tiny", data="synthetic", epochs=1, batch_size=16, lr=0.05, device="cpu",
                  out_dir=str(tmp_path), progress=False, augment=False)
    values.update(overrides)
    return TrainConfig(**values)


def test_plain_resnet_weights_initialise_a_gated_resnet_backbone(tmp_path):
    plain = create_model("resnet20")
    path = tmp_path / "plain.pt"
    save_checkpoint(path, {"model": plain.state_dict(), "model_name": "resnet20"})
    gated = create_model("skipnet_resnet", depth=20)
    gate_before = {k: v.clone() for k, v in gated.state_dict().items() if not k.startswith("backbone.")}
    copied, total = load_initial_weights(gated, path, prefix="backbone.")
    assert copied == len(plain.state_dict()) and total == len(gated.state_dict()) > copied
    for key, tensor in plain.state_dict().items():
        assert torch.equal(gated.state_dict()["backbone." + key], tensor), key
    for key, tensor in gate_before.items():  # the gates keep their initialisation
        assert torch.equal(gated.state_dict()[key], tensor), key


def test_wrong_prefix_or_shape_is_one_error_naming_the_key(tmp_path):
    path = tmp_path / "plain.pt"
    save_checkpoint(path, {"model": create_model("resnet20").state_dict(), "model_name": "resnet20"})
    with pytest.raises(CheckpointError, match=r"plain\.pt: checkpoint key 'stem.*init_prefix=''"):
        load_initial_weights(create_model("skipnet_resnet", depth=20), path)
    with pytest.raises(CheckpointError, match=r"has shape .* \(another depth or width\?\)"):
        load_initial_weights(create_model("resnet20", width=8), path)
    save_checkpoint(path, {"epoch": 3})
    with pytest.raises(CheckpointError, match="key 'model'"):
        load_initial_weights(create_model("resnet20"), path)


def test_trainer_starts_from_init_from_but_a_resumed_run_keeps_its_own_weights(tmp_path):
    source = Trainer(config(tmp_path, name="source"), model=tiny_model(seed=1), bundle=tiny_bundle())
    source.fit()
    trained = load_checkpoint(tmp_path / "source" / "last.pt")["model"]
    cfg = config(tmp_path, name="tuned", epochs=2, lr=1e-9, init_from=str(tmp_path / "source" / "last.pt"))
    tuned = Trainer(cfg, model=tiny_model(seed=2), bundle=tiny_bundle())
    tuned.fit()
    for key, tensor in trained.items():  # lr ~ 0: the weights are those it started from
        assert torch.allclose(tuned.model.state_dict()[key], tensor, atol=1e-6), key
    resumed = Trainer(config(tmp_path, name="tuned", epochs=3, lr=1e-9, resume=True,
                             init_from=str(tmp_path / "nowhere.pt")), model=tiny_model(seed=3), bundle=tiny_bundle())
    resumed.fit()  # the missing init file is not read: resume wins


class TemperatureRecorder(TinyTwoExitNet):
    """The tiny net, recording the temperature each training forward receives."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[float | None] = []

    def forward(self, x, temperature=None):
        if self.training:
            self.seen.append(temperature)
        return super().forward(x)


def test_temperature_schedule_reaches_forward_step_by_step(tmp_path):
    model = TemperatureRecorder()
    schedule = {"kind": "linear", "start": 30.0, "end": 1.0, "epochs": 1}
    Trainer(config(tmp_path, epochs=2, temperature_schedule=schedule), model=model, bundle=tiny_bundle()).fit()
    steps = 96 // 16
    expected = [30.0 + (1.0 - 30.0) * min(s / steps, 1.0) for s in range(2 * steps)]
    assert model.seen == pytest.approx(expected)


def test_temperature_schedule_needs_a_temperature_argument_and_a_valid_mapping(tmp_path):
    schedule = {"kind": "linear", "start": 30.0, "end": 1.0, "epochs": 1}
    with pytest.raises(ConfigError, match="temperature_schedule.*no `temperature` forward argument"):
        Trainer(config(tmp_path, temperature_schedule=schedule), model=tiny_model(), bundle=tiny_bundle())
    for bad in ({"kind": "step", "start": 30.0, "end": 1.0, "epochs": 1}, {"kind": "linear", "start": 30.0},
                {**schedule, "end": 0.0}, [30, 1]):
        with pytest.raises(ConfigError, match="key 'temperature_schedule'"):
            config(tmp_path, temperature_schedule=bad)


def test_shipped_weights_initialise_a_run_by_name():
    gated = create_model("skipnet_resnet", depth=20)
    copied, _ = load_initial_weights(gated, "pretrained:resnet20:cifar10", prefix="backbone.")
    shipped = create_model("resnet20", pretrained="cifar10").state_dict()
    assert copied == len(shipped)
    for key, tensor in shipped.items():
        assert torch.equal(gated.state_dict()["backbone." + key], tensor), key


@pytest.mark.parametrize("spec", ["pretrained:resnet20", "pretrained::cifar10", "pretrained:a:b:c"])
def test_malformed_pretrained_init_from_names_the_form(spec):
    with pytest.raises(ConfigError, match=r"init_from: expected 'pretrained:MODEL:TAG'"):
        load_initial_weights(create_model("resnet20"), spec)
