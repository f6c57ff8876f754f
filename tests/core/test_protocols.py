"""Capabilities are protocols: the library's models satisfy them, a user's model can too."""
import pytest
import torch
from torch import nn

import dynamicnets as dn
from dynamicnets.inference import calibrate_gate_rate
from dynamicnets.protocols import CalibratableGates, MultiExit, SkipsComputation, SupportsExecution


@pytest.mark.parametrize("name,kwargs,capabilities", [
    ("msdnet_cifar", {"num_blocks": 2}, {MultiExit}),
    ("skipnet_resnet", {"depth": 20}, {CalibratableGates, SkipsComputation, SupportsExecution}),
    ("act_resnet", {"depth": 20}, {SkipsComputation, SupportsExecution}),
    ("skip_lstm_classifier", {}, {SkipsComputation, SupportsExecution}),
    ("resnet20", {}, set()),
])
def test_models_declare_exactly_their_capabilities(name, kwargs, capabilities):
    model = dn.create_model(name, **kwargs)
    for protocol in (MultiExit, SkipsComputation, CalibratableGates, SupportsExecution):
        assert isinstance(model, protocol) == (protocol in capabilities), protocol.__name__


class TwoExitNet(nn.Module):
    """A user's own two-stage network: it becomes usable by the exit executor by shape alone."""

    num_exits = 2

    def __init__(self):
        super().__init__()
        self.stages = nn.ModuleList([nn.Linear(4, 8), nn.Linear(8, 8)])
        self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3)])

    def run_segment(self, k, state, x):
        return torch.relu(self.stages[k](x if state is None else state))

    def exit_logits(self, k, state):
        return self.heads[k](state)

    def exit_costs(self, input_shape):
        return [2 * 4 * 8 + 2 * 8 * 3, 2 * 4 * 8 + 2 * 8 * 8 + 2 * 8 * 3]

    def needs_input_after(self, k):
        return False


def test_a_user_model_is_driven_by_the_exit_executor():
    model = TwoExitNet().eval()
    assert isinstance(model, MultiExit)
    result = dn.inference.run(model, torch.randn(5, 4), dn.inference.ExitPolicy(thresholds=[0.0]))
    assert (result.exit_index == 0).all() and result.flops.tolist() == [112.0] * 5


def test_missing_capability_is_named():
    with pytest.raises(dn.ConfigError, match="MultiExit protocol.*'num_exits'"):
        dn.inference.run(nn.Linear(4, 3).eval(), torch.randn(2, 4), dn.inference.ExitPolicy(thresholds=[0.5]))
    with pytest.raises(dn.ConfigError, match="no layer-skipping gates"):
        calibrate_gate_rate(dn.create_model("resnet20"), torch.randn(2, 3, 32, 32), 0.5)
