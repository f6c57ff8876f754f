"""Static baselines (no dynamic decisions), the reference every dynamic model is compared to.

Conventions every model of the library follows (the model tests check them):

- `forward(x)` returns `DynamicOutput` whose `flops` is the `(B,)` float64 per-sample
  cost, counted like `torch.utils.flop_counter.FlopCounterMode`.
- `flops(input_shape) -> int`: analytic per-sample FLOPs on a `(C, *spatial)` input.
- `default_input_shape`: the canonical per-sample input shape as a tuple (e.g.
  `(3, 32, 32)` for the CIFAR ResNets, `(1, 8, 8)` for `small_cnn`, `(1, 40)` for the
  MNIST-1D models), so tools and tests can build an example input for any model.

Importing this package registers the CIFAR `resnet20/32/56/110`, the ImageNet
`resnet18/34/50`, `small_cnn`, `mnist1d_mlp` and `mnist1d_cnn`.
"""
from . import mnist1d, resnet_cifar, resnet_imagenet, small_cnn
from .classifier_head import ClassifierHead
from .conv_norm_act import ConvNormAct
from .mnist1d import Mnist1dCNN, Mnist1dMLP
from .resnet_cifar import BasicBlock, CifarResNet
from .resnet_imagenet import Bottleneck, ImageNetBasicBlock, ImageNetResNet
from .small_cnn import SmallCNN

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CifarResNet",
    "ClassifierHead",
    "ConvNormAct",
    "ImageNetBasicBlock",
    "ImageNetResNet",
    "Mnist1dCNN",
    "Mnist1dMLP",
    "SmallCNN",
    "mnist1d",
    "resnet_cifar",
    "resnet_imagenet",
    "small_cnn",
]
