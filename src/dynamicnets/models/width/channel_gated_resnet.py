"""CIFAR ResNets whose blocks run a per-sample subset of their middle channels.

Every basic block `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))` gets a channel
gate reading its input `x`; the gate's `scale (B, C)` multiplies the output channels of
`conv1` (after `bn1` and ReLU), and a channel with scale 0 is computed neither by
`conv1` nor read by `conv2` (`layers.channel_gated_conv`). `conv2`'s output, the
shortcut, the stem and the head are not gated. The backbone is a `CifarResNet`, so the
weights load from a trained `resnet20` (`backbone.` prefix) before gating it.

- `fbs_resnet_cifar`: `FBSGate` (feature boosting and suppression, Gao et al. 2019):
  every sample keeps `k = ceil(density * C)` channels per block, boosted by their
  saliency; aux loss `"saliency_l1"`.
- `gumbel_channel_resnet_cifar`: `GumbelChannelGate`: straight-through Gumbel-sigmoid
  keep decisions in training, `logit > 0` in eval, at least `min_keep` channels per
  block; aux loss `"target_rate"`, ConvNet-AIG's `(keep rate - target_rate)^2`
  averaged over blocks.

Per-sample FLOPs (`DynamicOutput.flops`) are what ran: the stem, the shortcuts, the head,
every gate's linear layer, and per block `ran * (conv1 FLOPs per output channel + conv2
FLOPs per input channel)`, where `ran` is the block's full width under `masked` (the
training default: everything is computed) and under `compact` the batch's `K` (`k` for
FBS; for the Gumbel gate the batch's largest kept count, so a sample keeping fewer
channels is charged the padding it was computed with). `decisions["kept_flops"]` is
the cost of the kept channels alone: what a sample costs run by itself, equal to
`flops` when every sample keeps as many channels.

Figures, depth 20, width 16, 3x32x32, 10 classes (FLOPs = 2 per multiply-add):

| model                       | params  | FLOPs                                          |
|-----------------------------|---------|------------------------------------------------|
| fbs_resnet_cifar (0.5)      | 286,378 | 41,545,472 compact; 81,653,504 masked           |
| gumbel_channel_resnet_cifar | 286,378 | 81,653,504 all kept; 4,423,424 one kept a block |

The static `resnet20` has 272,474 params and 81,626,368 FLOPs; the gates add 13,904
params and 27,136 FLOPs. `tests/width/test_channel_gated_resnet.py` recomputes these.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...layers.channel_gated_conv import channel_cost, channel_gated_convs, executed_channels
from ...gates.channel import FBSGate, GumbelChannelGate
from ...gates.thresholds import GatePolicy
from ...execution import Execution, resolve_execution
from ...outputs import DynamicOutput
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import check_input_shape
from ..static.conv_norm_act import ConvNormAct
from ..static.resnet_cifar import CifarResNet

def check_weight(model: str, key: str, value: float) -> None:
    """Raise `ConfigError` naming `model` and `key` unless `value` is a number `>= 0`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"model {model!r}: {key} must be a number >= 0, got {value!r}")


# gate_factory(in_chans, out_chans, device=, dtype=) -> a channel gate module
GateFactory = Callable[..., nn.Module]


class ChannelGatedResNet(ClassifierApi, nn.Module):
    """A `CifarResNet` with a channel gate on the middle channels of every block.

    Args:
        name: the registered model name (for error messages).
        depth, num_classes, in_chans, width: of the `CifarResNet` backbone (depth 6n + 2).
        gate_factory: `(in_chans, out_chans, device=, dtype=) -> gate`, a module with
            `forward(x, generator=None) -> ChannelDecision`, `aux_loss(decision)` and
            `flops()` (`GumbelChannelGate`, `FBSGate`).
        aux_name: key of the gates' aux loss in `DynamicOutput.aux_losses`.
        aux_weight: its weight, `>= 0` (0: not reported).

    Attributes:
        backbone: the `CifarResNet`; blocks: its `BasicBlock`s in order; gates:
        `nn.ModuleList`, one per block; default_input_shape: `(in_chans, 32, 32)`.

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` with `logits (B, num_classes)`,
        `flops (B,)` and `decisions`: `"channel_keep_rate" (B,)` (kept / gated channels,
        all blocks), `"block_keep_rates" (B, G)`, `"kept_flops" (B,)`; in training
        `aux_losses[aux_name]`.

    Classifier API (`dynamicnets.models.ClassifierApi`): the backbone's head and
    classifier; `forward_features(x, **kwargs)` takes `forward`'s keyword arguments and
    returns the features `(B, 4 width, H/4, W/4)` of that forward (it runs the forward:
    gates and convolutions are interleaved).
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)
    head_path = "backbone.head"
    classifier_paths = ("backbone.head.fc",)

    def __init__(
        self,
        name: str,
        depth: int,
        num_classes: int,
        in_chans: int,
        width: int,
        *,
        gate_factory: GateFactory,
        aux_name: str,
        aux_weight: float,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_weight(name, "aux_weight", aux_weight)
        factory = {"device": device, "dtype": dtype}
        self.name = name
        self.backbone = CifarResNet(depth, num_classes, in_chans, width, **factory)
        self.in_chans = in_chans
        self.default_input_shape = self.backbone.default_input_shape
        self.blocks = [block for stage in self.backbone.stages for block in stage]
        self.gates = nn.ModuleList(
            gate_factory(b.conv1.conv.in_channels, b.conv1.conv.out_channels, **factory)
            for b in self.blocks
        )
        self.aux_name = aux_name
        self.aux_weight = float(aux_weight)

    def cost_parts(self, input_shape: tuple[int, ...]) -> tuple[int, Tensor, Tensor]:
        """Per-sample FLOPs on a `(in_chans, H, W)` input, split by what the gates decide.

        Returns:
            `(fixed, per_channel, channels)`: `fixed` (int) the stem, shortcuts, head and
            gates; `per_channel` `(G,)` float64 the FLOPs of one middle channel of each
            block; `channels` `(G,)` float64 its middle width. The full network costs
            `fixed + per_channel @ channels`.
        """
        c, height, width = check_input_shape(self.name, input_shape, self.in_chans, 2)
        fixed, (_, height, width) = self.backbone.stem.flops_and_shape((c, height, width))
        fixed += self.backbone.head.flops() + sum(g.flops() for g in self.gates)
        per_channel, channels = [], []
        for block in self.blocks:
            conv1, conv2 = block.conv1.conv, block.conv2.conv
            if isinstance(block.shortcut, ConvNormAct):
                fixed += block.shortcut.flops_and_shape((conv1.in_channels, height, width))[0]
            per_channel.append(channel_cost(conv1, conv2, height, width))
            channels.append(conv1.out_channels)
            _, height, width = block.conv1.flops_and_shape((conv1.in_channels, height, width))[1]
        per_channel = torch.tensor(per_channel, dtype=torch.float64)
        return fixed, per_channel, torch.tensor(channels, dtype=torch.float64)

    def _gate_thresholds(self, policy: GatePolicy | None) -> list[dict]:
        """Per gated block, the keyword arguments that carry the policy to its gate."""
        if policy is None:
            return [{}] * len(self.gates)
        if not all(isinstance(g, GumbelChannelGate) for g in self.gates):
            raise ConfigError(f"model {self.name!r}: a gate policy needs threshold gates (Gumbel channel "
                              f"gates); FBS keeps each sample's top-k channels, set by its density")
        cuts = policy.check(len(self.gates), f"model {self.name!r}").thresholds
        return [{"threshold": t} for t in cuts]

    def forward(
        self,
        x: Tensor,
        *,
        execution: str | None = None,
        generator: torch.Generator | None = None,
        policy: GatePolicy | None = None,
    ) -> DynamicOutput:
        """Run the network, each block's mid channels gated per sample.

        Args:
            x: `(B, in_chans, H, W)`.
            execution: `"masked"` / `"compact"`; None: masked in training, compact in
                eval. Compact needs eval mode (its BatchNorms run as per-channel affines).
            generator: optional `torch.Generator` for the gates' training noise.
            policy: Gumbel channel gates only: one eval threshold per gated block, a
                channel runs where its logit is `> threshold` (default 0). FBS keeps a
                fixed top-k (its density), which no threshold changes: refused.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        fixed, per_channel, channels = self.cost_parts(tuple(x.shape[1:]))
        execution = resolve_execution(execution, self.training)
        thresholds = self._gate_thresholds(policy)
        with_aux = self.training and self.aux_weight > 0
        h = self.backbone.stem(x)
        ran, kept, aux = [], [], []
        for block, gate, gate_kwargs in zip(self.blocks, self.gates, thresholds):
            decision = gate(h, generator=generator, **gate_kwargs)
            y = channel_gated_convs(
                h, block.conv1.conv, block.conv1.bn, block.conv2.conv, decision.scale,
                execution, decision.max_kept,
            )
            h = block.act(block.conv2.bn(y) + block.shortcut(h))
            counts = executed_channels(decision.scale, execution, decision.max_kept)
            ran.append(counts[0])
            kept.append(counts[1])
            if with_aux:
                aux.append(gate.aux_loss(decision))
        ran, kept = torch.stack(ran, dim=1), torch.stack(kept, dim=1)  # (B, G) each
        per_channel = per_channel.to(x.device)
        out = DynamicOutput(
            logits=self.backbone.head(h),
            flops=fixed + ran @ per_channel,
            decisions={
                "channel_keep_rate": (kept.sum(dim=1) / channels.sum().to(kept)).to(h.dtype),
                "block_keep_rates": (kept / channels.to(x.device)).to(h.dtype),
                "kept_flops": fixed + kept @ per_channel,
            },
        )
        if with_aux:
            out.aux_losses[self.aux_name] = self.aux_weight * torch.stack(aux).mean()
        return out


@register_model
def fbs_resnet_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 20,
    width: int = 16,
    density: float = 0.5,
    l1_weight: float = 1e-3,
    device=None,
    dtype=None,
) -> ChannelGatedResNet:
    """CIFAR ResNet with feature boosting and suppression (`FBSGate`) in every block.

    Each block keeps `ceil(density * C)` middle channels per sample, boosted by their
    saliency; `l1_weight` weighs the mean saliency (aux loss `"saliency_l1"`). Depth 20,
    3x32x32, 10 classes, density 0.5: 286,378 params; 41,545,472 FLOPs compact
    (81,653,504 masked).
    """

    check_weight("fbs_resnet_cifar", "l1_weight", l1_weight)

    def gate(in_chans: int, out_chans: int, **factory) -> FBSGate:
        return FBSGate(in_chans, out_chans, density=density, **factory)

    return ChannelGatedResNet(
        "fbs_resnet_cifar", depth, num_classes, in_chans, width, gate_factory=gate,
        aux_name="saliency_l1", aux_weight=l1_weight, device=device, dtype=dtype,
    )


@register_model
def gumbel_channel_resnet_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 20,
    width: int = 16,
    target_rate: float = 0.5,
    rate_weight: float = 1.0,
    tau: float = 1.0,
    min_keep: int = 1,
    gate_bias_init: float = 2.0,
    device=None,
    dtype=None,
) -> ChannelGatedResNet:
    """CIFAR ResNet with a Gumbel channel gate (`GumbelChannelGate`) in every block.

    Training pulls the keep rate of every block toward `target_rate` (aux loss
    `"target_rate"`, weight `rate_weight`). Depth 20, 3x32x32, 10 classes: 286,378
    params; 81,653,504 FLOPs with every channel kept, 4,423,424 with one channel
    (`min_keep=1`) kept per block.
    """

    check_weight("gumbel_channel_resnet_cifar", "rate_weight", rate_weight)

    def gate(in_chans: int, out_chans: int, **factory) -> GumbelChannelGate:
        return GumbelChannelGate(
            in_chans, out_chans, tau=tau, min_keep=min_keep, target_rate=target_rate,
            bias_init=gate_bias_init, **factory,
        )

    return ChannelGatedResNet(
        "gumbel_channel_resnet_cifar", depth, num_classes, in_chans, width, gate_factory=gate,
        aux_name="target_rate", aux_weight=rate_weight, device=device, dtype=dtype,
    )
