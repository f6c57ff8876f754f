"""Shared fixtures of the multi-exit tests."""
from __future__ import annotations

import pytest
import torch

from dynamicnets.flops import flop_counter


@pytest.fixture
def costs_by_counter():
    """`costs(model, x) -> list`: for each exit `k` of a `MultiExit` model, the per-sample
    FLOPs `FlopCounterMode` sees when running every segment and exit head up to `k`
    (each segment and head counted once on the batch `x`, then cumulated)."""

    def costs(model, x: torch.Tensor) -> list[float]:
        state, total, cumulative = None, 0, []
        with torch.no_grad():
            for k in range(model.num_exits):
                with flop_counter() as counter:
                    state = model.run_segment(k, state, x)
                    model.exit_logits(k, state)
                total += counter.get_total_flops()
                cumulative.append(total / x.shape[0])
        return cumulative

    return costs
