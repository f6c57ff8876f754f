"""`gru_classifier`: the static GRU baseline of `skip_gru_classifier`, a GRU cell at every step.

The same cell and head as `skip_gru_classifier` without the update gate (state-dict keys
`cell.*` and `head.*`, as `rnn.cell.*` / `head.*` there), so a trained baseline is the
"every step updates" end of the Skip-GRU's range.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...flops import gru_cell_flops
from .._registry import register_model
from .lstm_classifier import LSTMClassifier


class GRUClassifier(LSTMClassifier):
    """`nn.GRUCell` over the steps of the input, a linear classifier on the last hidden state.

    Args and shapes: as for `LSTMClassifier`; `flops (B,)` = `T x gru_cell_flops + head`.
    """

    _name = "gru_classifier"

    @staticmethod
    def _make_cell(features: int, hidden: int, factory: dict) -> nn.Module:
        return nn.GRUCell(features, hidden, **factory)

    def _last_hidden(self, steps: Tensor) -> Tensor:
        """`steps (T, B, features)`, each step contiguous -> `h_T (B, hidden)`."""
        h = steps.new_zeros(steps.shape[1], self.cell.hidden_size)
        for x_t in steps:
            h = self.cell(x_t, h)
        return h

    def step_flops(self) -> int:
        """Per-sample FLOPs of one step of the cell."""
        return gru_cell_flops(self.cell)


@register_model
def gru_classifier(*, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                   length: int = 40, reading: str = "rows", device=None, dtype=None) -> GRUClassifier:
    """Static GRU sequence classifier; see `GRUClassifier`."""
    return GRUClassifier(num_classes, in_chans, hidden, row_width, length, reading, device=device, dtype=dtype)
