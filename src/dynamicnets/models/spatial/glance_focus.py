"""`glance_focus_cnn`: glance at a small copy of the image, then focus on a few patches.

After GFNet (Wang, Lv, Huang, Song, Huang, Ding, "Glance and Focus: a Dynamic Approach to
Reducing Spatial Redundancy in Image Classification", NeurIPS 2020). Step 0, the
*glance*: a global CNN encoder reads the image down-sampled to `glance_size` (60x60 ->
30x30 by default), a GRU cell turns its pooled features into a state `h_0`, a linear
head gives logits. Step `t >= 1`, a *focus*: a patch policy reads `h_{t-1}` and the glance's
feature map (through a 1x1 conv, `where`: pooled features lose the positions) and picks one
of `grid x grid` candidate locations of a `patch_size` patch (`layers.PatchCrop`); a local
CNN encoder reads that patch at full resolution, the GRU folds its features into `h_t`,
the shared head gives logits again. There are `steps` steps in all (the glance and
`steps - 1` focuses), and every step is an exit.

The model is a multi-exit network whose exits are the steps (the `MultiExit` protocol, as
`early_stop_lstm_classifier`): `run_segment(k)` runs step `k`, `exit_logits` is the head,
so `dynamicnets.inference.run_early_exit` with an `ExitPolicy` (max probability, entropy,
margin, patience), `calibrate` for a mean-FLOPs budget and `dynamicnets eval --budget` work
on it unchanged. A sample that exits leaves the batch: at each later step only the samples
still running are cropped (one batched gather of their patches) and encoded.

Patch policy (REINFORCE, not GFNet's PPO). In training the locations are sampled from
the policy's categorical distribution (greedy argmax at inference). The reward follows
GFNet's, the true class's probability gained step after step, but in log-probability and
weighted like the trainer's multi-exit loss, so that it can ride on that loss without the
label: exit `k` pays `r_k = w_k log p_k(y)` and the action of step `t` is credited with
the return `G_t = sum_{k >= t} r_k` (`w_k`: `exit_weights`, equal by default as in the
trainer). A per-step moving-average baseline (`update_baseline`, which the trainer calls)
reduces the variance. With `forward(x, target=y)` the loss is exact (`reinforce_loss`);
under the trainer (`forward(x)`) the label-dependent part is routed through the
cross-entropy of each exit (`models.skipping.reinforce.loss_reward_surrogate`, exact when
the trainer's `exit_weights` equal the model's). The policy reads a detached `h` and
glance map: its gradient trains the policy and `where` only.

Staged training (GFNet's, optional): `training_stages` names the sub-modules of each stage
for `dynamicnets.training.stages.train_only`: `read` with `locations=random_locations(B)`
(the policy untouched), `policy` with `forward(x, target=y, sample=True)` (the readers
frozen), `fine_tune` with `forward(x, sample=False)` (the greedy policy fixed).
`benchmarks/cluttered_glance.py` trains so.

Given decisions (for tests and oracles): `locations (B, steps - 1)` forces the patch of
every focus step (the policy does not run), `exits (B,)` forces the step each sample
stops at; the compact path (`run_decided_exits` / `run_early_exit`) and the masked one
(every sample every step, then selection) then agree.

Per-sample FLOPs (as `FlopCounterMode` counts: convolutions, linear layers, GRU products;
resizing and cropping are free), with `glance = global encoder + where + GRU`, `focus = policy +
local encoder + GRU` (no policy when `locations` are given) and `head`:

- confidence criteria (`run_early_exit`, `exit_costs`): exit `k` costs
  `glance + k focus + (k + 1) head`;
- given `exits`: `glance + k focus + head`;
- full read (`forward(x)`): `glance + (steps - 1) focus + steps head`.

Defaults (1x60x60, glance 30x30, 28x28 patches on a 7x7 grid, width 16, 4 steps):
the glance costs 9,019,520 FLOPs, each focus 7,654,016, the head 2,560: 31,991,808 for a
full read against 134,786,560 for `small_cnn` (width 32) on the whole canvas.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...flops import flops_and_shape, gru_cell_flops, linear_flops
from ...gates.policy import CategoricalPolicy, MovingAverageBaseline, reinforce_loss
from ...inference.decided_exits import run_decided_exits
from ...inference.executor import run_all_then_select, run_early_exit
from ...inference.policy import ExitPolicy
from ...layers.patch_crop import PatchCrop
from ...layers.resize import resize
from ...outputs import DynamicOutput, constant_flops
from ..skipping.reinforce import loss_reward_surrogate
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import check_input_shape, require_positive
from ..static.conv_norm_act import ConvNormAct

# h (n, hidden), the glance's `where` features (n, where_features) the policy reads, forced locations
# (n, steps - 1) or (n, 0) when the policy decides
State = tuple[Tensor, Tensor, Tensor]
_NAME = "glance_focus_cnn"


def encoder(in_chans: int, width: int, *, pool: bool = True, device=None, dtype=None) -> nn.Sequential:
    """`small_cnn`'s four conv-BN-ReLU layers (`w, 2w, 2w, 4w`, strides `1, 2, 1, 2`), then
    (`pool`) global average pooling and flatten: `(n, in_chans, H, W) -> (n, 4 width)`;
    without `pool` the feature map `(n, 4 width, ceil(H / 4), ceil(W / 4))`."""
    factory = {"device": device, "dtype": dtype}
    layers, chans = [], in_chans
    for out_chans, stride in [(width, 1), (2 * width, 2), (2 * width, 1), (4 * width, 2)]:
        layers.append(ConvNormAct(chans, out_chans, 3, stride, **factory))
        chans = out_chans
    return nn.Sequential(*layers, *((nn.AdaptiveAvgPool2d(1), nn.Flatten()) if pool else ()))


class GlanceFocusCNN(ClassifierApi, nn.Module):
    """Glance, then focus on patches picked by a policy; see the module docstring.

    Args:
        num_classes, in_chans: classes and input channels.
        image_size: side of the square inputs.
        glance_size: side the image is resized to for the glance (`<= image_size`).
        patch_size: side of the focus patches (`<= image_size`).
        grid: candidate locations per side (`grid x grid` in all; `<= image_size - patch_size + 1`).
        steps: glance + focuses, `>= 1` (the number of exits).
        width: first-layer channels of both encoders (features: `4 width`).
        hidden: GRU state size.
        policy_hidden: hidden units of the patch policy's MLP.
        exit_weights: weights of the exits in the reward (normalised; default equal, the
            trainer's default); match the trainer's `exit_weights`.
        baseline_momentum: of the per-step moving-average reward baselines.
        where_chans: channels of the glance's feature map the policy reads (after a 1x1 conv
            `where`; with the state `h` that is the policy's input).

    Shapes:
        `forward(x)` with `x (B, in_chans, image_size, image_size)` -> `DynamicOutput` with
        `logits (B, num_classes)`, `exit_logits` (`steps` tensors `(B, num_classes)` in a
        full read, else `[logits]`), `flops (B,)` and `decisions`: `exit_index (B,)` (the
        step taken; also the number of patches read), `locations (B, steps - 1)` int64 in
        a full read, `compact_flops (B,)` when exits are decided.

    Classifier API: `forward_features(x)` is the GRU state `(B, hidden)` the head reads at
    the last step of a full read; the classifier is `head` (shared by every step).
    """

    name = _NAME
    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "head"
    classifier_paths = ("head",)

    def __init__(self, num_classes: int = 10, in_chans: int = 1, image_size: int = 60, glance_size: int = 30,
                 patch_size: int = 28, grid: int = 7, steps: int = 4, width: int = 16, hidden: int = 128,
                 policy_hidden: int = 64, exit_weights: list[float] | None = None, baseline_momentum: float = 0.9,
                 where_chans: int = 4, *, device=None, dtype=None) -> None:
        super().__init__()
        require_positive(_NAME, num_classes=num_classes, in_chans=in_chans, image_size=image_size,
                         glance_size=glance_size, patch_size=patch_size, grid=grid, steps=steps, width=width,
                         hidden=hidden, policy_hidden=policy_hidden, where_chans=where_chans)
        if glance_size > image_size:
            raise ConfigError(f"model {_NAME!r}: glance_size={glance_size} is larger than the image "
                              f"({image_size}x{image_size}); it must be <= {image_size}")
        factory = {"device": device, "dtype": dtype}
        self.in_chans, self.image_size, self.glance_size, self.steps = in_chans, image_size, glance_size, steps
        self.crop = PatchCrop(image_size, patch_size, grid, device=device)
        self.global_encoder = encoder(in_chans, width, pool=False, **factory)
        # where to look: the policy reads the glance's feature map (pooled features lose the
        # positions), reduced to `where_chans` channels by a 1x1 conv
        _, glance_map = flops_and_shape(self.global_encoder, (in_chans, glance_size, glance_size))
        self.where = nn.Conv2d(4 * width, where_chans, 1, **factory)
        where_features = where_chans * glance_map[1] * glance_map[2]
        self.local_encoder = encoder(in_chans, width, **factory)
        self.cell = nn.GRUCell(4 * width, hidden, **factory)
        self.head = nn.Linear(hidden, num_classes, **factory)
        self.policy = nn.Sequential(nn.Linear(hidden + where_features, policy_hidden, **factory), nn.ReLU(),
                                    nn.Linear(policy_hidden, self.crop.num_locations, **factory))
        self.exit_weights = _exit_weights(exit_weights, steps)
        self.baselines = nn.ModuleList(MovingAverageBaseline(baseline_momentum, device=device)
                                       for _ in range(steps - 1))
        self.default_input_shape = (in_chans, image_size, image_size)
        self._flops_cache: dict[tuple, tuple[int, int, int]] = {}

    # ------------------------------------------------------------ staged training
    #: GFNet's training stages (`dynamicnets.training.stages.train_only` takes these names):
    #: `read` (random locations: the encoders, GRU and head learn to read patches), `policy`
    #: (the readers frozen: the policy and the `where` conv it reads learn where to look) and
    #: `fine_tune` (the learned policy fixed: the local encoder, GRU and head adapt to it)
    training_stages = {"read": ("global_encoder", "local_encoder", "cell", "head"),
                       "policy": ("where", "policy"),
                       "fine_tune": ("local_encoder", "cell", "head")}

    def random_locations(self, batch: int, *, generator: torch.Generator | None = None) -> Tensor:
        """`(batch, steps - 1)` int64 locations drawn uniformly from the grid (GFNet's first
        stage reads random patches), on the model's device; pass as `locations=`."""
        drawn = torch.randint(0, self.crop.num_locations, (batch, self.steps - 1), generator=generator)
        return drawn.to(self.crop.corners.device)

    # ------------------------------------------------------------ multi-exit protocol
    @property
    def num_exits(self) -> int:
        return self.steps

    def needs_input_after(self, k: int) -> bool:
        """True: every focus step crops the input."""
        return True

    def run_segment(self, k: int, state: State | None, x: Tensor) -> State:
        """Step `k`: the glance (`k = 0`) or focus `k` (greedy policy unless the state carries
        forced locations).

        Args:
            k: step index.
            state: what `run_segment(k - 1, ...)` returned (`None` for `k = 0`).
            x: `(n, C, H, W)` images of the samples still running.

        Returns:
            `(h, where, locations)`: the `(n, hidden)` state after step `k`, the glance's
            `(n, where_features)` features the policy reads and the forced `(n, steps - 1)`
            locations (`(n, 0)` when the policy decides).
        """
        if state is None:
            h, where = self._glance(x)
            return h, where, x.new_zeros((x.shape[0], 0), dtype=torch.int64)
        h, where, forced = state
        location = forced[:, k - 1] if forced.shape[1] else self._scores(h, where).argmax(dim=1)
        return self._focus(x, location, h), where, forced

    def exit_logits(self, k: int, state: State) -> Tensor:
        """`(n, num_classes)` logits of step `k` (the shared head on `h`)."""
        return self.head(state[0])

    def exit_costs(self, input_shape: tuple[int, ...]) -> list[int]:
        """Cumulative per-sample FLOPs at each exit under a confidence criterion (the policy
        picks the patches): `glance + k focus + (k + 1) head`."""
        return self._costs(input_shape, policy=True, heads="every")

    def _costs(self, input_shape: tuple[int, ...], *, policy: bool, heads: str) -> list[int]:
        glance, focus, head = self._step_flops(input_shape, policy)
        return [glance + k * focus + (k + 1 if heads == "every" else 1) * head for k in range(self.steps)]

    def _step_flops(self, input_shape: tuple[int, ...], policy: bool = True) -> tuple[int, int, int]:
        """Per-sample `(glance, focus, head)` FLOPs on a `(C, H, W)` input (cached per
        shape and head size: the walk over the encoders costs about a millisecond)."""
        key = (tuple(int(s) for s in input_shape), bool(policy), self.head.in_features, self.head.out_features)
        if key not in self._flops_cache:
            self._flops_cache[key] = self._count_step_flops(input_shape, policy)
        return self._flops_cache[key]

    def _count_step_flops(self, input_shape: tuple[int, ...], policy: bool) -> tuple[int, int, int]:
        shape = check_input_shape(_NAME, input_shape, self.in_chans, spatial_dims=2)
        self._check_size(shape[1:])
        gru = gru_cell_flops(self.cell)
        glance, glance_map = flops_and_shape(self.global_encoder, (shape[0], self.glance_size, self.glance_size))
        glance += flops_and_shape(self.where, glance_map)[0] + gru
        patch = self.crop.patch_size
        focus = flops_and_shape(self.local_encoder, (shape[0], patch, patch))[0] + gru
        if policy:
            focus += flops_and_shape(self.policy, (self.policy[0].in_features,))[0]
        return glance, focus, linear_flops(self.head)

    def read_flops(self, input_shape: tuple[int, ...] | None = None, policy: bool = True) -> float:
        """Per-sample FLOPs of the full read (every step and every head)."""
        glance, focus, head = self._step_flops(input_shape or self.default_input_shape, policy)
        return float(glance + (self.steps - 1) * focus + self.steps * head)

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Cost protocol: the full read's per-sample FLOPs and the logits' shape."""
        return int(self.read_flops(tuple(in_shape))), (self.head.out_features,)

    # ------------------------------------------------------------ steps
    def _glance(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`(n, hidden)` state and `(n, where_features)` policy features of the glance."""
        features = self.global_encoder(resize(x, self.glance_size))
        return self.cell(features.mean(dim=(2, 3))), self.where(features.detach()).flatten(1)

    def _scores(self, h: Tensor, where: Tensor) -> Tensor:
        """`(n, grid**2)` location logits of the policy (reading a detached state)."""
        return self.policy(torch.cat([h.detach(), where], dim=1))

    def _focus(self, x: Tensor, location: Tensor, h: Tensor) -> Tensor:
        return self.cell(self.local_encoder(self.crop(x, location)), h)

    # ------------------------------------------------------------ forward
    def forward(self, x: Tensor, *, execution: ExecutionLike = None, locations: Tensor | None = None,
                exits: Tensor | None = None, policy: ExitPolicy | None = None,
                target: Tensor | None = None, sample: bool | None = None) -> DynamicOutput:
        """Glance and focus, stopping each sample where `exits` or `policy` say.

        Args:
            x: `(B, C, H, W)`.
            execution: `"masked"` / `"compact"` (default: masked in training, compact in
                eval); matters only when samples stop (`exits` or `policy`).
            locations: `(B, steps - 1)` int64 location index (`0..grid**2 - 1`) of every
                focus step; default: the policy decides (sampled in training, greedy in eval).
            exits: `(B,)` int step each sample stops at (given decisions).
            policy: an `ExitPolicy` (confidence criterion, one threshold per step but the
                last; eval mode).
            target: `(B,)` labels: in training, the REINFORCE loss is then exact.
            sample: full read only: whether the policy samples its locations (default: in
                training); `False` in training reads the greedy locations and adds no policy
                loss (GFNet's third stage fine-tunes the readers so, the policy fixed).

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        self._check_input(x)
        if locations is not None:
            locations = self._check_locations(locations, x.shape[0])
        if exits is not None and policy is not None:
            raise ConfigError(f"model {_NAME!r}: give exits or policy, not both")
        if exits is None and policy is None:
            return self._full_read(x, locations, target, self.training if sample is None else bool(sample))
        mode = resolve_execution(execution, self.training)
        runner = _Forced(self, locations) if locations is not None else self
        if policy is not None:
            if not isinstance(policy, ExitPolicy):
                raise ConfigError(f"model {_NAME!r}: policy must be an ExitPolicy, got {type(policy).__name__}")
            costs = self._costs(tuple(x.shape[1:]), policy=locations is None, heads="every")
            if mode is Execution.COMPACT:
                result = run_early_exit(runner, x, policy, costs=costs)
            else:
                result = run_all_then_select(runner, x, policy, costs=costs)
        else:
            exits = self._check_exits(exits, x.shape[0])
            costs = self._costs(tuple(x.shape[1:]), policy=locations is None, heads="once")
            if mode is Execution.COMPACT:
                def leave(k: int, state: State, rows: Tensor | None) -> Tensor:
                    return (exits if rows is None else exits[rows]) == k

                result = run_decided_exits(runner, x, leave, costs)
            else:
                every = self._read_all(x, locations, sample=False)[1]
                batch = torch.arange(x.shape[0], device=x.device)
                logits = torch.stack(every)[exits, batch]
                table = torch.tensor(costs, dtype=torch.float64, device=x.device)
                result = _Result(logits, exits, table[exits])
        flops = result.flops if mode is Execution.COMPACT else constant_flops(
            self.read_flops(tuple(x.shape[1:]), policy=locations is None), x.shape[0], x.device)
        return DynamicOutput(logits=result.logits, flops=flops,
                             decisions={"exit_index": result.exit_index, "compact_flops": result.flops})

    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None, locations: Tensor | None = None,
                         exits: Tensor | None = None, policy: ExitPolicy | None = None,
                         target: Tensor | None = None) -> Tensor:
        """`(B, hidden)`: the GRU state the head reads at each sample's exit (the last step
        without `exits` / `policy`); same arguments as `forward`, whose exits are taken on a
        full read here (equal to those of either execution; `execution` and `target` change
        nothing)."""
        self._check_input(x)
        if locations is not None:
            locations = self._check_locations(locations, x.shape[0])
        if exits is not None and policy is not None:
            raise ConfigError(f"model {_NAME!r}: give exits or policy, not both")
        hiddens = self._read_all(x, locations, sample=self.training)[0]
        if exits is None and policy is None:
            return hiddens[-1]
        if policy is not None:
            exits = run_all_then_select(_Forced(self, locations) if locations is not None else self, x, policy,
                                        costs=self._costs(tuple(x.shape[1:]), policy=locations is None,
                                                          heads="every")).exit_index
        exits = self._check_exits(exits, x.shape[0])
        return torch.stack(hiddens)[exits, torch.arange(x.shape[0], device=x.device)]

    def _read_all(self, x: Tensor, locations: Tensor | None, sample: bool
                  ) -> tuple[list[Tensor], list[Tensor], Tensor, list[Tensor]]:
        """Every step on every sample.

        Returns:
            `(hiddens, logits, chosen, log_probs)`: each step's `(B, hidden)` state and
            `(B, num_classes)` logits, the `(B, steps - 1)` locations read and, when the
            policy sampled, each focus step's `(B,)` log-probability of its location.
        """
        h, where = self._glance(x)
        hiddens, logits, chosen, log_probs = [h], [self.head(h)], [], []
        for k in range(1, self.steps):
            if locations is not None:
                location = locations[:, k - 1]
            else:
                scores = self._scores(h, where)
                if sample:
                    location, log_prob = CategoricalPolicy().sample(scores)
                    log_probs.append(log_prob)
                else:
                    location = scores.argmax(dim=1)
            chosen.append(location)
            h = self._focus(x, location, h)
            hiddens.append(h)
            logits.append(self.head(h))
        chosen_t = torch.stack(chosen, dim=1) if chosen else x.new_zeros((x.shape[0], 0), dtype=torch.int64)
        return hiddens, logits, chosen_t, log_probs

    def _full_read(self, x: Tensor, locations: Tensor | None, target: Tensor | None, sample: bool
                   ) -> DynamicOutput:
        sample = sample and locations is None
        _, logits, chosen, log_probs = self._read_all(x, locations, sample)
        batch = x.shape[0]
        aux = {}
        if log_probs:
            logits, aux["policy"] = self._reinforce(logits, log_probs, target)
        last = torch.full((batch,), self.steps - 1, dtype=torch.int64, device=x.device)
        flops = constant_flops(self.read_flops(tuple(x.shape[1:]), policy=locations is None), batch, x.device)
        return DynamicOutput(logits=logits[-1], exit_logits=logits, flops=flops, aux_losses=aux,
                             decisions={"exit_index": last, "locations": chosen})

    # ------------------------------------------------------------ REINFORCE
    def _reinforce(self, logits: list[Tensor], log_probs: list[Tensor], target: Tensor | None
                   ) -> tuple[list[Tensor], Tensor]:
        """Policy loss for the sampled locations (module docstring); returns the exit logits
        (with the label-free surrogate when `target` is None) and the aux loss (value 0)."""
        baselines = torch.stack([b() for b in self.baselines]).to(log_probs[0].dtype)  # (steps - 1,)
        stacked = torch.stack(log_probs, dim=1)  # (B, steps - 1)
        if target is not None:
            returns = self.returns(logits, target)
            aux = sum(reinforce_loss(stacked[:, t], returns[:, t], baselines[t]) for t in range(self.steps - 1))
            return logits, aux - aux.detach()
        out, aux = [logits[0]], (stacked * baselines).sum(dim=1).mean()
        cumulative = torch.cumsum(stacked, dim=1)  # s_k = sum_{t <= k} log pi(a_t), k = 1..steps-1
        no_extra = torch.zeros_like(cumulative[:, 0])
        for k in range(1, self.steps):
            # the trainer weighs exit k's cross-entropy by w_k: so must its label-free rest
            lg, rest = loss_reward_surrogate(logits[k], cumulative[:, k - 1], no_extra)
            out.append(lg)
            aux = aux + self.exit_weights[k] * rest
        return out, aux - aux.detach()

    def returns(self, logits: list[Tensor], target: Tensor) -> Tensor:
        """`(B, steps - 1)` return `G_t = sum_{k >= t} w_k log p_k(y)` of each focus step `t`.

        Args:
            logits: the full read's `steps` exit logits `(B, num_classes)`.
            target: `(B,)` labels.
        """
        with torch.no_grad():
            log_p = torch.stack([torch.log_softmax(lg.float(), dim=1).gather(1, target.view(-1, 1)).squeeze(1)
                                 for lg in logits[1:]], dim=1)  # (B, steps - 1)
            weights = torch.tensor(self.exit_weights[1:], dtype=log_p.dtype, device=log_p.device)
            rewards = log_p * weights
            return rewards.flip(1).cumsum(1).flip(1)

    def update_baseline(self, out: DynamicOutput, target: Tensor) -> Tensor | None:
        """Fold the batch's returns into the per-step baselines (call after the optimizer
        step, with a training full read's output); returns the new `(steps - 1,)` baselines."""
        if len(out.exit_logits) != self.steps or self.steps < 2:
            return None
        returns = self.returns([lg.detach() for lg in out.exit_logits], target)
        return torch.stack([b.update(returns[:, t]) for t, b in enumerate(self.baselines)])

    # ------------------------------------------------------------ checks
    def _check_size(self, spatial: tuple[int, ...]) -> None:
        if tuple(spatial) != (self.image_size, self.image_size):
            raise ConfigError(f"model {_NAME!r}: built for {self.image_size}x{self.image_size} images "
                              f"(image_size), got {tuple(spatial)}")

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ConfigError(f"model {_NAME!r}: x must be (B, {self.in_chans}, H, W), got {tuple(x.shape)}")
        self._check_size(tuple(x.shape[2:]))

    def _check_locations(self, locations: Tensor, batch: int) -> Tensor:
        want = (batch, self.steps - 1)
        if not isinstance(locations, Tensor) or tuple(locations.shape) != want or locations.is_floating_point():
            raise ConfigError(f"model {_NAME!r}: locations must be a {want} integer tensor (one location index "
                              f"per focus step), got {getattr(locations, 'shape', locations)!r}")
        count = self.crop.num_locations
        if locations.numel() and locations.device.type != "meta" and (
                int(locations.min()) < 0 or int(locations.max()) >= count):
            raise ConfigError(f"model {_NAME!r}: locations must be in 0..{count - 1} (grid {self.crop.grid}x"
                              f"{self.crop.grid}), got values in {int(locations.min())}..{int(locations.max())}")
        return locations.long()

    def _check_exits(self, exits: Tensor, batch: int) -> Tensor:
        if not isinstance(exits, Tensor) or tuple(exits.shape) != (batch,) or exits.is_floating_point():
            raise ConfigError(f"model {_NAME!r}: exits must be a ({batch},) integer tensor of step indices, "
                              f"got {getattr(exits, 'shape', exits)!r}")
        if batch and (int(exits.min()) < 0 or int(exits.max()) >= self.steps):
            raise ConfigError(f"model {_NAME!r}: exits must be step indices in 0..{self.steps - 1}, got values "
                              f"in {int(exits.min())}..{int(exits.max())}")
        return exits.long()


class _Result:
    """Logits, exit index and costs of the masked path with given exits."""

    def __init__(self, logits: Tensor, exit_index: Tensor, flops: Tensor) -> None:
        self.logits, self.exit_index, self.flops = logits, exit_index, flops


class _Forced:
    """The model with given locations, as a multi-exit network for the executors: the
    glance's state carries each sample's locations, which the executors gather with it."""

    def __init__(self, model: GlanceFocusCNN, locations: Tensor) -> None:
        self.model, self.locations, self.num_exits = model, locations, model.num_exits
        self.training = model.training

    def run_segment(self, k: int, state: State | None, x: Tensor) -> State:
        if state is None:
            h, where, _ = self.model.run_segment(0, None, x)
            return h, where, self.locations
        return self.model.run_segment(k, state, x)

    def exit_logits(self, k: int, state: State) -> Tensor:
        return self.model.exit_logits(k, state)

    def exit_costs(self, input_shape: tuple[int, ...]) -> list[int]:
        return self.model._costs(input_shape, policy=False, heads="every")

    def needs_input_after(self, k: int) -> bool:
        return True

    def __call__(self, x: Tensor) -> DynamicOutput:
        return self.model(x, locations=self.locations)


def _exit_weights(weights, steps: int) -> list[float]:
    if weights is None:
        return [1.0 / steps] * steps
    values = list(weights) if isinstance(weights, (list, tuple)) else []
    if len(values) != steps or not all(isinstance(w, (int, float)) and w >= 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"model {_NAME!r}: exit_weights must be {steps} numbers >= 0 (one per step) with a "
                          f"positive sum, got {weights!r}")
    total = float(sum(values))
    return [float(w) / total for w in values]


@register_model
def glance_focus_cnn(*, num_classes: int = 10, in_chans: int = 1, image_size: int = 60, glance_size: int = 30,
                     patch_size: int = 28, grid: int = 7, steps: int = 4, width: int = 16, hidden: int = 128,
                     policy_hidden: int = 64, exit_weights: list[float] | None = None,
                     baseline_momentum: float = 0.9, where_chans: int = 4, device=None,
                     dtype=None) -> GlanceFocusCNN:
    """Glance-and-focus CNN (GFNet) for cluttered MNIST; see `GlanceFocusCNN`."""
    return GlanceFocusCNN(num_classes, in_chans, image_size, glance_size, patch_size, grid, steps, width, hidden,
                          policy_hidden, exit_weights, baseline_momentum, where_chans, device=device, dtype=dtype)
