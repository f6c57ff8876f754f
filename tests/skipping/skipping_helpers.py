"""Shared builders for the layer-skipping tests (small ResNets on 16x16 inputs)."""
from __future__ import annotations

import torch
from torch import nn

import dynamicnets.models.skipping  # noqa: F401  (registers the models)
from dynamicnets import create_model

SHAPE = (3, 16, 16)
NUM_CLASSES = 5

# config id -> (registered name, constructor kwargs)
GATED = {
    "skipnet_ff": ("skipnet_resnet", {}),
    "skipnet_rnn": ("skipnet_resnet", {"gate": "rnn"}),
    "skipnet_rl": ("skipnet_resnet", {"rl": True}),
    "convnet_aig": ("convnet_aig_resnet", {}),
    "blockdrop": ("blockdrop_resnet", {}),
}
HALTING = {
    "act": ("act_resnet", {}),
    "sact": ("sact_resnet", {}),
}


def build(config: str, depth: int = 14, **kwargs) -> nn.Module:
    name, defaults = {**GATED, **HALTING}[config]
    torch.manual_seed(0)
    return create_model(name, depth=depth, num_classes=NUM_CLASSES, **{**defaults, **kwargs})


def inputs(batch: int, seed: int = 0) -> torch.Tensor:
    """`(batch, *SHAPE)`, with per-sample channel scales so pooled features differ."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(batch, SHAPE[0], 1, 1, generator=g) * 3
    return torch.randn(batch, *SHAPE, generator=g) * scale


def decision_layers(model: nn.Module) -> list[nn.Linear]:
    """The linear layers whose outputs are the model's gate / policy / halting logits."""
    if hasattr(model, "halting"):
        return [unit.fc for units in model.halting for unit in units]
    return model.gate_logit_layers()


@torch.no_grad()
def center_decisions(model: nn.Module, x: torch.Tensor, passes: int = 2, gain: float = 1.0) -> None:
    """Shift (and scale by `gain`) each decision layer so that its logits on `x` have
    median 0 per output: about half the samples take each branch (per-block thresholds)."""
    layers = decision_layers(model)
    for layer in layers:
        layer.weight.mul_(gain)
        layer.bias.mul_(gain)
    for _ in range(passes):
        seen: dict[int, list[torch.Tensor]] = {k: [] for k in range(len(layers))}
        hooks = [
            layer.register_forward_hook(lambda m, i, o, k=k: seen[k].append(o.detach()))
            for k, layer in enumerate(layers)
        ]
        model.eval()(x, execution="masked")
        for hook in hooks:
            hook.remove()
        for k, layer in enumerate(layers):
            # the mean of the two middle values: with an even batch no logit lands on 0
            layer.bias.sub_(torch.quantile(torch.cat(seen[k]), 0.5, dim=0))
