"""Gate networks: small modules that read features (or the input) and output gate logits.

They only *score*; turning logits into decisions (sigmoid, Gumbel, Bernoulli sampling,
thresholds) is the job of `dynamicnets.gates` and of the models. Each network reports its
per-sample FLOPs, counted like `FlopCounterMode` (pooling and activations are free).

The per-block gates also make *scorers* for compact inference: plain functions that
compute `forward`'s logits op for op (so bit for bit) from the pooled block input, with
the parameter tensors looked up once when the scorer is made (once per forward) instead
of through submodule calls at every block. At batch 1 a block's convolutions take a few
hundred microseconds, and the module calls, attribute look-ups, squeezes and decision ops
around each gate had eaten much of what skipping the block saved. Scorers run no module
hooks; the masked path (training, calibration) calls the modules.

- `PooledLinearGate`: global average pool + linear, one logit (SkipNet's feed-forward gate
  reduced to its pooled 1x1 convolution).
- `PooledMLPGate`: pool -> linear -> ReLU -> linear (ConvNet-AIG's gate).
- `RecurrentGate`: one LSTM shared by every gated block (SkipNet's recurrent gate), with a
  per-stage projection of the pooled features to the LSTM input.
- `PolicyNetwork`: a tiny CNN on a downsampled input that scores every block at once
  (BlockDrop's policy network).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..flops import linear_flops, lstm_cell_flops


# pooled block input (B, C) -> gate logits (B, 1)
Scorer = Callable[[Tensor], Tensor]


def global_pool(x: Tensor, count: Tensor | None = None) -> Tensor:
    """`(B, C, *S) -> (B, C)` mean over the spatial axes (no copy for channels_last).

    `count`: optional, `pool_count(x)` made once for inputs of this shape: the same mean,
    bit for bit, as a sum and an in-place division by `count`, which is what `Tensor.mean`
    does inside on CPU for float32/float64, minus its conversion of the divisor at every
    call.
    """
    dims = tuple(range(2, x.dim()))
    if count is None:
        return x.mean(dim=dims)
    return x.sum(dim=dims).div_(count)


def pool_count(x: Tensor) -> Tensor | None:
    """The divisor of `global_pool` for `(B, C, *S)` inputs: `prod(S)`, a 0-dim tensor in
    `x`'s dtype and device; `None` (plain `mean`) where `mean` computes otherwise and
    sum-then-divide would round differently: float16/bfloat16 (accumulated in float32)
    and other devices than the CPU (CUDA multiplies by the reciprocal)."""
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return None
    return torch.tensor(float(math.prod(x.shape[2:])), dtype=x.dtype, device=x.device)


def _linear_parameters(module: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    """Weight and bias of the `nn.Linear` submodule `name`, read from the parameter dicts.

    `nn.Module` attribute look-up goes through `__getattr__` (about a microsecond each;
    a dozen per gate, 51 gates, every forward); the dicts take a fraction of that. Falls
    back to the attributes when they are not plain parameters (e.g. parametrized).
    """
    layer = module._modules[name]
    params = layer._parameters
    if "weight" in params and "bias" in params:
        return params["weight"], params["bias"]
    return layer.weight, layer.bias


class PooledLinearGate(nn.Module):
    """`logit = w . mean_{h,w}(x) + b`.

    Args:
        in_chans: channels of the features the gate reads.
        bias_init: initial bias (positive: blocks start mostly executed).

    Shapes:
        `(B, in_chans, H, W) -> (B,)` logits.
    """

    def __init__(self, in_chans: int, *, bias_init: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        self.fc = nn.Linear(in_chans, 1, device=device, dtype=dtype)
        nn.init.constant_(self.fc.bias, bias_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(global_pool(x)).squeeze(1)

    def scorer(self) -> Scorer:
        """`forward`'s logits as a function of `global_pool(x)` (see the module docstring).

        Returns:
            `(B, in_chans) -> (B, 1)` logits; make a new one per forward.
        """
        weight, bias = _linear_parameters(self, "fc")
        return lambda pooled: F.linear(pooled, weight, bias)

    def flops(self) -> int:
        """Per-sample FLOPs."""
        return linear_flops(self.fc)


class PooledMLPGate(nn.Module):
    """`logit = fc2(relu(fc1(mean_{h,w}(x))))`, ConvNet-AIG's gate with one log-odds output.

    ConvNet-AIG's two-way softmax over (skip, execute) logits is a sigmoid of their
    difference, so one logit loses nothing.

    Args:
        in_chans: channels of the features the gate reads.
        hidden: width of the hidden layer.
        bias_init: initial bias of the output (positive: blocks start mostly executed).

    Shapes:
        `(B, in_chans, H, W) -> (B,)` logits.
    """

    def __init__(
        self, in_chans: int, hidden: int = 16, *, bias_init: float = 0.0, device=None, dtype=None
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.fc1 = nn.Linear(in_chans, hidden, **factory)
        self.fc2 = nn.Linear(hidden, 1, **factory)
        nn.init.constant_(self.fc2.bias, bias_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(global_pool(x)))).squeeze(1)

    def scorer(self) -> Scorer:
        """`forward`'s logits as a function of `global_pool(x)` (see the module docstring).

        Returns:
            `(B, in_chans) -> (B, 1)` logits; make a new one per forward.
        """
        (w1, b1), (w2, b2) = _linear_parameters(self, "fc1"), _linear_parameters(self, "fc2")
        return lambda pooled: F.linear(F.linear(pooled, w1, b1).relu_(), w2, b2)

    def flops(self) -> int:
        """Per-sample FLOPs."""
        return linear_flops(self.fc1) + linear_flops(self.fc2)


class RecurrentGate(nn.Module):
    """One LSTM cell shared by every gated block, stepping once per block.

    Each block's input is pooled and projected by its stage's linear layer to
    `input_size`, fed to the shared `nn.LSTMCell`, and the new hidden state is scored by a
    shared linear layer. The LSTM state is carried from block to block, so a decision can
    depend on the earlier ones.

    Args:
        stage_chans: channels of the block inputs of each stage, e.g. `(16, 32, 64)`.
        input_size, hidden_size: of the LSTM cell (SkipNet uses a hidden size of 10).
        bias_init: initial bias of the output layer.

    Shapes:
        `forward(x (B, C_stage, H, W), stage, state) -> (logits (B,), state)`, `state` a
        pair of `(B, hidden_size)` tensors or `None` for the first step (zeros).
    """

    def __init__(
        self,
        stage_chans: tuple[int, ...],
        input_size: int = 10,
        hidden_size: int = 10,
        *,
        bias_init: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.project = nn.ModuleList(nn.Linear(c, input_size, **factory) for c in stage_chans)
        self.lstm = nn.LSTMCell(input_size, hidden_size, **factory)
        self.out = nn.Linear(hidden_size, 1, **factory)
        nn.init.constant_(self.out.bias, bias_init)

    def forward(
        self, x: Tensor, stage: int, state: tuple[Tensor, Tensor] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        h, c = self.lstm(self.project[stage](global_pool(x)), state)
        return self.out(h).squeeze(1), (h, c)

    def scorers(self, stages: Sequence[int]) -> list[Scorer]:
        """`forward`'s logits for a run of steps, as functions of `global_pool(x)` (see the
        module docstring), the LSTM state carried from one to the next.

        Args:
            stages: the stage of each step, in order.

        Returns:
            One `(B, C_stage) -> (B, 1)` function per step, to be called once
            each, in order, starting from a zero state; make new ones per forward.
        """
        project = [(layer.weight, layer.bias) for layer in self.project]
        lstm = self.lstm
        weights = (lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh)
        out_weight, out_bias = self.out.weight, self.out.bias
        state: list = [None]

        def step(pooled: Tensor, stage: int) -> Tensor:
            features = F.linear(pooled, *project[stage])
            if state[0] is None:
                zeros = features.new_zeros(features.shape[0], lstm.hidden_size)
                state[0] = (zeros, zeros)
            state[0] = torch.lstm_cell(features, state[0], *weights)
            return F.linear(state[0][0], out_weight, out_bias)

        return [lambda pooled, stage=stage: step(pooled, stage) for stage in stages]

    def flops(self, stage: int) -> int:
        """Per-sample FLOPs of one step at a block of `stage`."""
        return linear_flops(self.project[stage]) + lstm_cell_flops(self.lstm) + linear_flops(self.out)


class PolicyNetwork(nn.Module):
    """A small CNN that sees a downsampled input once and scores every gated block.

    `x -> avg_pool to resolution/H -> conv3x3(width) -> conv3x3(2 width, stride 2) ->
    conv3x3(4 width, stride 2) -> global pool -> linear(num_actions)`, each conv with
    BatchNorm and ReLU (BlockDrop uses a ResNet-8/10 here; this is the same idea, smaller).

    Args:
        in_chans: input channels.
        num_actions: logits produced (one per gated block).
        resolution: the input is average-pooled by `max(1, H // resolution)` first (32x32
            CIFAR images are seen at 16x16 by default).
        width: channels of the first conv.
        bias_init: initial bias of the output layer (positive: keep most blocks at first).

    Shapes:
        `(B, in_chans, H, W) -> (B, num_actions)` logits.
    """

    def __init__(
        self,
        in_chans: int,
        num_actions: int,
        *,
        resolution: int = 16,
        width: int = 16,
        bias_init: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        from ..models.static.conv_norm_act import ConvNormAct  # models import gates: resolve late

        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.resolution = resolution
        self.features = nn.Sequential(
            ConvNormAct(in_chans, width, 3, 1, **factory),
            ConvNormAct(width, 2 * width, 3, 2, **factory),
            ConvNormAct(2 * width, 4 * width, 3, 2, **factory),
        )
        self.fc = nn.Linear(4 * width, num_actions, **factory)
        nn.init.constant_(self.fc.bias, bias_init)

    def _factor(self, height: int, width: int) -> int:
        return max(1, min(height, width) // self.resolution)

    def forward(self, x: Tensor) -> Tensor:
        factor = self._factor(x.shape[-2], x.shape[-1])
        if factor > 1:
            x = F.avg_pool2d(x, factor, ceil_mode=True)
        return self.fc(global_pool(self.features(x)))

    def flops(self, input_shape: tuple[int, ...]) -> int:
        """Per-sample FLOPs on a `(C, H, W)` input (the downsampling is free)."""
        c, height, width = input_shape
        factor = self._factor(height, width)
        shape = (c, -(-height // factor), -(-width // factor))
        total = 0
        for layer in self.features:
            flops, shape = layer.flops_and_shape(shape)
            total += flops
        return total + linear_flops(self.fc)
