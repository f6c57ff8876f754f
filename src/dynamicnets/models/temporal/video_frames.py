"""Video classifiers that read frames one at a time: a static baseline and FrameExit.

Both run a small CNN (`FrameEncoder`) on a frame, feed its features to a GRU cell, and
classify the GRU's hidden state with a linear head.

- `video_gru_classifier`: the static baseline. It reads every frame (the CNN runs on the
  `B * T` frames in calls of about 256 frames, then the GRU steps through them) and
  classifies once.
- `frame_exit_classifier`: frame-level early exit in the manner of FrameExit (Ghodrati,
  Bejnordi, Habibian, "FrameExit: Conditional Early Exiting for Efficient Video
  Recognition", CVPR 2021). Frames are read in a fixed order (`order="sequential"`, or
  `"spread"`: first, last, middle, then the midpoints in between, FrameExit's
  coarse-to-fine order); after each frame the head classifies the hidden state and an
  `ExitPolicy` (a confidence criterion and one threshold per frame, calibrated to a
  FLOPs budget by `dynamicnets.inference.calibrate_thresholds`) decides whether the sample
  stops. Training is the multi-exit loss over the `T` heads (the `Trainer`'s default):
  every prefix of frames learns to classify, so one trained model serves every budget.

  FrameExit's own gate is a small learned network trained on pseudo-labels; here the
  stopping rule is the library's explicit, calibratable confidence policy instead (one
  model, any budget, chosen after training). AdaFrame's alternative (Wu et al. 2019, a
  REINFORCE policy choosing which frame comes next) needs a cheap look at every frame to
  choose from; the mechanism below takes any per-sample frame order as a decision
  (`frames=`), so such a policy can drive it.

Execution (`frame_exit_classifier`):

- `masked` (training): every sample reads all `S` frames; the logits of every step are
  returned in `exit_logits`; the decisions (a policy's, or `stop=` given) pick each
  sample's logits. Cost reported: all `S` steps and heads.
- `compact` (inference): only the samples still watching take part in a step; each reads
  its own next frame (`x[rows, :, frames[rows, s]]`, gathered and batched across samples),
  runs the CNN and the GRU cell, and the head where the policy may stop it; samples that
  stop leave the batch. Same decisions and logits as `masked` (allclose).

Per-sample FLOPs (counted like `FlopCounterMode`: convolutions, the GRU's two products,
the head's product; activations, pooling and the softmax of the criterion free):
`frames read x (CNN + GRU) + heads run x head`, where a policy runs the head after every
frame at which a sample may stop, a forced `stop` runs it once, and the full read (no policy,
no `stop`: every frame, every head, in either execution) runs it after every frame.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...compact import assemble_rows, rows_where
from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...flops import gru_cell_flops, linear_flops
from ...gates.confidence import ExitCriterion
from ...inference.policy import ExitPolicy
from ...outputs import DynamicOutput, constant_flops
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import require_positive
from .frame_encoder import FrameEncoder

ORDERS = ("sequential", "spread")
FRAMES_PER_CALL = 256
"""About how many frames one call of the frame CNN takes when every frame is read."""


def frame_order(frames: int, order: str) -> list[int]:
    """The order in which `frames` frames are read.

    Args:
        frames: number of frames `T >= 1`.
        order: `"sequential"` (0, 1, ..., T-1) or `"spread"` (0, T-1, then the midpoint of
            every gap, widest gaps first: coarse to fine).

    Returns:
        a permutation of `range(frames)`.
    """
    if order not in ORDERS:
        raise ConfigError(f"key 'order': expected one of {', '.join(ORDERS)}, got {order!r}")
    if order == "sequential" or frames <= 2:
        return list(range(frames))
    seen, gaps = [0, frames - 1], [(0, frames - 1)]
    while gaps:
        wider = []
        for a, b in gaps:
            if b - a > 1:
                m = (a + b) // 2
                seen.append(m)
                wider += [(a, m), (m, b)]
        gaps = wider
    return seen


class VideoGRUClassifier(ClassifierApi, nn.Module):
    """Static video classifier: `FrameEncoder` on every frame, a GRU cell over the frames,
    a linear head on the last hidden state.

    Args:
        num_classes: classifier outputs.
        in_chans: channels of a frame.
        frames: frames per video `T` (the input must have exactly these).
        size: frame side, for `default_input_shape` only (any `H, W` runs).
        hidden: GRU hidden size.
        widths: channels of the encoder's stride-2 convolutions.

    Shapes:
        `(B, C, T, H, W) -> DynamicOutput` with `logits (B, num_classes)`, `flops (B,)` =
        `T x (CNN + GRU) + head`.

    Classifier API: `forward_features(x)` is the last hidden state `(B, hidden)`,
    `num_features = hidden`, the classifier is `head`.
    """

    head_path = "head"
    classifier_paths = ("head",)
    _name = "video_gru_classifier"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, frames: int = 16, size: int = 48,
                 hidden: int = 64, widths: Sequence[int] = (16, 32, 64), *, device=None, dtype=None) -> None:
        super().__init__()
        require_positive(self._name, num_classes=num_classes, in_chans=in_chans, frames=frames, size=size,
                         hidden=hidden)
        factory = {"device": device, "dtype": dtype}
        self.in_chans, self.frames = in_chans, frames
        self.encoder = FrameEncoder(in_chans, widths, **factory)
        self.cell = nn.GRUCell(self.encoder.features, hidden, **factory)
        self.head = nn.Linear(hidden, num_classes, **factory)
        self.default_input_shape = (in_chans, frames, size, size)

    def frame_flops(self, input_shape: Sequence[int]) -> int:
        """Per-sample FLOPs of reading one frame (CNN + GRU step) of a `(C, T, H, W)` video."""
        return self.encoder.flops(int(input_shape[-2]), int(input_shape[-1])) + gru_cell_flops(self.cell)

    def full_flops(self, input_shape: Sequence[int]) -> float:
        """Per-sample FLOPs with every frame read and one head: `T x frame + head`."""
        return float(self.frames * self.frame_flops(input_shape) + linear_flops(self.head))

    def _check_video(self, x: Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_chans or min(x.shape[3:]) < 1:
            raise ConfigError(f"model {self._name!r}: input x must be (B, C={self.in_chans}, T, H, W) videos, "
                              f"got {tuple(x.shape)}")
        if x.shape[2] != self.frames:
            raise ConfigError(f"model {self._name!r}: input x has {x.shape[2]} frames, the model reads "
                              f"frames={self.frames} (model argument 'frames'); give videos of {self.frames} frames")

    def _encode(self, video: Tensor) -> Tensor:
        """`(B, S, C, H, W) -> (B, S, features)`: the CNN on every frame, in calls of about
        `FRAMES_PER_CALL` frames (all `S` frames of a small batch at once; one step of a
        large batch at a time: on a CPU one call over thousands of frames is memory-bound
        and slower than several calls whose activations stay in cache)."""
        batch, steps = video.shape[:2]
        per_call = max(1, FRAMES_PER_CALL // batch)
        parts = [video[:, s : s + per_call] for s in range(0, steps, per_call)]
        feats = [self.encoder(p.reshape(batch * p.shape[1], *p.shape[2:])).view(batch, p.shape[1], -1) for p in parts]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last hidden state `(B, hidden)` after every frame."""
        self._check_video(x)
        feats = self._encode(x.transpose(1, 2))
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        for t in range(feats.shape[1]):
            h = self.cell(feats[:, t], h)
        return h

    def forward(self, x: Tensor) -> DynamicOutput:
        """Classify `(B, C, T, H, W)` videos; see the class docstring."""
        logits = self.head(self.forward_features(x))
        return DynamicOutput(logits=logits, flops=constant_flops(self.full_flops(x.shape[1:]), x.shape[0], x.device))


@dataclass
class _Plan:
    """How a forward decides: a forced `stop`, or a criterion with thresholds."""

    stop: Tensor | None  # (B,) int64 frames to read, or None
    criterion: ExitCriterion | None  # None with a forced stop or no policy
    thresholds: list[float]  # S - 1; a sample stops after step k where score >= thresholds[k]
    last: int  # the step after which every sample still watching stops

    def head_runs_at(self, step: int) -> bool:
        """Whether a policy needs the head after `step` (a sample may stop there)."""
        return step == self.last or (step < self.last and not self.thresholds[step] == math.inf)


class FrameExitClassifier(VideoGRUClassifier):
    """FrameExit-style video classifier: frames in a fixed order, a confidence exit after
    each (see the module docstring).

    Args:
        num_classes, in_chans, frames, size, hidden, widths: as for `VideoGRUClassifier`
            (same module names: `encoder`, `cell`, `head`).
        order: `"sequential"` or `"spread"` (`frame_order`).

    Shapes:
        `(B, C, T, H, W) -> DynamicOutput` with `logits (B, num_classes)` (at each sample's
        stop), `exit_logits` (masked: `S` tensors `(B, num_classes)`, one per step; compact:
        `[logits]`), `flops (B,)`, decisions `exit_index (B,)` int64 (step at which the
        sample stopped, `0..S-1`), `frames_read (B,)` float, `update_fraction (B,)` (frames
        read over `T`), `frames (B, S)` int64 (the frame read at each step),
        `compact_flops (B,)` (what compact execution costs for these decisions).

    Multi-exit interface (`dynamicnets.protocols.MultiExit`, so `calibrate`,
    `run_early_exit` and `dynamicnets eval --budget` drive it too): `num_exits = frames`,
    `run_segment(k, h, x)` reads frame `k` of the model's order, `exit_logits(k, h)` is the
    head, `exit_costs(input_shape)` the cumulative per-sample FLOPs of stopping after each
    step with the head run at every step.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    _name = "frame_exit_classifier"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, frames: int = 16, size: int = 48,
                 hidden: int = 64, widths: Sequence[int] = (16, 32, 64), order: str = "sequential", *,
                 device=None, dtype=None) -> None:
        super().__init__(num_classes, in_chans, frames, size, hidden, widths, device=device, dtype=dtype)
        self.order = order
        self.frame_sequence = frame_order(frames, order)
        self.num_exits = frames

    def exit_costs(self, input_shape: Sequence[int]) -> list[int]:
        """Cumulative per-sample FLOPs of stopping after step `k` (`k = 0..T-1`), with the
        head run after every step: `(k + 1) x (CNN + GRU + head)`."""
        step = self.frame_flops(input_shape) + linear_flops(self.head)
        return [(k + 1) * step for k in range(self.frames)]

    def needs_input_after(self, k: int) -> bool:
        """True: every step reads its frame from the input."""
        return True

    def run_segment(self, k: int, state: Tensor | None, x: Tensor) -> Tensor:
        """Read frame `frame_sequence[k]` of `x (n, C, T, H, W)` into the hidden state
        `(n, hidden)` (`None` before the first frame)."""
        if state is None:
            self._check_video(x)
            state = x.new_zeros(x.shape[0], self.cell.hidden_size)
        return self.cell(self.encoder(x[:, :, self.frame_sequence[k]]), state)

    def exit_logits(self, k: int, state: Tensor) -> Tensor:
        """`(n, num_classes)`: the head on the hidden state after step `k`."""
        return self.head(state)

    def forward(self, x: Tensor, *, execution: ExecutionLike = None, policy: ExitPolicy | None = None,
                stop: Tensor | None = None, frames: Tensor | None = None) -> DynamicOutput:
        """Classify videos, each stopping after the frames its decisions allow.

        Args:
            x: `(B, C, T, H, W)` videos (channels, then frames: `nn.Conv3d`'s layout),
                `T = frames` of the model.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: an `ExitPolicy` with `S - 1` thresholds (a score criterion: `maxprob`,
                `entropy`, `margin` or a fitted learned one) and an optional `max_flops` cap.
                Without a policy or `stop`, every sample reads all `S` frames and every
                head runs (the full read, in either execution: what calibration reads).
            stop: optional forced decisions instead of a policy: `(B,)` ints in `[1, S]`,
                the number of frames each sample reads.
            frames: optional `(B, S)` int64 frame indices in `[0, T)`, the frames each
                sample reads, in order (default: the model's `order`, `S = T`).

        Returns:
            `DynamicOutput` (see the class docstring).

        Raises:
            ConfigError: a bad `x`, `frames`, `stop` or `policy`, naming it.
        """
        logits, _, index, heads, exit_logits, ran, frames, plan = self._run(x, execution, policy, stop, frames)
        frame_cost, head_cost = float(self.frame_flops(x.shape[1:])), float(linear_flops(self.head))
        crit_cost = 0.0 if plan.criterion is None else float(plan.criterion.flops_per_sample())
        read = (index + 1).double()
        compact = read * frame_cost + heads.double() * (head_cost + crit_cost)
        return DynamicOutput(
            logits=logits, exit_logits=exit_logits, flops=compact if ran is None else ran,
            decisions={"exit_index": index, "frames_read": read.to(logits.dtype),
                       "update_fraction": (read / self.frames).to(logits.dtype), "frames": frames,
                       "compact_flops": compact},
        )

    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None, policy: ExitPolicy | None = None,
                         stop: Tensor | None = None, frames: Tensor | None = None) -> Tensor:
        """The hidden state `(B, hidden)` each sample is classified from, for the same
        arguments as `forward` (`forward(x).logits == head(forward_features(x))`)."""
        return self._run(x, execution, policy, stop, frames)[1]

    def _run(self, x, execution, policy, stop, frames):
        self._check_video(x)
        given = frames is not None
        frames = self._frame_indices(x, frames)
        plan = self._plan(x, frames.shape[1], policy, stop)
        mode = resolve_execution(execution, self.training, self.execution_modes)
        if mode is Execution.COMPACT and (policy is not None or stop is not None):
            return (*self._compact(x, frames, plan), frames, plan)
        return (*self._masked(x, frames, given, plan), frames, plan)

    # -- decisions ---------------------------------------------------------------------------

    def _frame_indices(self, x: Tensor, frames: Tensor | None) -> Tensor:
        batch = x.shape[0]
        if frames is None:
            return torch.tensor(self.frame_sequence, dtype=torch.int64, device=x.device).expand(batch, -1)
        if not isinstance(frames, Tensor) or frames.dim() != 2 or frames.shape[0] != batch or frames.shape[1] < 1 \
                or frames.dtype not in (torch.int32, torch.int64):
            raise ConfigError(f"model {self._name!r}: argument 'frames' must be a (B={batch}, S >= 1) integer "
                              f"tensor of frame indices, got {getattr(frames, 'shape', frames)!r}")
        if bool(((frames < 0) | (frames >= self.frames)).any()):
            raise ConfigError(f"model {self._name!r}: argument 'frames' holds indices outside [0, {self.frames}) "
                              f"(the video has frames={self.frames})")
        return frames.to(device=x.device, dtype=torch.int64)

    def _plan(self, x: Tensor, steps: int, policy: ExitPolicy | None, stop: Tensor | None) -> _Plan:
        batch = x.shape[0]
        if policy is not None and stop is not None:
            raise ConfigError(f"model {self._name!r}: pass either 'policy' or forced 'stop' decisions, not both")
        if stop is not None:
            if not isinstance(stop, Tensor) or tuple(stop.shape) != (batch,) or stop.is_floating_point():
                raise ConfigError(f"model {self._name!r}: argument 'stop' must be a (B={batch},) integer tensor "
                                  f"(frames each sample reads), got {getattr(stop, 'shape', stop)!r}")
            if bool(((stop < 1) | (stop > steps)).any()):
                raise ConfigError(f"model {self._name!r}: argument 'stop' must be in [1, {steps}] (at least the "
                                  f"first frame, at most the {steps} frames given), got {stop.tolist()}")
            return _Plan(stop.to(device=x.device, dtype=torch.int64), None, [math.inf] * (steps - 1), steps - 1)
        if policy is None:
            return _Plan(None, None, [math.inf] * (steps - 1), steps - 1)
        if not isinstance(policy, ExitPolicy):
            raise ConfigError(f"model {self._name!r}: argument 'policy' must be an ExitPolicy, "
                              f"got {type(policy).__name__}")
        criterion = policy.check(steps)
        if criterion.uses_history:
            raise ConfigError(f"model {self._name!r}: criterion {criterion.name!r} is not supported here; "
                              "use a score criterion (maxprob, entropy, margin or a learned one)")
        step = self.frame_flops(x.shape[1:]) + linear_flops(self.head) + criterion.flops_per_sample()
        last = policy.last_exit([(k + 1) * step for k in range(steps)])  # the cap: stop here at the latest
        return _Plan(None, criterion, [float(t) for t in policy.thresholds], last)

    # -- execution ---------------------------------------------------------------------------

    def _read(self, x: Tensor, frames: Tensor, given: bool) -> Tensor:
        """`(B, S, C, H, W)`: the frames each sample reads, in order (a view for the
        default sequential order)."""
        steps = x.transpose(1, 2)
        if not given and self.order == "sequential":
            return steps  # decided without reading values: no host sync in masked execution
        return steps[torch.arange(x.shape[0], device=x.device)[:, None], frames]

    def _masked(self, x: Tensor, frames: Tensor, given: bool, plan: _Plan):
        batch, steps = frames.shape
        feats = self._encode(self._read(x, frames, given))
        h = x.new_zeros(batch, self.cell.hidden_size)
        hiddens, exit_logits = [], []
        for s in range(steps):
            h = self.cell(feats[:, s], h)
            hiddens.append(h)
            exit_logits.append(self.head(h))
        if plan.stop is not None:
            index = plan.stop - 1
            heads = torch.ones(batch, dtype=torch.int64, device=x.device)
        elif plan.criterion is None:
            index = torch.full((batch,), steps - 1, dtype=torch.int64, device=x.device)
            heads = torch.ones(batch, dtype=torch.int64, device=x.device)
        else:
            index, heads = self._policy_decisions(exit_logits, plan)
        rows = torch.arange(batch, device=x.device)
        logits = torch.stack(exit_logits, dim=1)[rows, index]
        hidden = torch.stack(hiddens, dim=1)[rows, index]
        ran = constant_flops(steps * (self.frame_flops(x.shape[1:]) + linear_flops(self.head)), batch, x.device)
        return logits, hidden, index, heads, exit_logits, ran

    def _policy_decisions(self, exit_logits: list[Tensor], plan: _Plan) -> tuple[Tensor, Tensor]:
        """First step at which the criterion lets a sample stop, and how many heads it ran."""
        batch, device = exit_logits[0].shape[0], exit_logits[0].device
        index = torch.full((batch,), plan.last, dtype=torch.int64, device=device)
        heads = torch.zeros(batch, dtype=torch.int64, device=device)
        watching = torch.ones(batch, dtype=torch.bool, device=device)
        for s in range(plan.last + 1):
            if not plan.head_runs_at(s):
                continue
            heads += watching.long()
            if s < plan.last:
                leave = watching & plan.criterion.should_exit(exit_logits[s], plan.thresholds[s])
                index = torch.where(leave, torch.full_like(index, s), index)
                watching &= ~leave
        return index, heads

    def _compact(self, x: Tensor, frames: Tensor, plan: _Plan):
        batch, steps = frames.shape
        device = x.device
        if batch == 1:
            return self._compact_single(x, frames, plan)
        active = torch.arange(batch, device=device)
        stop = plan.stop
        h = x.new_zeros(batch, self.cell.hidden_size)
        heads = torch.zeros(batch, dtype=torch.int64, device=device)
        done_logits, done_hidden, done_index = [], [], []
        for s in range(plan.last + 1):
            frame = x[active, :, frames[active, s]]  # (n, C, H, W): each sample's own frame
            h = self.cell(self.encoder(frame), h)
            if stop is not None:
                leave = stop == s + 1
            elif plan.criterion is None or not plan.head_runs_at(s):
                leave = None if s < plan.last else torch.ones(active.shape[0], dtype=torch.bool, device=device)
            else:
                logits = self.head(h)
                heads[active] += 1
                leave = torch.ones_like(active, dtype=torch.bool) if s == plan.last \
                    else plan.criterion.should_exit(logits, plan.thresholds[s])
            if leave is None:
                continue
            rows = rows_where(leave)
            if rows.numel() == 0:
                continue
            every = rows.numel() == active.shape[0]
            out_h = h if every else h[rows]
            if stop is not None or plan.criterion is None:
                heads[active[rows]] += 1
                out_logits = self.head(out_h)
            else:
                out_logits = logits if every else logits[rows]
            done_logits.append((active[rows], out_logits))
            done_hidden.append((active[rows], out_h))
            done_index.append((active[rows], torch.full((rows.numel(),), s, dtype=torch.int64, device=device)))
            if every:
                break
            keep = rows_where(~leave)
            active, h = active[keep], h[keep]
            if stop is not None:
                stop = stop[keep]
        logits = assemble_rows(done_logits, batch)
        hidden = assemble_rows(done_hidden, batch)
        index = assemble_rows(done_index, batch)
        return logits, hidden, index, heads, [logits], None


    def _compact_single(self, x: Tensor, frames: Tensor, plan: _Plan):
        """One video: frame indices and decisions as Python numbers, no row bookkeeping (the
        same decisions and logits as the batched path)."""
        order = frames[0].tolist()
        stop = None if plan.stop is None else int(plan.stop[0])
        h = x.new_zeros(1, self.cell.hidden_size)
        heads, logits = 0, None
        for s in range(plan.last + 1):
            h = self.cell(self.encoder(x[:, :, order[s]]), h)
            if stop is not None:
                if s + 1 < stop:
                    continue
            elif plan.criterion is not None and plan.head_runs_at(s):
                logits = self.head(h)
                heads += 1
                if s < plan.last and not bool(plan.criterion.should_exit(logits, plan.thresholds[s])):
                    continue
            elif s < plan.last:
                continue
            if logits is None or stop is not None or plan.criterion is None:
                logits = self.head(h)
                heads += 1
            break
        index = torch.tensor([s], dtype=torch.int64, device=x.device)
        return logits, h, index, torch.tensor([heads], device=x.device), [logits], None


@register_model
def video_gru_classifier(*, num_classes: int = 10, in_chans: int = 1, frames: int = 16, size: int = 48,
                         hidden: int = 64, widths: Sequence[int] = (16, 32, 64), device=None,
                         dtype=None) -> VideoGRUClassifier:
    """Static video classifier (per-frame CNN, GRU over every frame); see `VideoGRUClassifier`."""
    return VideoGRUClassifier(num_classes, in_chans, frames, size, hidden, tuple(widths), device=device, dtype=dtype)


@register_model
def frame_exit_classifier(*, num_classes: int = 10, in_chans: int = 1, frames: int = 16, size: int = 48,
                          hidden: int = 64, widths: Sequence[int] = (16, 32, 64), order: str = "sequential",
                          device=None, dtype=None) -> FrameExitClassifier:
    """FrameExit-style video classifier (confidence exit after each frame); see `FrameExitClassifier`."""
    return FrameExitClassifier(num_classes, in_chans, frames, size, hidden, tuple(widths), order,
                               device=device, dtype=dtype)
