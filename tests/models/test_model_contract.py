"""The contract every registered model keeps, parametrized over `list_models()`.

New models are covered automatically. Each model must expose `default_input_shape`,
its canonical per-sample input shape (e.g. `(3, 32, 32)`), used to build test inputs.
"""
import pytest
import torch
import torch.nn.functional as F

from dynamicnets import DynamicOutput, create_model, list_models
from dynamicnets.flops import counted_flops

MODELS = list_models()
NUM_CLASSES = 7  # not the default 10, so a model that ignores the argument is caught


def capped_input_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape`, with image sides capped at 64: ImageNet-layout models (224x224) run the
    same code on 64x64 about 12x cheaper, which keeps the registry-wide suite fast."""
    if len(shape) != 3:
        return tuple(shape)
    return (shape[0], *(min(side, 64) for side in shape[1:]))

def example_input(model: torch.nn.Module, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """`(batch, *model.default_input_shape)` standard-normal input."""
    shape = getattr(model, "default_input_shape", None)
    if shape is None:
        pytest.fail(
            f"{type(model).__name__} has no `default_input_shape` attribute; every model "
            "must expose its canonical per-sample input shape, e.g. (3, 32, 32)"
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *capped_input_shape(shape), generator=generator)


def is_static(model: torch.nn.Module) -> bool:
    return type(model).__module__.startswith("dynamicnets.models.static")


def test_registry_is_not_empty():
    assert {"resnet20", "small_cnn", "mnist1d_mlp", "mnist1d_cnn"} <= set(MODELS)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", MODELS)
def test_forward_returns_dynamic_output(name, train):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).train(train)
    x = example_input(model, batch=3)
    out = model(x)
    assert isinstance(out, DynamicOutput)
    assert out.logits.shape == (3, NUM_CLASSES)
    assert torch.isfinite(out.logits).all()
    assert out.flops is not None, f"{name} does not report per-sample FLOPs"
    assert out.flops.shape == (3,) and out.flops.dtype == torch.float64
    assert (out.flops > 0).all() and torch.isfinite(out.flops).all()
    if train:  # in training every exit sees the whole batch
        assert all(e.shape == (3, NUM_CLASSES) for e in out.exit_logits)


@pytest.mark.parametrize("name", MODELS)
def test_inference_runs_under_bf16_autocast(name):
    """Training validates under bf16 autocast (`bf16: true`): every compact path must take
    bfloat16 activations beside float32 weights and buffers."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = example_input(model, batch=2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.logits.shape == (2, NUM_CLASSES) and torch.isfinite(out.logits.float()).all()


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_finite_gradient(name):
    """Cross-entropy on every exit + `aux_loss()` reaches every parameter.

    For a single-exit model this is plain cross-entropy on `logits` + `aux_loss()`.
    Static models must also get a non-zero gradient on every parameter tensor.
    """
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).train()
    x = example_input(model, batch=3)
    y = torch.tensor([0, 3, 6])
    out = model(x)
    loss = sum(F.cross_entropy(logits, y) for logits in out.exit_logits) / len(out.exit_logits)
    (loss + out.aux_loss()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: parameter {pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: parameter {pname} has a non-finite gradient"
        if is_static(model):
            assert p.grad.abs().sum() > 0, f"{name}: parameter {pname} got an all-zero gradient"


@pytest.mark.parametrize("name", MODELS)
def test_reported_flops_equal_flop_counter(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=NUM_CLASSES).eval()
    x = example_input(model, batch=2)
    with torch.no_grad():
        out = model(x)
    assert int(out.flops.sum().item()) == counted_flops(model, x)


@pytest.mark.parametrize("name", MODELS)
def test_builds_on_the_requested_device_and_dtype(name):
    """`device`/`dtype` reach every layer: nothing is created on a fixed device or dtype."""
    model = create_model(name, device="meta")
    tensors = list(model.parameters()) + list(model.buffers())
    assert tensors and all(t.device.type == "meta" for t in tensors)

    model = create_model(name, num_classes=NUM_CLASSES, dtype=torch.float64).eval()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    out = model(example_input(model).double())
    assert out.logits.dtype == torch.float64
