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


def fit_on_locations(model: nn.Module, x: torch.Tensor, y: torch.Tensor, locations, *, train_size: int,
                     steps: int, generator: torch.Generator, batch: int = 32) -> nn.Module:
    """Adam (lr 0.01) on the summed cross-entropy of every exit of a glance-and-focus model
    whose focus patches are given: each step draws `batch` rows of the first `train_size`
    samples, then `locations(rows)` -> `(batch, steps - 1)` location indices. Returns the
    model in eval mode."""
    import torch.nn.functional as F

    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        rows = torch.randint(0, train_size, (batch,), generator=generator)
        out = model(x[rows], locations=locations(rows))
        loss = sum(F.cross_entropy(logits, y[rows]) for logits in out.exit_logits)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()
