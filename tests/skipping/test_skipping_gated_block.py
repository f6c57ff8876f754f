"""`run_gated`: compact execution equals the masked mix for the same hard gates."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamicnets.errors import ConfigError
from dynamicnets.layers.gated_block import GatedResidual, gated_flops, run_gated
from dynamicnets.models.static.resnet_cifar import BasicBlock


class CountingBlock(nn.Module):
    """A `BasicBlock` that records the batch size of every call."""

    def __init__(self, chans: int = 4) -> None:
        super().__init__()
        self.block = BasicBlock(chans, chans)
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return self.block(x)


def block_and_input(batch: int, seed: int = 0):
    torch.manual_seed(seed)
    block = CountingBlock().eval()
    x = torch.relu(torch.randn(batch, 4, 6, 6))  # a post-activation block's input is >= 0
    return block, x


GATE_CASES = {
    "mixed": [1, 0, 1, 1, 0],
    "all_off": [0, 0, 0, 0, 0],
    "all_on": [1, 1, 1, 1, 1],
    "batch1_on": [1],
    "batch1_off": [0],
}


@pytest.mark.parametrize("case", list(GATE_CASES))
def test_compact_equals_masked_and_runs_only_the_gated_samples(case):
    gate = torch.tensor(GATE_CASES[case], dtype=torch.float32)
    block, x = block_and_input(gate.numel())
    with torch.no_grad():
        masked = run_gated(block, x, gate, "masked")
        block.calls.clear()
        compact = run_gated(block, x, gate, "compact")
    torch.testing.assert_close(compact, masked, rtol=1e-5, atol=1e-6)
    on = int(gate.sum())
    assert block.calls == ([on] if on else [])  # no call when all off, one call on the on-samples
    off = gate == 0
    assert torch.equal(compact[off], x[off])  # a skipped block is an exact identity
    with torch.no_grad():
        assert torch.equal(compact[~off], block.block(x[~off])) if on else True


def test_masked_gives_the_gate_a_gradient_and_mixes_soft_gates():
    block, x = block_and_input(3)
    gate = torch.tensor([0.25, 1.0, 0.0], requires_grad=True)
    y = run_gated(block, x, gate, "masked")
    with torch.no_grad():
        full = block.block(x)
    expected = 0.25 * full[0] + 0.75 * x[0]
    torch.testing.assert_close(y[0], expected)
    y.sum().backward()
    torch.testing.assert_close(gate.grad, (full - x).flatten(1).sum(1))


def test_compact_keeps_the_gradient_of_executed_gates():
    block, x = block_and_input(4)
    gate = torch.tensor([1.0, 0.0, 1.0, 0.0], requires_grad=True)
    run_gated(block, x, gate, "compact").sum().backward()
    with torch.no_grad():
        expected = (block.block(x) - x).flatten(1).sum(1)
    torch.testing.assert_close(gate.grad[[0, 2]], expected[[0, 2]])
    assert torch.equal(gate.grad[[1, 3]], torch.zeros(2))


def test_compact_refuses_soft_gates_and_bad_shapes():
    block, x = block_and_input(2)
    with pytest.raises(ConfigError, match="hard gates"):
        run_gated(block, x, torch.tensor([0.5, 1.0]), "compact")
    with pytest.raises(ConfigError, match="shape"):
        run_gated(block, x, torch.ones(3), "masked")
    with pytest.raises(ConfigError, match="execution"):
        run_gated(block, x, torch.ones(2), "sparse")


def test_channels_last_stays_channels_last():
    block, x = block_and_input(5)
    block = block.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    gate = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    with torch.no_grad():
        y = run_gated(block, x_cl, gate, "compact")
        reference = run_gated(block, x, gate, "masked")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-6)


def test_gated_residual_module_and_flops():
    block, x = block_and_input(3)
    module = GatedResidual(block)
    gate = torch.tensor([1.0, 0.0, 1.0])
    with torch.no_grad():
        torch.testing.assert_close(module(x, gate, "compact"), run_gated(block, x, gate, "masked"))
    costs = torch.tensor([10.0, 100.0], dtype=torch.float64)
    gates = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert gated_flops(costs, gates).tolist() == [10.0, 110.0, 0.0]


def test_inplace_write_back_only_without_autograd():
    block, x = block_and_input(4)
    gate = torch.tensor([True, False, True, False])
    reference = run_gated(block, x, gate.float(), "masked").detach()
    with torch.no_grad():
        x_copy = x.clone()
        y = run_gated(block, x_copy, gate, "compact", validate=False, inplace=True)
    assert y.data_ptr() == x_copy.data_ptr()  # written into its input
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-6)
    x_grad = x.clone().requires_grad_(True)
    y = run_gated(block, x_grad, gate, "compact", inplace=True)  # autograd on: a copy
    assert y.data_ptr() != x_grad.data_ptr()
    torch.testing.assert_close(y.detach(), reference, rtol=1e-5, atol=1e-6)
