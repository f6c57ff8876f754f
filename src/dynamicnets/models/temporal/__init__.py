"""Temporal-wise dynamic networks: recurrent models that spend less on less informative steps.

- `lstm_classifier` / `gru_classifier`: the static baselines (a cell at every step).
- `skip_lstm_classifier` / `skip_gru_classifier`: Skip-RNN (Campos et al. 2018), learned
  state-update skipping over an LSTM or a GRU cell.
- `lstm_jump_classifier`: LSTM-Jump (Yu et al. 2017), reads a few tokens, then jumps ahead.
- `skim_lstm_classifier`: Skim-RNN (Seo et al. 2018), a big LSTM cell reads, a small one skims.
- `early_stop_lstm_classifier`: stops reading once confident (confidence criteria or a
  learned halting unit), the early-exit idea over steps.
- `video_gru_classifier` / `frame_exit_classifier`: videos read frame by frame (a CNN per
  frame, a GRU over frames); FrameExit stops once confident.
"""
from .lstm_classifier import LSTMClassifier, lstm_classifier
from .gru_classifier import GRUClassifier, gru_classifier
from .skip_lstm import SkipLSTMClassifier, skip_lstm_classifier
from .skip_gru import SkipGRUClassifier, skip_gru_classifier
from .lstm_jump import LSTMJumpClassifier, lstm_jump_classifier
from .skim_rnn import SkimLSTMClassifier, skim_lstm_classifier
from .early_stop import EarlyStopLSTMClassifier, early_stop_lstm_classifier
from .video_frames import FrameExitClassifier, VideoGRUClassifier, frame_exit_classifier, video_gru_classifier

__all__ = [
    "EarlyStopLSTMClassifier", "FrameExitClassifier", "GRUClassifier", "LSTMClassifier", "LSTMJumpClassifier",
    "SkimLSTMClassifier", "SkipGRUClassifier", "SkipLSTMClassifier", "VideoGRUClassifier",
    "early_stop_lstm_classifier", "frame_exit_classifier", "gru_classifier", "lstm_classifier",
    "lstm_jump_classifier", "skim_lstm_classifier", "skip_gru_classifier", "skip_lstm_classifier",
    "video_gru_classifier",
]
