"""The lean compact-inference path of the threshold-gated models (`run_scored`, gate
scorers): bit for bit the decisions and logits of the module path, one sync per gated
block and no gather/scatter at batch 1."""
from __future__ import annotations

import pytest
import torch
from skipping_helpers import build, center_decisions, inputs
from torch.profiler import ProfilerActivity, profile

from dynamicnets.models.skipping import PooledLinearGate, PooledMLPGate, RecurrentGate
from dynamicnets.gates.block_gates import global_pool, pool_count

SCORED = ["skipnet_ff", "skipnet_rnn", "convnet_aig"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_with_count_is_the_mean_bit_for_bit(dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    for shape in [(1, 16, 32, 32), (5, 64, 8, 8), (3, 7, 5, 9)]:
        x = (torch.randn(*shape, generator=g, dtype=dtype) * 1e3).relu()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(global_pool(x, pool_count(x)), x.mean(dim=(2, 3)))
    assert pool_count(x.half()) is None  # float16 means accumulate in float32: no shortcut
    assert pool_count(x.to("meta")) is None  # only the CPU mean is sum-then-divide


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scorers_give_the_forward_logits_bit_for_bit(dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 8, 6, 6, dtype=dtype).relu()
    pooled = global_pool(x, pool_count(x))
    for gate in (PooledLinearGate(8, dtype=dtype), PooledMLPGate(8, 4, dtype=dtype)):
        assert torch.equal(gate.scorer()(pooled), gate(x).unsqueeze(1))
    rnn = RecurrentGate((8, 16), 6, 6, dtype=dtype)
    y = torch.randn(5, 16, 3, 3, dtype=dtype)
    steps = [(x, 0), (x * 2, 0), (y, 1), (y.flip(0), 1)]
    scorers, state = rnn.scorers([stage for _, stage in steps]), None
    for (h, stage), scorer in zip(steps, scorers):
        logits, state = rnn(h, stage, state)  # the state carries over in both
        assert torch.equal(scorer(global_pool(h)), logits.unsqueeze(1))


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("config", SCORED)
def test_scored_inference_equals_the_module_path_bit_for_bit(config, batch):
    """`run_scored` (the eval default) against `run_blocks` with the gate modules, compact."""
    model = build(config, depth=20)
    x = inputs(8)
    center_decisions(model, x)
    x = x[:batch]
    state: list = [None]

    def decide(index, stage, h):
        if config == "skipnet_rnn":
            logit, state[0] = model.gate(h, stage, state[0])
        else:
            logit = model.gates[index](h)
        return logit > 0

    with torch.no_grad():
        out = model(x)
        features, gates = model.run_blocks(x, decide, "compact", validate=False)
    assert torch.equal(out.decisions["gates"], gates)
    assert torch.equal(out.logits, model.backbone.head(features))
    if batch == 8:
        assert 0 < gates.mean() < 1  # some blocks skipped, some run


@pytest.mark.parametrize("config", SCORED)
def test_batch_of_one_decides_in_python_with_one_sync_per_block(config):
    model = build(config, depth=20)
    x = inputs(8)
    center_decisions(model, x)
    with torch.no_grad():
        gates = model(x).decisions["gates"]
    b = int(((gates > 0).any(1) & (gates == 0).any(1)).nonzero()[0])  # some blocks run, some not
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        out = model(x[b : b + 1])
    ops = [event.name for event in prof.events()]
    assert ops.count("aten::_local_scalar_dense") == model.num_gated_blocks  # one sync each
    gather_scatter = {"nonzero", "index", "index_put", "index_put_", "index_select", "stack"}
    assert not {f"aten::{name}" for name in gather_scatter} & set(ops)
    assert torch.equal(out.decisions["gates"], gates[b : b + 1])
