"""Shared by the spatial model tests."""
import torch
from torch import nn


def randomise_norms(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial statistics and affine parameters in every `BatchNorm2d` (drawn from
    `generator`, module order), so that norms that should differ do."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                shape = m.running_mean.shape
                m.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                m.weight.copy_(1 + 0.2 * torch.randn(shape, generator=generator))
                m.bias.copy_(0.2 * torch.randn(shape, generator=generator))
