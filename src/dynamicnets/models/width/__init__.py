"""Dynamic width: slimmable networks (weights sliced per width).

- `slimmable_resnet`: `SlimmableResNet` (CIFAR and ImageNet layouts, sandwich training);
  `slimmable_resnet50` builds the ImageNet ResNet-50 (not registered: too slow for the
  registry-wide tests on CPU).
- `dsnet`: `DSNet`, a per-sample width gate with grouped compact inference.

Importing this package registers `slimmable_resnet_cifar` and `dsnet_resnet_cifar`.
"""
from . import dsnet, slimmable_resnet
from .conv_norm_act import SlimmableConvNormAct, make_norm
from .dsnet import DSNet
from .slimmable_resnet import (
    SlimmableBasicBlock,
    SlimmableBottleneck,
    SlimmableResNet,
    slimmable_resnet50,
)

__all__ = [
    "DSNet",
    "SlimmableBasicBlock",
    "SlimmableBottleneck",
    "SlimmableConvNormAct",
    "SlimmableResNet",
    "dsnet",
    "make_norm",
    "slimmable_resnet",
    "slimmable_resnet50",
]
