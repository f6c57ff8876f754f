"""The recurrent layers follow the library's execution rule: `execution=None` is masked in
training and compact in eval, as for every other dynamic layer."""
import pytest
import torch

from dynamicnets import count_flops
from dynamicnets.execution import Execution, supported_executions
from dynamicnets.layers.lstm_jump import LSTMJump
from dynamicnets.layers.skim_rnn import SkimLSTM
from dynamicnets.layers.skip_rnn import SkipGRU, SkipLSTM

LAYERS = {
    "skip_lstm": lambda: SkipLSTM(3, 8, update_bias_init=-0.5),
    "skip_gru": lambda: SkipGRU(3, 8, update_bias_init=-0.5),
    "skim_lstm": lambda: SkimLSTM(3, 8, 2),
    "lstm_jump": lambda: LSTMJump(3, 8, read_steps=2, max_jump=3),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_default_is_compact_in_eval_and_none_is_accepted(name):
    torch.manual_seed(0)
    layer = LAYERS[name]().eval()
    x = torch.randn(4, 12, 3)
    assert supported_executions(layer) == (Execution.MASKED, Execution.COMPACT)
    with torch.no_grad():
        default, none = layer(x), layer(x, execution=None)
        compact, masked = layer(x, execution="compact"), layer(x, execution="masked")
    for result in (default, none):
        assert torch.equal(result.flops, compact.flops)
        torch.testing.assert_close(result.hidden, compact.hidden)
    assert (compact.flops <= masked.flops).all()


@pytest.mark.parametrize("cls", [SkipLSTM, SkipGRU])
def test_default_is_masked_in_training(cls):
    torch.manual_seed(0)
    layer = cls(3, 8, update_bias_init=-0.5).train()
    x = torch.randn(4, 12, 3)
    default, masked = layer(x), layer(x, execution="masked")
    assert torch.equal(default.flops, masked.flops)
    torch.testing.assert_close(default.hidden, masked.hidden)


def test_a_users_model_holding_one_is_counted_on_the_masked_path_in_eval():
    class Reader(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.fc = SkipLSTM(3, 8), torch.nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.rnn(x).hidden)

    model = Reader()
    assert count_flops(model.eval(), (12, 3)) == count_flops(model.train(), (12, 3))
