"""Dynamic width: slimmable networks, per-sample width, channel gating, experts, trees.

- `slimmable_resnet`: `SlimmableResNet` (CIFAR and ImageNet layouts, sandwich training);
  `slimmable_resnet50` builds the ImageNet ResNet-50 (not registered: too slow for the
  registry-wide tests on CPU).
- `dsnet`: `DSNet`, a per-sample width gate with grouped compact inference.
- `channel_gated_resnet`: per-sample channel gating (FBS winner-take-all, Gumbel channel
  selection) inside every block of a CIFAR ResNet.
- `moe_resnet`: a CIFAR ResNet whose chosen blocks are mixtures of conv experts.
- routing in trees: `soft_decision_tree` (`SoftDecisionTree`) and `neural_tree`
  (`NeuralTree`, hard-routed: one root-to-leaf path per sample at inference), on the
  shared `binary_tree` routing maths and the `routed_tree` forward (`RoutedTree`).
- `width_cascade`: `WidthCascade`, the widths of one slimmable network run as a
  confidence cascade (narrow first, wider only for the samples it is unsure of).

Importing this package registers `slimmable_resnet_cifar`, `dsnet_resnet_cifar`,
`fbs_resnet_cifar`, `gumbel_channel_resnet_cifar`, `moe_resnet_cifar`,
`soft_decision_tree`, `neural_tree_cnn` and `width_cascade`.
"""
from . import binary_tree, dsnet, neural_tree, routed_tree, slimmable_resnet, soft_decision_tree, width_cascade
from .channel_gated_resnet import ChannelGatedResNet
from .conv_norm_act import SlimmableConvNormAct, make_norm
from .dsnet import DSNet
from .moe_resnet import MoEBasicBlock, MoECifarResNet, moe_resnet_cifar
from .neural_tree import NeuralTree
from .routed_tree import RoutedTree
from .soft_decision_tree import SoftDecisionTree
from .slimmable_resnet import (
    SlimmableBasicBlock,
    SlimmableBottleneck,
    SlimmableResNet,
    slimmable_resnet50,
)
from .width_cascade import WidthCascade, WidthStage

__all__ = [
    "ChannelGatedResNet",
    "NeuralTree",
    "RoutedTree",
    "SoftDecisionTree",
    "MoEBasicBlock",
    "MoECifarResNet",
    "moe_resnet_cifar",
    "binary_tree",
    "neural_tree",
    "routed_tree",
    "soft_decision_tree",
    "DSNet",
    "SlimmableBasicBlock",
    "SlimmableBottleneck",
    "SlimmableConvNormAct",
    "SlimmableResNet",
    "dsnet",
    "make_norm",
    "slimmable_resnet",
    "slimmable_resnet50",
    "WidthCascade",
    "WidthStage",
    "width_cascade",
]
