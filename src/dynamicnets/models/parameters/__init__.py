"""Dynamic parameters: CondConv, DY-Conv, WeightNet and DY-ReLU in CIFAR ResNets and MobileNetV2.

Importing this package registers `resnet20_condconv`, `resnet20_dyconv`,
`resnet20_dyrelu` and `mobilenetv2_cifar`.
"""
from . import mobilenetv2, resnet
from .mobilenetv2 import InvertedResidual, MobileNetV2Cifar
from .resnet import DynamicBasicBlock, DynamicCifarResNet, dynamic_resnet_cifar
from .units import ACTIVATIONS, CONVS, DynamicConvNormAct

__all__ = [
    "ACTIVATIONS",
    "CONVS",
    "DynamicBasicBlock",
    "DynamicCifarResNet",
    "DynamicConvNormAct",
    "InvertedResidual",
    "MobileNetV2Cifar",
    "dynamic_resnet_cifar",
    "mobilenetv2",
    "resnet",
]
