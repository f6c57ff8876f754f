"""Dynamic depth: early-exit networks (multi-exit backbones, cascades, MSDNet, RANet).

Importing this package registers `multi_exit_cnn`, `resnet_exits`, `cascade`,
`msdnet_cifar` and `ranet_cifar`.
"""
from . import msdnet, multi_exit_models, ranet
from .exit_head import ExitHead
from .gradient_equilibrium import scale_gradient
from .msdnet import MSDNet
from .multi_exit import MultiExitNetwork
from .multi_exit_models import Cascade, ModelStage
from .ranet import RANet

__all__ = ["Cascade", "ExitHead", "MSDNet", "ModelStage", "MultiExitNetwork", "RANet", "scale_gradient", "msdnet", "multi_exit_models", "ranet"]
