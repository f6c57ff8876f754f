"""A tiny two-exit MLP and a synthetic data bundle for fast trainer tests.

Imported by the tests (`from .tiny import ...`) and by `ddp_worker.py` (as `tiny`).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from dynamicnets.data import DataBundle
from dynamicnets.outputs import DynamicOutput, constant_flops


class TinyTwoExitNet(nn.Module):
    """`(B, 1, 4, 4) -> DynamicOutput` with two exits, an aux loss and per-sample FLOPs.

    No batch-norm, so one data-parallel step equals one single-process step on the
    combined batch exactly (up to float summation order).
    """

    def __init__(self, num_classes: int = 3, in_features: int = 16, hidden: int = 12, dropout: float = 0.0) -> None:
        super().__init__()
        self.body1 = nn.Linear(in_features, hidden)
        self.drop = nn.Dropout(dropout)  # draws from torch's global generator while training
        self.exit1 = nn.Linear(hidden, num_classes)
        self.body2 = nn.Linear(hidden, hidden)
        self.exit2 = nn.Linear(hidden, num_classes)
        self.flops_exit1 = 2 * (in_features * hidden + hidden * num_classes)
        self.flops_total = self.flops_exit1 + 2 * (hidden * hidden + hidden * num_classes)

    def forward(self, x: torch.Tensor) -> DynamicOutput:
        h1 = self.drop(torch.relu(self.body1(x.flatten(1))))
        h2 = torch.relu(self.body2(h1))
        e1, e2 = self.exit1(h1), self.exit2(h2)
        return DynamicOutput(
            logits=e2,
            exit_logits=[e1, e2],
            aux_losses={"activation_l2": 1e-3 * h2.pow(2).mean()},
            flops=constant_flops(self.flops_total, x.shape[0], x.device),
        )


def tiny_model(seed: int = 0, hidden: int = 12, dropout: float = 0.0) -> TinyTwoExitNet:
    torch.manual_seed(seed)
    return TinyTwoExitNet(hidden=hidden, dropout=dropout)


def tiny_bundle(n_train: int = 96, n_val: int = 24, seed: int = 0) -> DataBundle:
    """Three Gaussian clusters in 16-D, shaped `(1, 4, 4)`; learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, 16, generator=g) * 2.0

    def split(n: int) -> TensorDataset:
        y = torch.arange(n) % 3
        x = centers[y] + torch.randn(n, 16, generator=g)
        return TensorDataset(x.view(n, 1, 4, 4).float(), y.long())

    return DataBundle(name="tiny", train=split(n_train), val=split(n_val), test=None,
                      num_classes=3, input_shape=(1, 4, 4))


# Dynamic models trained by the data-parallel test (ddp_worker.py), small settings for 1x8x8 digits.
DYNAMIC_MODELS = {  # small settings for 1x8x8 digits
    "skipnet_resnet": {"depth": 14, "width": 4, "rl": True},
    "convnet_aig_resnet": {"depth": 14, "width": 4},
    "blockdrop_resnet": {"depth": 14, "width": 4},
    "act_resnet": {"depth": 14, "width": 4},
    "sact_resnet": {"depth": 14, "width": 4},
    "fbs_resnet_cifar": {"depth": 14},
    "gumbel_channel_resnet_cifar": {"depth": 14},
    "moe_resnet_cifar": {"depth": 14},
    "dsnet_resnet_cifar": {"depth": 20, "base_width": 4},
    "neural_tree_cnn": {},
    "skip_lstm_classifier": {"row_width": 8, "length": 8, "hidden": 16, "update_bias_init": -0.5},
}
