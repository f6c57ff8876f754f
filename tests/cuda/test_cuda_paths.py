"""Every registered model and the early-exit evaluation on a CUDA device, held against the CPU.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
`python -m pytest tests/cuda`. TF32 is switched off so that CUDA and CPU compute the same
float32 products and the compact paths take the same decisions on both.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dynamicnets import create_model, list_models
from dynamicnets.pipelines.early_exit import EarlyExitRequest, evaluate_early_exit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

MODELS = list_models()
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def example(model: torch.nn.Module, batch: int = 4) -> torch.Tensor:
    shape = tuple(model.default_input_shape)
    if len(shape) == 3:  # ImageNet-layout models run the same code at 64x64
        shape = (shape[0], *(min(side, 64) for side in shape[1:]))
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", MODELS)
def test_inference_on_cuda_matches_the_cpu(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = example(model)
    with torch.no_grad():
        want = model(x)
        got = model.to(CUDA)(x.to(CUDA))
    assert got.logits.device.type == CUDA.type
    torch.testing.assert_close(got.logits.cpu(), want.logits, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got.flops.cpu(), want.flops, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_training_step_on_cuda_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = create_model(name).to(CUDA).train()
    x = example(model).to(CUDA)
    y = torch.arange(x.shape[0], device=CUDA) % 2  # every model has at least two classes
    out = model(x)
    loss = sum(F.cross_entropy(logits, y) for logits in out.exit_logits) / len(out.exit_logits)
    (loss + out.aux_loss()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: {pname}"


def test_budgeted_early_exit_evaluation_on_cuda_equals_the_cpu():
    torch.manual_seed(0)
    model = create_model("resnet_exits").eval()
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(96, 3, 32, 32, generator=generator), torch.randint(0, 10, (96,), generator=generator))
    calibration = torch.utils.data.Subset(data, range(48))
    evaluation = torch.utils.data.Subset(data, range(48, 96))
    request = EarlyExitRequest(budget_fraction=0.6, batch_size=16, min_run_time=0.01, timed_samples=32)
    on_cpu = evaluate_early_exit(model, calibration, evaluation, request, (3, 32, 32))
    on_cuda = evaluate_early_exit(model.to(CUDA), calibration, evaluation, request, (3, 32, 32))
    for key in ("thresholds", "accuracy", "mean_flops", "exit_histogram"):
        assert on_cuda[key] == pytest.approx(on_cpu[key]), key


def test_the_anchor_comparison_runs_where_the_models_are():
    from dynamicnets.pipelines.eval_anchor import Anchor, compare_with_anchor

    torch.manual_seed(0)
    anchor = Anchor(create_model("resnet20").eval().to(CUDA), "resnet20", 81_626_368.0)
    model = create_model("resnet20").eval().to(CUDA)
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator))
    with torch.inference_mode():
        result = compare_with_anchor(model, anchor, data, [data.tensors[0]], accuracy=0.5,
                                     timed_flops=81_626_368.0, batch_size=8, device=CUDA, min_run_time=0.01)
    assert result["speedup_flops_vs_anchor"] == 1.0 and result["speedup_measured_vs_anchor"] > 0
