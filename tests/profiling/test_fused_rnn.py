"""fused_rnn: nn.LSTM / nn.GRU with a cell's weights computes the cell loop in one call."""
import pytest
import torch
from torch import nn

from dynamicnets.profiling.fused_rnn import fused_rnn


@pytest.mark.parametrize("cell_type", [nn.LSTMCell, nn.GRUCell])
@pytest.mark.parametrize("bias", [True, False])
def test_fused_rnn_equals_the_cell_loop(cell_type, bias):
    torch.manual_seed(0)
    cell = cell_type(3, 5, bias=bias, dtype=torch.float64)
    x = torch.randn(4, 7, 3, dtype=torch.float64)
    state = torch.zeros(4, 5, dtype=torch.float64)
    state = (state, state) if cell_type is nn.LSTMCell else state
    hidden = []
    for t in range(7):
        state = cell(x[:, t], state)
        hidden.append(state[0] if cell_type is nn.LSTMCell else state)
    rnn = fused_rnn(cell)
    assert isinstance(rnn, nn.LSTM if cell_type is nn.LSTMCell else nn.GRU) and not rnn.training
    with torch.no_grad():
        torch.testing.assert_close(rnn(x)[0], torch.stack(hidden, dim=1))
    with torch.no_grad():  # a copy: the cell's weights stay its own
        rnn.weight_hh_l0.zero_()
    assert cell.weight_hh.abs().sum() > 0


def test_fused_rnn_refuses_other_modules():
    with pytest.raises(TypeError, match="LSTMCell or nn.GRUCell"):
        fused_rnn(nn.RNNCell(3, 5))
