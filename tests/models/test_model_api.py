"""The classifier API (timm conventions) of every registered model, parametrized over `list_models()`.

`forward_features` / `forward_head` / `get_classifier` / `reset_classifier` /
`num_features`, as `dynamicnets.models.ClassifierApi` defines them.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamicnets import create_model, list_models
from dynamicnets.execution import Execution, supported_executions
from dynamicnets.flops import counted_flops
from dynamicnets.models.width import NeuralTree, SoftDecisionTree

MODELS = list_models()
NUM_CLASSES = 7
NEW_CLASSES = 3
# smaller than the defaults where a keyword allows: keeps the suite fast
SMALL = {name: {"depth": 14} for name in (
    "act_resnet", "sact_resnet", "skipnet_resnet", "blockdrop_resnet", "convnet_aig_resnet",
)}
# DS-Net's forward_features/forward_head are the widest network's: they give the widest
# width's logits (an exit of the masked output), not the per-sample choice; a compact
# forward runs only the chosen widths, so there is nothing to compare with
REFERENCE = {"dsnet_resnet_cifar": lambda out: out.exit_logits[-2] if len(out.exit_logits) > 1 else None}
# exit heads with conv layers before pooling: the linear layer reads their width
HIDDEN_HEADS = {"msdnet_cifar", "ranet_cifar"}
# trees are all head: forward_head takes forward's execution (see RoutedTree)
TREES = {"soft_decision_tree", "neural_tree_cnn"}
# transformers return their tokens (B, N, num_features), timm's layout
TOKENS = set(list_models(family="transformers"))


def build(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES, **SMALL.get(name, {}), **kwargs)


def capped_input_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape`, with image sides capped at 64: ImageNet-layout models (224x224) run the
    same code on 64x64 about 12x cheaper, which keeps the registry-wide suite fast."""
    if len(shape) != 3:
        return tuple(shape)
    return (shape[0], *(min(side, 64) for side in shape[1:]))

def example_input(model: nn.Module, batch: int = 3, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, *capped_input_shape(model.default_input_shape), generator=generator).to(**kwargs)


def executions(model: nn.Module) -> list[dict]:
    """The eval-mode forward keyword sets to check: the default, and masked where supported."""
    if Execution.MASKED in supported_executions(model):
        return [{}, {"execution": "masked"}]
    return [{}]


@pytest.mark.parametrize("name", MODELS)
def test_forward_head_of_forward_features_is_forward(name):
    model = build(name).eval()
    x = example_input(model)
    reference = REFERENCE.get(name, lambda out: out.logits)
    for kwargs in executions(model):
        with torch.no_grad():
            if name in TREES:
                features = model.forward_features(x)
                logits = model.forward_head(features, **kwargs)
            else:
                features = model.forward_features(x, **kwargs)
                logits = model.forward_head(features)
            out = model(x, **kwargs)
        assert isinstance(features, torch.Tensor), f"{name}: forward_features must return a tensor"
        channels = (features.shape[0], features.shape[-1]) if name in TOKENS else features.shape[:2]
        assert channels == (3, model.num_features), f"{name} {kwargs}: {tuple(features.shape)}"
        assert logits.shape == (3, NUM_CLASSES)
        expected = reference(out)
        if expected is not None:
            torch.testing.assert_close(logits, expected, msg=f"{name} {kwargs}")


def classifier_weights(model: nn.Module) -> list[torch.Tensor]:
    """The weights `reset_classifier` replaces (a soft decision tree's are its leaf logits)."""
    if isinstance(model, SoftDecisionTree):
        return [model.leaf_logits]
    return [model.get_submodule(path).weight for path in model.classifier_paths]


@pytest.mark.parametrize("name", MODELS)
def test_classifier_is_the_final_linear_layer(name):
    model = build(name)
    assert isinstance(model.num_features, int) and model.num_features >= 1
    layers = [model.get_submodule(path) for path in model.classifier_paths]
    assert all(isinstance(layer, nn.Linear) and layer.out_features == NUM_CLASSES for layer in layers)
    classifier = model.get_classifier()
    if isinstance(model, SoftDecisionTree):  # its classifier is its leaf logits
        assert classifier is model and model.leaf_logits.shape[1] == NUM_CLASSES
    elif isinstance(model, NeuralTree):  # one classifier per leaf
        assert classifier is model.solvers and [s.fc for s in classifier] == layers
    else:
        assert classifier is layers[-1], f"{name}: get_classifier() is not the final linear layer"
        if name not in HIDDEN_HEADS:
            assert classifier.in_features == model.num_features


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier(name):
    """New output size everywhere, fresh layers that learn, honest FLOPs after the change."""
    model = build(name)
    old = classifier_weights(model)
    model.reset_classifier(NEW_CLASSES)
    new = classifier_weights(model)
    assert len(new) == len(old) >= 1
    assert all(n is not o for n, o in zip(new, old)), f"{name}: a classifier was not replaced"
    class_dim = 1 if isinstance(model, SoftDecisionTree) else 0  # leaf logits: (leaves, classes)
    assert all(n.shape[class_dim] == NEW_CLASSES for n in new)

    x = example_input(model)
    out = model.train()(x)
    assert out.logits.shape == (3, NEW_CLASSES)
    assert all(e.shape == (3, NEW_CLASSES) for e in out.exit_logits)
    y = torch.tensor([0, 1, 2])
    loss = sum(F.cross_entropy(logits, y) for logits in out.exit_logits) / len(out.exit_logits)
    (loss + out.aux_loss()).backward()
    for weight in new:
        assert weight.grad is not None and weight.grad.abs().sum() > 0, f"{name}: new head got no gradient"

    model.eval()
    with torch.no_grad():
        assert model.forward_head(model.forward_features(x)).shape == (3, NEW_CLASSES)
        out = model(x)
    assert int(out.flops.sum().item()) == counted_flops(model, x), f"{name}: FLOPs stale after reset"


@pytest.mark.parametrize("name", MODELS)
def test_reset_classifier_keeps_device_and_dtype(name):
    model = build(name, device="meta", dtype=torch.float64)
    model.reset_classifier(NEW_CLASSES)
    for weight in classifier_weights(model):
        assert weight.device.type == "meta" and weight.dtype == torch.float64


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_reset_classifier_refuses_a_bad_num_classes(bad):
    from dynamicnets import ConfigError

    model = build("small_cnn")
    with pytest.raises(ConfigError, match="num_classes"):
        model.reset_classifier(bad)


def test_exits_on_a_user_backbone_have_the_api_too():
    """`add_exits` on a user's stages: pool + linear exits (`nn.Sequential`) reset like ExitHeads."""
    from dynamicnets.adapt import add_exits

    torch.manual_seed(0)
    stages = [nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()),
              nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())]
    model = add_exits(stages, num_classes=NUM_CLASSES, input_shape=(1, 8, 8)).eval()
    x = torch.randn(3, 1, 8, 8)
    features = model.forward_features(x)
    assert features.shape == (3, 16, 4, 4) and model.num_features == 16
    torch.testing.assert_close(model.forward_head(features), model(x).logits)
    model.reset_classifier(NEW_CLASSES)
    out = model(x)
    assert all(e.shape == (3, NEW_CLASSES) for e in out.exit_logits)
    assert int(out.flops.sum().item()) == counted_flops(model, x)
