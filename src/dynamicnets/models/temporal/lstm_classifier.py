"""`lstm_classifier`: the static recurrent baseline, an LSTM cell run at every step.

The same cell and head as `skip_lstm_classifier` without the update gate, so a trained
baseline is the "every step updates" end of the Skip-RNN's range, and its cost is that
of a plain LSTM (timed against PyTorch's fused `nn.LSTM` in the benchmark).
"""
from __future__ import annotations

from torch import Tensor, nn

from ...outputs import DynamicOutput, constant_flops
from ...flops import linear_flops, lstm_cell_flops
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import require_positive
from .sequence import as_sequence, sequence_steps, step_features


class LSTMClassifier(ClassifierApi, nn.Module):
    """`nn.LSTMCell` over the steps of the input, a linear classifier on the last hidden state.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        hidden: LSTM hidden size.
        row_width: `None` for `(C, L)` signals (a step per position), the image width
            for `(C, H, W)` images (a step per row).
        length: the default sequence length (`L` or `H`), for `default_input_shape`.
        reading: how images are read (`dynamicnets.models.temporal.sequence`): `"rows"`
            (`H` steps of `C * row_width` features) or `"pixels"` (`H * row_width` steps of
            `C` features, raster order). Signals are read `"rows"` (a step per position).

    Shapes:
        `(B, C, L)` or `(B, C, H, row_width)` -> `DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)` = `T x 8 hidden (features + hidden) + head` (`T` steps: `L`, `H` or `H * row_width`).

    Classifier API (`dynamicnets.models.ClassifierApi`): `forward_features(x)` is the last
    hidden state `(B, hidden)`, `num_features = hidden`, the classifier is `head`.
    """

    head_path = "head"
    classifier_paths = ("head",)
    _name = "lstm_classifier"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                 length: int = 40, reading: str = "rows", *, device=None, dtype=None) -> None:
        super().__init__()
        require_positive(self._name, num_classes=num_classes, in_chans=in_chans, hidden=hidden, length=length)
        factory = {"device": device, "dtype": dtype}
        self.in_chans, self.row_width, self.reading = in_chans, row_width, reading
        self.cell = self._make_cell(step_features(self._name, in_chans, row_width, reading), hidden, factory)
        self.head = nn.Linear(hidden, num_classes, **factory)
        self.default_input_shape = (in_chans, length) if row_width is None else (in_chans, length, row_width)

    @staticmethod
    def _make_cell(features: int, hidden: int, factory: dict) -> nn.Module:
        return nn.LSTMCell(features, hidden, **factory)

    def _last_hidden(self, steps: Tensor) -> Tensor:
        """`steps (T, B, features)`, each step contiguous -> `h_T (B, hidden)`."""
        h = c = steps.new_zeros(steps.shape[1], self.cell.hidden_size)
        for x_t in steps:
            h, c = self.cell(x_t, (h, c))
        return h

    def step_flops(self) -> int:
        """Per-sample FLOPs of one step of the cell."""
        return lstm_cell_flops(self.cell)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last hidden state: `(B, C, L)` or `(B, C, H, row_width)` -> `(B, hidden)`."""
        seq = as_sequence(self._name, x, self.in_chans, self.row_width, self.reading)
        return self._last_hidden(seq.transpose(0, 1).contiguous())

    def forward(self, x: Tensor) -> DynamicOutput:
        h = self.forward_features(x)
        steps = sequence_steps(tuple(x.shape[1:]), self.reading)  # L, H rows or H * W pixels
        flops = steps * self.step_flops() + linear_flops(self.head)
        return DynamicOutput(logits=self.forward_head(h), flops=constant_flops(flops, x.shape[0], x.device))


@register_model
def lstm_classifier(*, num_classes: int = 10, in_chans: int = 1, hidden: int = 64, row_width: int | None = None,
                    length: int = 40, reading: str = "rows", device=None, dtype=None) -> LSTMClassifier:
    """Static LSTM sequence classifier; see `LSTMClassifier`."""
    return LSTMClassifier(num_classes, in_chans, hidden, row_width, length, reading, device=device, dtype=dtype)
