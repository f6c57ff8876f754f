"""Apply the library's mechanisms to your own `nn.Module`.

- `add_exits`: early exits on the stages of your backbone (`exits`).
"""
from .exits import add_exits, pooled_linear_head

__all__ = ["add_exits", "pooled_linear_head"]
