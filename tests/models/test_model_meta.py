"""Every registered model runs on the meta device in masked execution.

Meta tensors carry shapes, no values: a forward on them is how shapes and costs are
checked without memory (a large model, a new input size). It works only where nothing
in the forward needs a value on the host (`.item()`, `bool(tensor)`, `bincount`, a
`repeat_interleave` without `output_size`): the masked execution must have no such
syncs. Compact execution decides on values, so it is not expected to run on meta.
"""
import pytest
import torch

from dynamicnets import DynamicOutput, create_model, list_models
from dynamicnets.execution import Execution, supported_executions

MODELS = list_models()
NUM_CLASSES = 7
BATCH = 2
SMALL = {name: {"depth": 14} for name in (
    "act_resnet", "sact_resnet", "skipnet_resnet", "blockdrop_resnet", "convnet_aig_resnet",
)}


def on_meta(name: str, how: str) -> torch.nn.Module:
    kwargs = {"num_classes": NUM_CLASSES, **SMALL.get(name, {})}
    if how == "built_on_meta":
        with torch.device("meta"):
            return create_model(name, **kwargs)
    torch.manual_seed(0)
    return create_model(name, **kwargs).to("meta")


# built under `torch.device("meta")` in both modes; moved with `.to("meta")` (cost tables
# computed on the CPU first) once
CASES = [("train", "built_on_meta"), ("eval_masked", "built_on_meta"), ("train", "moved_to_meta")]


@pytest.mark.parametrize(("mode", "how"), CASES, ids=["-".join(c) for c in CASES])
@pytest.mark.parametrize("name", MODELS)
def test_masked_forward_runs_on_meta_tensors(name, mode, how):
    model = on_meta(name, how).train(mode == "train")
    assert all(p.device.type == "meta" for p in model.parameters())
    kwargs = {}
    if mode == "eval_masked" and Execution.MASKED in supported_executions(model):
        kwargs["execution"] = "masked"
    x = torch.empty(BATCH, *model.default_input_shape, device="meta")
    out = model(x, **kwargs)
    assert isinstance(out, DynamicOutput)
    assert out.logits.device.type == "meta" and out.logits.shape == (BATCH, NUM_CLASSES)
    assert all(e.shape == (BATCH, NUM_CLASSES) for e in out.exit_logits)
    assert out.flops.device.type == "meta" and out.flops.shape == (BATCH,)
    assert out.flops.dtype == torch.float64
    if mode == "train":
        assert all(loss.device.type == "meta" and loss.dim() == 0 for loss in out.aux_losses.values())
