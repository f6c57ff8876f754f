"""Exportable outputs: `DynamicOutput` is a pytree, masked/static paths export, compact
paths refuse to be traced instead of freezing their decisions."""
import warnings

import pytest
import torch
import torch.utils._pytree as pytree

from dynamicnets import ConfigError, DynamicOutput, create_model, list_models
from dynamicnets.execution import Execution, supported_executions

# Deep defaults (ResNet-110 backbones) export in 20-60 s each; the fast suite exports a
# shallow configuration of the same class, the slow one the registered default.
SHALLOW = {name: {"depth": 20} for name in (
    "act_resnet", "sact_resnet", "blockdrop_resnet", "convnet_aig_resnet", "skipnet_resnet")}
SHALLOW.update({"resnet110": {}, "msdnet_cifar": {"num_blocks": 2}})


def capped_input_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape`, with image sides capped at 64: ImageNet-layout models (224x224) run the
    same code on 64x64 about 12x cheaper, which keeps the registry-wide suite fast."""
    if len(shape) != 3:
        return tuple(shape)
    return (shape[0], *(min(side, 64) for side in shape[1:]))


def _export_and_compare(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **kwargs).eval()
    forward_kwargs = {"execution": Execution.MASKED} if supported_executions(model) else {}
    x = torch.randn(2, *capped_input_shape(model.default_input_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (x,), kwargs=forward_kwargs)
    other = torch.randn(3, *capped_input_shape(model.default_input_shape))  # another batch size, other decisions
    got = program.module()(other[:2], **forward_kwargs)
    want = model(other[:2], **forward_kwargs)
    assert isinstance(got, DynamicOutput)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got.flops, want.flops)
    assert got.decisions.keys() == want.decisions.keys()


# deeper twins of models exported here at a smaller depth: same code, 5-12 s each
DEEP_TWINS = {"dynconv_resnet32", "sact_resnet32", "deformable_resnet32", "resnet34"}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in DEEP_TWINS else n
    for n in list_models() if n != "resnet110"
])
def test_every_model_exports_in_masked_or_static_mode(name):
    _export_and_compare(name, SHALLOW.get(name, {}))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SHALLOW))
def test_deep_defaults_export(name):
    _export_and_compare(name, {})


def test_dynamic_output_is_a_pytree():
    out = DynamicOutput(logits=torch.ones(2, 3), decisions={"gates": torch.zeros(2, 4)},
                        aux_losses={"rate": torch.tensor(0.5)}, flops=torch.ones(2, dtype=torch.float64))
    leaves, spec = pytree.tree_flatten(out)
    assert len(leaves) == 5  # logits, exit_logits[0], gates, rate, flops
    doubled = pytree.tree_map(lambda t: t * 2, out)
    assert isinstance(doubled, DynamicOutput)
    assert torch.equal(doubled.decisions["gates"], out.decisions["gates"] * 2)
    assert float(doubled.aux_losses["rate"]) == 1.0
    assert pytree.tree_unflatten(leaves, spec).logits is out.logits


def test_stages_of_a_multi_exit_model_export_one_by_one():
    model = create_model("msdnet_cifar", num_classes=5, num_blocks=2).eval()
    x = torch.randn(2, *capped_input_shape(model.default_input_shape))
    state = None
    for k in range(model.num_exits):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            segment = torch.export.export(_Segment(model, k), (x,) if state is None else (x, state))
        got = segment.module()(x) if state is None else segment.module()(x, state)
        state = model.run_segment(k, state, x)
        torch.testing.assert_close(got, model.exit_logits(k, state))


class _Segment(torch.nn.Module):
    """Stage `k` and its exit head as one callable: (input[, state]) -> exit logits."""

    def __init__(self, model, k):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x, state=None):
        return self.model.exit_logits(self.k, self.model.run_segment(self.k, state, x))


@pytest.mark.parametrize("name", ["skipnet_resnet", "convnet_aig_resnet", "dsnet_resnet_cifar",
                                  "skip_lstm_classifier", "moe_resnet_cifar"])
def test_tracing_a_compact_path_is_refused(name):
    model = create_model(name, num_classes=5, **SHALLOW.get(name, {})).eval()
    x = torch.randn(2, *capped_input_shape(model.default_input_shape))
    with pytest.raises(ConfigError, match="cannot be traced or exported.*execution=Execution.MASKED"):
        torch.jit.trace(lambda inp: model(inp).logits, (x,), check_trace=False)
    with pytest.raises(Exception, match="cannot be traced or exported"):
        torch.export.export(model, (x,))


def test_tracing_the_exit_executor_is_refused():
    import dynamicnets as dn

    model = create_model("multi_exit_cnn", num_classes=5).eval()
    policy = dn.inference.ExitPolicy(thresholds=[0.5] * (model.num_exits - 1))
    x = torch.randn(2, *capped_input_shape(model.default_input_shape))
    with pytest.raises(ConfigError, match="early-exit executor"):
        torch.jit.trace(lambda inp: dn.inference.run(model, inp, policy).logits, (x,), check_trace=False)
