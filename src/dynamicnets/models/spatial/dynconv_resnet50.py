"""DynConv ResNet-50 in the ImageNet layout (bottleneck blocks, 224x224 inputs): the
model for which pixel-level sparsity pays on a CPU (56x56 maps with 256 channels in the
first stage, where a bottleneck at 25% density runs about 3x faster at gathered
positions; `benchmarks/spatial_mechanism.py`).

Module names are `resnet50`'s, which are torchvision's, so a plain ResNet-50 state dict
loads with `load_state_dict(..., strict=False)` and only the gates start fresh. The 12
identity-shortcut bottlenecks are gated; the first block of each stage (a projection
shortcut) runs densely. See `SpatialGating` for the forward.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .._registry import register_model
from ..static.resnet_imagenet import Bottleneck, ImageNetResNet
from .spatial_gating import SpatialGating


class DynConvImageNetResNet(SpatialGating, ImageNetResNet):
    """An ImageNet-layout ResNet with DynConv spatial gates on its identity-shortcut blocks.

    Args:
        blocks_per_stage: bottlenecks per stage (`(3, 4, 6, 3)` for ResNet-50).
        num_classes, in_chans: of the classifier.
        budget, gate_tile, gate_kernel, tau, budget_weight, gate_bias_init, strategy,
            sparse_tile, gate_noise_end: as for `DynConvResNet`.

    Shapes:
        `forward(x (B, in_chans, H, W)) -> DynamicOutput` (see `SpatialGating.forward`).
    """

    def __init__(self, blocks_per_stage=(3, 4, 6, 3), num_classes: int = 1000, in_chans: int = 3, *,
                 device=None, dtype=None, **gating) -> None:
        super().__init__(Bottleneck, blocks_per_stage, num_classes, in_chans, device=device, dtype=dtype)
        self.name = f"dynconv_{self.name}"
        self.init_spatial_gating(device=device, dtype=dtype, **gating)

    def spatial_stem(self, x: Tensor) -> Tensor:
        """Stem convolution, BN, ReLU and max-pool."""
        return self.forward_stem(x)

    def spatial_blocks(self) -> list:
        """Every bottleneck, stage by stage."""
        return [block for stage in self.stages for block in stage]



@register_model
def dynconv_resnet50(*, num_classes: int = 1000, in_chans: int = 3, budget: float = 0.5, gate_tile: int = 1,
                     gate_kernel: int = 1, tau: float = 1.0, budget_weight: float = 10.0,
                     gate_bias_init: float = 3.0, strategy: str | Sequence[str] | None = None,
                     sparse_tile: int | None = None,
                     gate_noise_end: float = 1.0, device=None, dtype=None) -> DynConvImageNetResNet:
    """DynConv spatially sparse ResNet-50 (ImageNet layout, 224x224); see `DynConvImageNetResNet`."""
    return DynConvImageNetResNet((3, 4, 6, 3), **{k: v for k, v in locals().items()})
