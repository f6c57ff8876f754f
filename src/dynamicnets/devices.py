"""Where a module's computation runs."""
from __future__ import annotations

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """The device of `module`'s first parameter (its first buffer when it has none; CPU when
    it holds neither): where inputs fed to it must live."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
