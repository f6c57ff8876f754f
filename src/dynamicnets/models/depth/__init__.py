"""Dynamic depth: early-exit networks (multi-exit backbones, cascades, MSDNet).

Importing this package registers `multi_exit_cnn`, `resnet_exits`, `cascade` and
`msdnet_cifar`.
"""
from . import msdnet, multi_exit_models
from .exit_head import ExitHead
from .gradient_equilibrium import scale_gradient
from .msdnet import MSDNet
from .multi_exit import MultiExitNetwork
from .multi_exit_models import Cascade, ModelStage

__all__ = ["Cascade", "ExitHead", "MSDNet", "ModelStage", "MultiExitNetwork", "scale_gradient", "msdnet", "multi_exit_models"]
