"""A CIFAR ResNet whose block convs are sample-level mixtures of conv experts.

A subclass of `dynamicnets.models.static.CifarResNet` (6n+2 layers, widths `w, 2w, 4w`,
option-B shortcuts) whose chosen blocks are swapped for `MoEBasicBlock`s at construction
(so stem, head and `cost_breakdown` are the static model's). In the chosen blocks (`moe_blocks="last_stage"`: every block of
the last stage; `"all"`: every block) the second 3x3 conv is a `ConvMoE`: a router on the
block's pooled hidden features picks `k` of `E` 3x3 conv experts per image; the BatchNorm
after it is shared by the experts and sees their combined output.

Execution (`forward(x, execution=None)`; None = `"masked"` in training, `"compact"` in
eval): `"compact"` runs each expert on its own images only (sorted dispatch);
`"masked"` runs every expert on every image and mixes with the same (zero-padded)
combine weights, so both give the same output for the same routing.

Per-sample FLOPs (`DynamicOutput.flops`) are what ran: the static layers, every router,
and per MoE layer the image's kept experts (compact) or all `E` experts plus the mix
(masked). `decisions["compact_flops"]` is the compact cost of the same decisions in both
executions.

Figures on 3x32x32, 10 classes, width 16, E = 4, `"last_stage"`
(`tests/width/test_moe_resnet.py` checks them):

| model                      | params    | FLOPs per image, compact (masked)  |
|----------------------------|-----------|------------------------------------|
| resnet20 (static)          |   272,474 | 81,626,368                         |
| moe_resnet_cifar, k = 1    |   605,018 | 81,627,904 (124,193,536)           |
| moe_resnet_cifar, k = 2    |   605,018 | 95,783,680 (124,193,536)           |

Three 64-channel 3x3 convs become 4 experts each (+331,776 weights) and get three 64x4
routers (+768 weights, 512 FLOPs each); with `k = 1` an image costs what `resnet20`
costs plus the routers, each extra expert adds 4,718,592 FLOPs per layer, and the
masked mix 32,768 per layer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...layers.conv_moe import ConvMoE, sample_decisions
from ...execution import Execution, ExecutionLike, resolve_execution
from ...layers.moe import MoEOutput
from ...outputs import DynamicOutput
from .._registry import register_model
from ..static._checks import require_positive
from ..static.conv_norm_act import ConvNormAct
from ..static.resnet_cifar import CifarResNet

MOE_BLOCKS = ("last_stage", "all")


class MoEBasicBlock(nn.Module):
    """`relu(bn2(moe(conv1(x))) + shortcut(x))`: a basic block whose second conv is a
    `ConvMoE` (3x3, `out_chans -> out_chans`, stride 1).

    Args:
        in_chans, out_chans, stride: of the block.
        moe: keyword arguments of `ConvMoE` (`num_experts`, `k`, `router`, ...).

    Shapes:
        `forward(x (B, in_chans, H, W), execution)` -> `(y (B, out_chans, H', W'),
        MoEOutput of the experts)`.
    """

    def __init__(
        self, in_chans: int, out_chans: int, stride: int = 1, *, device=None, dtype=None, **moe
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.conv1 = ConvNormAct(in_chans, out_chans, 3, stride, act=True, **factory)
        self.moe = ConvMoE(out_chans, out_chans, 3, 1, **moe, **factory)
        self.bn2 = nn.BatchNorm2d(out_chans, **factory)
        projection = stride != 1 or in_chans != out_chans
        self.shortcut = (
            ConvNormAct(in_chans, out_chans, 1, stride, act=False, **factory)
            if projection
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, execution: str) -> tuple[Tensor, MoEOutput]:
        routed = self.moe(self.conv1(x), execution)
        return self.act(self.bn2(routed.output) + self.shortcut(x)), routed

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """Per-sample FLOPs every image pays whatever its routing (`conv1` and the
        shortcut; the router and the experts are in the `MoEOutput`) and the output shape."""
        flops, out = self.conv1.flops_and_shape(in_shape)
        if isinstance(self.shortcut, ConvNormAct):
            flops += self.shortcut.flops_and_shape(in_shape)[0]
        return flops, out


class MoECifarResNet(CifarResNet):
    """`CifarResNet` of depth `6n + 2` with `ConvMoE` second convs in the chosen blocks.

    Args:
        depth, num_classes, in_chans, width: as `CifarResNet`.
        moe_blocks: `"last_stage"` or `"all"`.
        num_experts, k, router, capacity_factor, load_balance_weight, z_loss_weight: of
            every `ConvMoE` (see there).
        name: for error messages.

    Attributes:
        stem, stages, head, default_input_shape: as `CifarResNet`; the chosen blocks are
        `MoEBasicBlock`s. `flops(input_shape)` / `cost_breakdown` count what every image
        pays whatever its routing (MoE blocks: `conv1` and the shortcut); `forward` adds
        the routers and experts each image ran. The classifier API is `CifarResNet`'s;
        `forward_features(x, execution=None)` returns the features alone,
        `forward_routed(x, execution)` also every MoE layer's `MoEOutput`.

    Returns (`forward(x (B, in_chans, H, W), execution=None)`):
        `DynamicOutput` with `logits (B, num_classes)`, `flops (B,)` (see module doc),
        `aux_losses` `"load_balance"` / `"router_z"` summed over the `L` MoE layers, and
        `decisions`: `"experts"` `(B, L, E)` bool, `"expert_weights"` `(B, L, E)`,
        `"expert_indices"` `(B, L, k)` (token-choice routers; -1 where capacity dropped),
        `"compact_flops"` `(B,)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 16,
        *,
        moe_blocks: str = "last_stage",
        num_experts: int = 4,
        k: int = 1,
        router: str = "topk",
        capacity_factor: float | None = None,
        load_balance_weight: float = 0.01,
        z_loss_weight: float = 1e-3,
        name: str = "moe_resnet_cifar",
        device=None,
        dtype=None,
    ) -> None:
        require_positive(
            name, depth=depth, num_classes=num_classes, in_chans=in_chans, width=width,
            num_experts=num_experts, k=k,
        )
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ConfigError(
                f"model {name!r}: depth must be 6n + 2 with n >= 1 (8, 14, 20, ...), got {depth}"
            )
        if moe_blocks not in MOE_BLOCKS:
            raise ConfigError(
                f"model {name!r}: moe_blocks must be one of {MOE_BLOCKS}, got {moe_blocks!r}"
            )
        if k > num_experts:
            raise ConfigError(f"model {name!r}: k={k} exceeds num_experts={num_experts}")
        super().__init__(depth, num_classes, in_chans, width, device=device, dtype=dtype)
        self.name = name
        moe = {
            "num_experts": num_experts, "k": k, "router": router,
            "capacity_factor": capacity_factor, "load_balance_weight": load_balance_weight,
            "z_loss_weight": z_loss_weight, "device": device, "dtype": dtype,
        }
        last = len(self.stages) - 1
        for s, blocks in enumerate(self.stages):
            if moe_blocks == "all" or s == last:
                for b, block in enumerate(blocks):
                    conv = block.conv1.conv
                    blocks[b] = MoEBasicBlock(
                        conv.in_channels, conv.out_channels, conv.stride[0], **moe
                    )

    def forward_routed(
        self, x: Tensor, execution: str
    ) -> tuple[Tensor, list[MoEOutput], list[int]]:
        """`(B, C, H, W)` -> `(features (B, 4w, H/4, W/4), MoEOutput per MoE layer,
        compact FLOPs of one expert row per MoE layer)`."""
        x = self.stem(x)
        routed, row_flops = [], []
        for blocks in self.stages:
            for block in blocks:
                if isinstance(block, MoEBasicBlock):
                    x, out = block(x, execution)
                    routed.append(out)
                    row_flops.append(block.moe.experts.flops(1, *x.shape[2:]))
                else:
                    x = block(x)
        return x, routed, row_flops

    def forward_features(self, x: Tensor, execution: ExecutionLike = None) -> Tensor:
        """`(B, C, H, W) -> (B, 4w, H/4, W/4)`, the features of `forward_routed` (execution
        resolved as in `forward`)."""
        return self.forward_routed(x, resolve_execution(execution, self.training))[0]

    def forward(self, x: Tensor, execution: ExecutionLike = None) -> DynamicOutput:
        execution = resolve_execution(execution, self.training)
        fixed = float(self.flops(tuple(x.shape[1:])))
        features, routed, row_flops = self.forward_routed(x, execution)
        flops = fixed + sum(out.token_flops for out in routed)
        per_layer = [sample_decisions(out) for out in routed]
        decisions = {key: torch.stack([d[key] for d in per_layer], 1) for key in per_layer[0]}
        ran = decisions["experts"].sum(dim=2).to(torch.float64)  # (B, L) expert rows
        routers = sum(float(block.moe.router_flops()) for block in self.routed_blocks())
        decisions["compact_flops"] = (
            fixed + routers + ran @ torch.tensor(row_flops, dtype=torch.float64, device=x.device)
        )
        aux: dict[str, Tensor] = {}
        for out in routed:
            for key, value in out.aux_losses.items():
                aux[key] = aux[key] + value if key in aux else value
        return DynamicOutput(
            logits=self.forward_head(features), decisions=decisions, aux_losses=aux, flops=flops
        )

    def routed_blocks(self) -> list[MoEBasicBlock]:
        """The MoE blocks in execution order."""
        return [b for blocks in self.stages for b in blocks if isinstance(b, MoEBasicBlock)]


@register_model
def moe_resnet_cifar(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depth: int = 20,
    width: int = 16,
    moe_blocks: str = "last_stage",
    num_experts: int = 4,
    k: int = 1,
    router: str = "topk",
    capacity_factor: float | None = None,
    load_balance_weight: float = 0.01,
    z_loss_weight: float = 1e-3,
    device=None,
    dtype=None,
) -> MoECifarResNet:
    """ResNet-20 whose last-stage blocks have a 4-expert top-1 conv MoE as second conv;
    see `MoECifarResNet`. 3x32x32, 10 classes: 605,018 params; 81,627,904 FLOPs per image
    (compact), 124,193,536 (masked)."""
    return MoECifarResNet(
        depth, num_classes, in_chans, width, moe_blocks=moe_blocks, num_experts=num_experts,
        k=k, router=router, capacity_factor=capacity_factor,
        load_balance_weight=load_balance_weight, z_loss_weight=z_loss_weight,
        device=device, dtype=dtype,
    )
