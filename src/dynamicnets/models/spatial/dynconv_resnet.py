"""DynConv ResNets for CIFAR (Verelst & Tuytelaars, "Dynamic Convolutions: Exploiting
Spatial Sparsity for Faster Inference", CVPR 2020): a plain CIFAR ResNet whose
identity-shortcut blocks each run only where a per-position gate says so.

The module names are the plain `resnet{depth}`'s, so its checkpoint initialises one
(`init_from: runs/.../best.pt` in a training config): fine-tuning then learns the gates
against the FLOPs budget. At inference blocks run sparse; see `SpatialGating`.

DynConv reports ResNet-32 on CIFAR-10 at budget 0.7 with 93.58% top-1 and 55.4 M
multiply-adds (after full training; the plain ResNet-32 has 69.1 M).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._registry import register_model
from ..static.resnet_cifar import CifarResNet
from .spatial_gating import SpatialGating


class DynConvResNet(SpatialGating, CifarResNet):
    """A CIFAR ResNet with DynConv spatial gates on its identity-shortcut blocks.

    Args:
        depth, num_classes, in_chans, width: of the CIFAR ResNet.
        budget: target fraction of the gated blocks' FLOPs, in `(0, 1]`.
        gate_tile: decision granularity (1: per position; `t`: per `t x t` tile).
        gate_kernel: kernel size of the gate convolution.
        tau: Gumbel temperature while training.
        budget_weight: weight of the FLOPs-budget aux loss.
        gate_bias_init: initial gate logit bias (3: ~95% of positions run at first).
        strategy: compact execution, `"positions"`, `"tiles"` or `"dense"`, one for all
            gated blocks or a list with one per block (default: tiles for tile gates,
            positions otherwise).
        sparse_tile: tile side of the tiles strategy (default: `gate_tile` when > 1, else 8).
        gate_noise_end: scale of the Gumbel noise at the end of training, reached linearly
            from 1 (1: constant noise, as DynConv; 0: training decisions end at the
            inference rule).

    Attributes:
        gates: one `SpatialMaskGate` per gated block; gated_index: indices of the gated
        blocks among all blocks (stage-major); branches: their `SparseBranch`es.

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` (see `SpatialGating.forward`).
    """

    def __init__(self, depth: int = 32, num_classes: int = 10, in_chans: int = 3, width: int = 16, *,
                 device=None, dtype=None, **gating) -> None:
        super().__init__(depth, num_classes, in_chans, width, device=device, dtype=dtype)
        self.name = f"dynconv_resnet{depth}"
        self.init_spatial_gating(device=device, dtype=dtype, **gating)

    def spatial_stem(self, x: Tensor) -> Tensor:
        """The stem convolution."""
        return self.stem(x)

    def spatial_blocks(self) -> list:
        """Every residual block, stage by stage."""
        return [block for blocks in self.stages for block in blocks]



def _dynconv(depth: int, **kwargs) -> DynConvResNet:
    return DynConvResNet(depth, **kwargs)


@register_model
def dynconv_resnet20(*, num_classes: int = 10, in_chans: int = 3, width: int = 16, budget: float = 0.5,
                     gate_tile: int = 1, gate_kernel: int = 1, tau: float = 1.0, budget_weight: float = 10.0,
                     gate_bias_init: float = 3.0, strategy: str | Sequence[str] | None = None,
                     sparse_tile: int | None = None,
                     gate_noise_end: float = 1.0, device=None, dtype=None) -> DynConvResNet:
    """DynConv spatially sparse ResNet-20 for CIFAR; see `DynConvResNet`."""
    return _dynconv(20, **{k: v for k, v in locals().items()})


@register_model
def dynconv_resnet32(*, num_classes: int = 10, in_chans: int = 3, width: int = 16, budget: float = 0.5,
                     gate_tile: int = 1, gate_kernel: int = 1, tau: float = 1.0, budget_weight: float = 10.0,
                     gate_bias_init: float = 3.0, strategy: str | Sequence[str] | None = None,
                     sparse_tile: int | None = None,
                     gate_noise_end: float = 1.0, device=None, dtype=None) -> DynConvResNet:
    """DynConv spatially sparse ResNet-32 for CIFAR; see `DynConvResNet`."""
    return _dynconv(32, **{k: v for k, v in locals().items()})
