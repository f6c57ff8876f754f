"""Temporal-wise dynamic networks: recurrent models that skip state updates.

- `lstm_classifier`: the static baseline (an LSTM cell at every step).
- `skip_lstm_classifier`: Skip-RNN (Campos et al. 2018), learned state-update skipping.
- `skip_gru_classifier`: the same Skip-RNN over a GRU cell.
"""
from .lstm_classifier import LSTMClassifier, lstm_classifier
from .skip_lstm import SkipLSTMClassifier, skip_lstm_classifier
from .skip_gru import SkipGRUClassifier, skip_gru_classifier

__all__ = ["LSTMClassifier", "SkipGRUClassifier", "SkipLSTMClassifier", "lstm_classifier", "skip_gru_classifier",
           "skip_lstm_classifier"]
