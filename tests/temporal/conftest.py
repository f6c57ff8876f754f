"""Shared fixtures of the recurrent tests: scikit-learn digits read row by row."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def digits_rows():
    """Digits split as `load_data("digits", val_size=0.2, seed=0)`: `((x, y), (x_val, y_val))`,
    `x (N, 1, 8, 8)` float (8 steps of an 8-pixel row each) and `y (N,)` int64."""
    from dynamicnets.data import load_data

    bundle = load_data("digits", val_size=0.2, seed=0)

    def stack(split):
        return (torch.stack([split[i][0] for i in range(len(split))]),
                torch.tensor([int(split[i][1]) for i in range(len(split))]))

    return stack(bundle.train), stack(bundle.val)


@pytest.fixture
def fit_digits(digits_rows):
    """`fit(model, steps=300) -> (accuracy, executed_fraction)`: train `model` on digits
    rows (AdamW lr 1e-2, seeded batches of 64, cross-entropy + `out.aux_loss()`, masked
    training), then score the validation split in eval mode (compact): its accuracy and
    the mean of `decisions["executed_fraction"]`."""
    (x, y), (x_val, y_val) = digits_rows

    def fit(model, steps: int = 300) -> tuple[float, float]:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            idx = torch.randint(0, len(x), (64,), generator=g)
            out = model.train()(x[idx])
            loss = torch.nn.functional.cross_entropy(out.logits, y[idx]) + out.aux_loss()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            out = model.eval()(x_val)
        return (float((out.logits.argmax(1) == y_val).float().mean()),
                float(out.decisions["executed_fraction"].mean()))

    return fit
