"""A multi-exit CNN trained on digits for a few seconds, so its exits are confident."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from dynamicnets import create_model
from dynamicnets.data import load_data
from dynamicnets.inference import ExitPolicy


@functools.lru_cache(maxsize=1)
def digits_split():
    """`(x_train, y_train, x_val, y_val)` of digits (pixels in [0, 1], (1, 8, 8))."""
    bundle = load_data("digits", val_size=0.2, seed=0, augment=False)

    def tensors(ds):
        x, y = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(x), torch.stack(y)

    return (*tensors(bundle.train), *tensors(bundle.val))


@functools.lru_cache(maxsize=1)
def trained_exits(epochs: int = 2):
    """`multi_exit_cnn` (width 8, three exits) trained on every exit (Adam, a second or two),
    in eval mode; gradients cleared."""
    x, y, _, _ = digits_split()
    torch.manual_seed(0)
    model = create_model("multi_exit_cnn", width=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], 64):
            idx = order[start:start + 64]
            out = model(x[idx])
            loss = sum(F.cross_entropy(z, y[idx]) for z in out.exit_logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def confident_policy(threshold: float = 0.8, max_flops=None) -> ExitPolicy:
    return ExitPolicy("maxprob", [threshold, threshold], max_flops)
