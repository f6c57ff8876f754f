"""`create_model` / `register_model` / `list_models` behaviour."""
import pytest

from dynamicnets import ConfigError, create_model, list_models, register_model
from dynamicnets.models.static import CifarResNet


def test_unknown_model_raises_config_error_naming_it():
    with pytest.raises(ConfigError, match="no_such_model") as info:
        create_model("no_such_model")
    assert "resnet20" in str(info.value)  # lists what is available


def test_bad_constructor_argument_raises_config_error():
    with pytest.raises(ConfigError, match="resnet20"):
        create_model("resnet20", no_such_argument=1)


@pytest.mark.parametrize("name", list_models())
def test_register_model_refuses_duplicates(name):
    def impostor(**kwargs):
        raise AssertionError("the impostor must never be called")

    impostor.__name__ = name
    with pytest.raises(ValueError, match="already registered"):
        register_model(impostor)
    assert name in list_models()


def test_duplicate_does_not_replace_the_original():
    def resnet20(**kwargs):
        raise AssertionError("the impostor must never be called")

    with pytest.raises(ValueError):
        register_model(resnet20)
    assert isinstance(create_model("resnet20", width=2), CifarResNet)


def test_list_models_filters_by_pattern():
    resnets = list_models("resnet*")
    assert {"resnet20", "resnet32", "resnet56", "resnet110"} <= set(resnets)
    assert resnets == sorted(resnets) and all(name.startswith("resnet") for name in resnets)
    assert list_models("mnist1d_*") == ["mnist1d_cnn", "mnist1d_mlp"]
    assert list_models("no_such_*") == []
