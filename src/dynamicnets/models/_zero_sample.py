"""One zero sample through a model's eval forward: what cost and structure queries run."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..outputs import DynamicOutput


def zero_sample_output(model: nn.Module, input_shape: tuple[int, ...], **forward_kwargs: Any) -> DynamicOutput:
    """`model(zeros(1, *input_shape), **forward_kwargs)` in eval mode without autograd, on the
    model's device and dtype; the model's train/eval mode is restored afterwards.

    Returns:
        the model's `DynamicOutput` for that one sample (e.g. `.flops (1,)`).
    """
    param = next(model.parameters())
    x = torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x, **forward_kwargs)
    finally:
        model.train(was_training)
