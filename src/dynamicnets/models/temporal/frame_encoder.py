"""`FrameEncoder`: the small per-frame CNN of the video classifiers (`video_frames`).

Stride-2 3x3 convolutions, each with batch norm and ReLU, then a global max pool over the
positions, so one frame `(C, H, W)` becomes one feature vector. Compact execution runs in
eval mode, where batch norm uses its running statistics: a frame's features then never
depend on which other frames or samples share its batch.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...flops import conv2d_flops


class FrameEncoder(nn.Module):
    """Per-frame CNN: `len(widths)` stride-2 3x3 convolutions + batch norm + ReLU, then a
    global max pool.

    Args:
        in_chans: channels of a frame.
        widths: output channels of each convolution (at least one).

    Shapes:
        `(n, in_chans, H, W) -> (n, widths[-1])`.
    """

    def __init__(self, in_chans: int, widths: Sequence[int], *, device=None, dtype=None) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
            raise ConfigError(f"FrameEncoder: widths must be a non-empty list of ints >= 1, got {list(widths)!r}")
        chans = (in_chans,) + widths
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False, device=device, dtype=dtype)
            for a, b in zip(chans, chans[1:])
        )
        self.norms = nn.ModuleList(nn.BatchNorm2d(b, device=device, dtype=dtype) for b in widths)
        self.features = widths[-1]

    def forward(self, frames: Tensor) -> Tensor:
        """`(n, C, H, W) -> (n, features)`."""
        h = frames
        for conv, norm in zip(self.convs, self.norms):
            h = torch.relu(norm(conv(h)))
        return h.amax(dim=(2, 3))

    def flops(self, height: int, width: int) -> int:
        """Per-frame FLOPs on an `(in_chans, height, width)` frame (the convolutions)."""
        total = 0
        for conv in self.convs:
            cost, height, width = conv2d_flops(conv, height, width)
            total += cost
        return total
