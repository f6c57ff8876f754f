"""`skip_gru_classifier`: the Skip-RNN sequence classifier over a GRU cell (Campos et al.
2018 define Skip-RNN for any cell; see `layers.skip_rnn`).

Everything but the cell is `skip_lstm_classifier`'s: the update gate (reading the GRU's
hidden state), the budget loss, masked training and compact inference.
"""
from __future__ import annotations

from ...layers.skip_rnn import SkipGRU
from .._registry import register_model
from .skip_lstm import SkipLSTMClassifier


class SkipGRUClassifier(SkipLSTMClassifier):
    """`SkipGRU` over the steps of the input, a linear classifier on the last hidden state.

    Args and shapes: as for `SkipLSTMClassifier` (the cell is `rnn.cell`, an `nn.GRUCell`).
    """

    _name = "skip_gru_classifier"
    _rnn_type = SkipGRU


@register_model
def skip_gru_classifier(*, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                        length: int = 40, budget_weight: float = 1e-3, update_bias_init: float = 2.0,
                        reading: str = "rows", device=None, dtype=None) -> SkipGRUClassifier:
    """Skip-RNN GRU sequence classifier; see `SkipGRUClassifier`."""
    return SkipGRUClassifier(num_classes, in_chans, hidden, row_width, length, budget_weight, update_bias_init,
                             reading, device=device, dtype=dtype)
