import pytest

from dynamicnets.config import from_mapping, to_plain
from dynamicnets.errors import ConfigError
from dynamicnets.training import TrainConfig


def test_defaults_are_valid_and_round_trip_through_plain_dict():
    cfg = TrainConfig()
    assert from_mapping(TrainConfig, to_plain(cfg)) == cfg


def test_from_mapping_keeps_int_val_size_and_coerces_floats():
    cfg = from_mapping(TrainConfig, {"val_size": 500, "lr": 1, "exit_weights": [1, 2], "grad_clip": 2},
                       source="run.yaml")
    assert cfg.val_size == 500 and isinstance(cfg.val_size, int)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.exit_weights == [1.0, 2.0] and cfg.grad_clip == 2.0
    assert isinstance(from_mapping(TrainConfig, {"val_size": 0.2}).val_size, float)


@pytest.mark.parametrize(
    "key,value",
    [("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("lr", float("nan")), ("momentum", 1.0),
     ("weight_decay", -1.0), ("warmup_epochs", 11), ("exit_weights", [0.0, 0.0]), ("exit_weights", []),
     ("exit_weights", [-1.0, 2.0]), ("label_smoothing", 1.0), ("grad_clip", 0.0), ("val_size", 0),
     ("val_size", 1.5), ("num_workers", -1), ("threads", 0), ("max_steps_per_epoch", 0), ("name", ""),
     ("name", "a/b"), ("optimizer", "adam"), ("schedule", "step"), ("device", "tpu")],
)
def test_out_of_range_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        TrainConfig(**{key: value})


def test_unknown_key_is_refused_by_from_mapping():
    with pytest.raises(ConfigError, match="'epoch'"):
        from_mapping(TrainConfig, {"epoch": 3}, source="run.yaml")


@pytest.mark.parametrize("args", [{"in_chans": 1}, {"num_classes": 10, "width": 4}])
def test_model_args_may_not_repeat_what_the_data_decides(args):
    with pytest.raises(ConfigError, match="'model_args'.*the trainer takes both from the data"):
        TrainConfig(model="small_cnn", model_args=args)
