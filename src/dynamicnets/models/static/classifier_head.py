"""`ClassifierHead`: global average pool over every spatial axis, then a linear layer."""
from __future__ import annotations

from torch import Tensor, nn

from ...flops import linear_flops


class ClassifierHead(nn.Module):
    """Global average pool + `nn.Linear`; works for 1-D and 2-D features, any layout.

    Pooling is a `mean` over the trailing axes, so `channels_last` inputs need no copy.

    Shapes:
        `(B, in_features, *S) -> (B, num_classes)`.
    """

    def __init__(self, in_features: int, num_classes: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x.mean(dim=tuple(range(2, x.ndim))))

    def flops(self) -> int:
        """Per-sample FLOPs (pooling is not counted, as in `FlopCounterMode`)."""
        return linear_flops(self.fc)
