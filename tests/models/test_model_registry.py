"""`create_model` / `register_model` / `list_models` / `model_info` and the `models` command."""
import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model, list_models, register_model
from dynamicnets.cli.main import main as cli_main
from dynamicnets.models import FAMILIES, _registry, list_families, model_info, registered_model
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


# --- keyword arguments, errors, pretrained ---------------------------------------------

@pytest.fixture()
def scratch_registry(monkeypatch):
    """Models registered in a test live in a copy of the registry, gone after the test."""
    monkeypatch.setattr(_registry, "_MODELS", dict(_registry._MODELS))


def test_unknown_keyword_names_the_model_the_keyword_and_the_accepted_ones():
    with pytest.raises(ConfigError) as info:
        create_model("resnet20", widht=8)
    message = str(info.value)
    assert "'resnet20'" in message and "widht" in message
    for accepted in ("num_classes", "in_chans", "width", "device", "dtype"):
        assert accepted in message
    assert "\n" not in message


def test_several_unknown_keywords_are_all_named():
    with pytest.raises(ConfigError, match=r"keyword arguments alpha, beta"):
        create_model("small_cnn", beta=1, alpha=2)


def test_errors_raised_inside_a_constructor_pass_through(scratch_registry):
    @register_model
    def broken_model(*, num_classes: int = 10):
        """A constructor with a bug of its own."""
        return len(num_classes)  # TypeError: object of type 'int' has no len()

    with pytest.raises(TypeError, match="has no len"):
        create_model("broken_model")
    # the model's own argument checks reach the user unchanged
    with pytest.raises(ConfigError, match="width must be a positive int"):
        create_model("resnet20", width=0)


def test_constructors_taking_kwargs_get_every_keyword(scratch_registry):
    @register_model
    def open_model(*, num_classes: int = 10, **kwargs):
        """Passes extra keywords on."""
        return nn.Linear(kwargs.pop("features", 4), num_classes)

    assert create_model("open_model", features=6).in_features == 6
    # msdnet_cifar passes its extra keywords to MSDNet, whose own errors apply
    with pytest.raises(TypeError, match="no_such_option"):
        create_model("msdnet_cifar", no_such_option=1)


def test_missing_required_argument_is_a_config_error(scratch_registry):
    @register_model
    def needs_size(*, size: int):
        """Needs a size."""
        return nn.Linear(size, 2)

    with pytest.raises(ConfigError, match="'needs_size': missing required argument.*size"):
        create_model("needs_size")
    assert create_model("needs_size", size=3).in_features == 3


@pytest.mark.parametrize(("name", "pretrained", "message"), [
    ("resnet32", True, "'resnet32': no pretrained weights are shipped"),
    ("resnet20", "imagenet", "'resnet20': no pretrained weights tagged 'imagenet'; available tags: cifar10"),
    ("resnet20", 1, "pretrained: expected False, True or a tag"),
])
def test_pretrained_weights_that_do_not_exist_are_refused_clearly(name, pretrained, message):
    with pytest.raises(ConfigError, match=message):
        create_model(name, pretrained=pretrained)


def test_pretrained_false_builds_the_model():
    assert isinstance(create_model("resnet20", pretrained=False, width=2), CifarResNet)


def test_a_constructor_may_not_take_pretrained(scratch_registry):
    def takes_pretrained(*, pretrained: bool = False):
        """Loads weights itself."""

    def takes_pretrained_dir(*, pretrained_dir=None):
        """Reads weights itself."""

    with pytest.raises(ValueError, match="must not take `pretrained`"):
        register_model(takes_pretrained)
    with pytest.raises(ValueError, match="must not take `pretrained_dir`"):
        register_model(takes_pretrained_dir)


# --- metadata ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_family_is_the_sub_package_and_the_description_one_line(name):
    entry = registered_model(name)
    module = entry.constructor.__module__
    assert entry.family in FAMILIES and module.startswith(f"dynamicnets.models.{entry.family}.")
    assert entry.description and "\n" not in entry.description
    assert entry.description.endswith(".")


def test_families_filter_the_list():
    assert set(list_models(family="skipping")) == {
        "act_resnet", "sact_resnet", "skipnet_resnet", "blockdrop_resnet", "convnet_aig_resnet",
    }
    assert set(list_models("resnet*", family="static")) == {
        "resnet20", "resnet32", "resnet56", "resnet110", "resnet18", "resnet34", "resnet50",
    }
    assert list_models(family="no_such_family") == []
    assert {"static", "depth", "skipping", "width", "parameters", "temporal"} <= set(list_families())


def test_declared_family_and_description(scratch_registry):
    @register_model(family="depth", description="Exits on a tiny trunk.")
    def user_exits():
        """Not this line."""
        return nn.Linear(2, 2)

    @register_model
    def user_plain():
        """A user's model. More text."""
        return nn.Linear(2, 2)

    assert registered_model("user_exits").family == "depth"
    assert registered_model("user_exits").description == "Exits on a tiny trunk."
    assert registered_model("user_plain").family == "user"
    assert registered_model("user_plain").description == "A user's model."
    assert "user_exits" in list_models(family="depth")


def test_model_info_gives_the_published_figures():
    info = model_info("resnet20")
    assert (info.family, info.default_input_shape) == ("static", (3, 32, 32))
    assert (info.params, info.flops) == (272_474, 81_626_368)  # the CifarResNet docstring's table
    assert info.description == "ResNet-20 (n = 3)."
    assert model_info("mnist1d_mlp").flops == 156_672


def test_model_info_of_a_dynamic_model_is_what_one_eval_forward_ran():
    info = model_info("fbs_resnet_cifar")
    assert info.default_input_shape == (3, 32, 32)
    assert info.flops == 41_545_472  # density 0.5, compact (the module docstring's figure)
    state = torch.random.get_rng_state()
    model_info("skipnet_resnet")
    assert torch.equal(torch.random.get_rng_state(), state), "model_info must not move the caller's RNG"


# --- the `models` command ----------------------------------------------------------------

def test_models_command_prints_a_table_of_every_model(capsys):
    assert cli_main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "family", "input", "params", "FLOPs", "description"]
    rows = {line.split()[0]: line.split() for line in lines[2:] if line and not line.startswith("params:")}
    assert set(rows) == set(list_models())
    assert rows["resnet20"][1:5] == ["static", "3x32x32", "272K", "81.6M"]
    assert rows["skipnet_resnet"][1] == "skipping"


def test_models_command_filters_by_family_and_pattern(capsys):
    assert cli_main(["models", "--family", "skipping"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert set(names[:-1]) == set(list_models(family="skipping"))  # the last line is the note
    assert cli_main(["models", "resnet2*", "--family", "parameters", "--names"]) == 0
    assert capsys.readouterr().out.split() == ["resnet20_condconv", "resnet20_dyconv", "resnet20_dyrelu"]


def test_models_help_lists_every_family(capsys):
    with pytest.raises(SystemExit):
        cli_main(["models", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"only this family: {', '.join(FAMILIES)}" in help_text and "transformers" in FAMILIES


def test_models_command_refuses_an_unknown_family(capsys):
    assert cli_main(["models", "--family", "skiping"]) == 2
    err = capsys.readouterr().err
    assert "skiping" in err and "skipping" in err and len(err.strip().splitlines()) == 1
