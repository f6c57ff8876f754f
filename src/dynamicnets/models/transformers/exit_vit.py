"""An early-exit Vision Transformer: exit heads on the class token after chosen blocks.

DeeBERT (Xin et al., ACL 2020) and PABEE (Zhou et al., NeurIPS 2020) put a classifier
after intermediate layers of a transformer and stop as soon as one is confident (or, for
PABEE, as soon as several in a row agree); here the same on images. `ExitViT` is a
`VisionTransformer` with the same parameter names (a static checkpoint loads with
`init_from`, the new exit heads keep their initialisation), plus one exit head after each
block of `exit_after` but the last: `exit_heads.j` = LayerNorm + Linear on the class token.
The final exit *is* the ViT's own `norm` + `head`.

It implements the `MultiExit` protocol (`num_exits`, `run_segment`, `exit_logits`,
`exit_costs`, `needs_input_after`), so `dynamicnets.inference.run_early_exit` runs it
compactly (a sample that exits leaves the token batch; the later blocks run on the others
only) and `dynamicnets.inference.calibrate` chooses thresholds for a FLOPs budget.
`forward(x)` is the training path: every block and every exit on the whole batch.

Costs (per sample, FLOPs as `FlopCounterMode` counts them, fused attention included;
`tests/models/transformers/test_exit_vit.py` recomputes them), 10 classes:

| model                        | exits after blocks | exit costs (cumulative)                       |
|------------------------------|--------------------|-----------------------------------------------|
| `exit_vit_cifar`             | 2, 4, 6            | 39,194,112 / 77,601,792 / 116,009,472         |

Each exit head adds `2 D C` FLOPs (2,560 for `D = 128`, 10 classes) and `D (C + 2) + C`
parameters; the final exit costs what `vit_cifar` costs plus the earlier heads.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ...errors import ConfigError
from ...flops import linear_flops
from ...inference.executor import run_early_exit
from ...inference.policy import ExitPolicy
from ...outputs import DynamicOutput, constant_flops
from .._registry import register_model
from .vit import VisionTransformer


class TokenExitHead(nn.Module):
    """An intermediate exit of a ViT: LayerNorm, then a linear classifier, on the class token.

    Args:
        dim: token width `D`.
        num_classes: `C`.

    Shapes:
        `forward(tokens (B, N, D)) -> (B, C)` from token 0.
    """

    def __init__(self, dim: int, num_classes: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6, device=device, dtype=dtype)
        self.fc = nn.Linear(dim, num_classes, device=device, dtype=dtype)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(self.norm(tokens[:, 0]))

    def flops(self) -> int:
        """Per-sample FLOPs (the linear layer; the norm is free)."""
        return linear_flops(self.fc)


def default_exit_after(depth: int) -> tuple[int, ...]:
    """Every second block, ending at the last: `(1, 3, 5)` for depth 6, `(0, 2, 4)` for 5."""
    return tuple(range((depth - 1) % 2, depth, 2))


def check_exit_after(exit_after: Sequence[int], depth: int) -> tuple[int, ...]:
    """`exit_after` as a tuple of ints, checked: increasing block indices ending at `depth - 1`.

    Raises:
        ConfigError: naming `exit_after` and what was expected.
    """
    if isinstance(exit_after, (str, bytes)) or not isinstance(exit_after, Sequence):
        raise ConfigError(f"ExitViT: exit_after must be a list of block indices, got {exit_after!r}")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in exit_after) or not exit_after:
        raise ConfigError(f"ExitViT: exit_after must be a non-empty list of ints, got {list(exit_after)}")
    blocks = tuple(int(i) for i in exit_after)
    if blocks[0] < 0 or any(b <= a for a, b in zip(blocks, blocks[1:])) or blocks[-1] != depth - 1:
        raise ConfigError(
            f"ExitViT: exit_after must be increasing block indices in 0..{depth - 1} ending at the last "
            f"block {depth - 1} (the final exit is the ViT's own head), got {list(blocks)}"
        )
    return blocks


class ExitViT(VisionTransformer):
    """A `VisionTransformer` with an exit after each block of `exit_after`.

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
            mlp_ratio, qkv_bias: as `VisionTransformer`.
        exit_after: increasing block indices (0-based) after which an exit reads the
            class token; the last must be `depth - 1` (that exit is `norm` + `head`).
            Default: every second block, `default_exit_after(depth)`.

    Attributes:
        exit_heads: `K - 1` `TokenExitHead`s (the intermediate exits, shallowest first).
        exit_after: the block indices, `K` of them.

    Shapes:
        `forward(x (B, C, H, W)) -> DynamicOutput` with `logits (B, num_classes)` of the
        final exit, `exit_logits` (`K` tensors `(B, num_classes)`, shallowest first) and
        `flops (B,)`, the cost of the full pass (`exit_costs(...)[-1]`).
        `run_segment(k, state, x)`: `state` `(n, 1 + N, D)` tokens (None for `k = 0`),
        `x` `(n, C, H, W)` -> `(n, 1 + N, D)`. `exit_logits(k, state) -> (n, num_classes)`.

    Classifier API: `forward_features` / `forward_head` / `get_classifier` are the final
    exit's (`VisionTransformer`'s); `reset_classifier` replaces every exit's linear layer.
    """

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, *, exit_after: Sequence[int] | None = None, device=None,
                 dtype=None) -> None:
        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                         qkv_bias, device=device, dtype=dtype)
        self.exit_after = check_exit_after(default_exit_after(depth) if exit_after is None else exit_after, depth)
        self.exit_heads = nn.ModuleList(
            TokenExitHead(embed_dim, num_classes, device=device, dtype=dtype) for _ in self.exit_after[:-1]
        )

    # ------------------------------------------------------------ MultiExit protocol
    @property
    def num_exits(self) -> int:
        return len(self.exit_after)

    def _segment_blocks(self, k: int) -> range:
        start = 0 if k == 0 else self.exit_after[k - 1] + 1
        return range(start, self.exit_after[k] + 1)

    def needs_input_after(self, k: int) -> bool:
        """False: later blocks read the tokens only, never the image."""
        return False

    def run_segment(self, k: int, state: Tensor | None, x: Tensor | None) -> Tensor:
        """Blocks between exit `k - 1` and exit `k`.

        Args:
            k: exit index.
            state: `(n, 1 + N, D)` tokens after exit `k - 1`; None for `k = 0`.
            x: `(n, C, H, W)` images of the same samples (read for `k = 0` only; may be
                None after).

        Returns:
            `(n, 1 + N, D)` tokens that exit `k` reads.
        """
        if k < 0 or k >= self.num_exits:
            raise ConfigError(f"ExitViT.run_segment: exit index must be in 0..{self.num_exits - 1}, got {k}")
        tokens = self.embed(x) if k == 0 else state
        for i in self._segment_blocks(k):
            tokens = self.blocks[i](tokens)
        return tokens

    def exit_logits(self, k: int, state: Tensor) -> Tensor:
        """`(n, num_classes)` logits of exit `k` from the tokens `(n, 1 + N, D)` of `run_segment(k, ...)`."""
        if k == self.num_exits - 1:
            return self.head(self.norm(state[:, 0]))
        return self.exit_heads[k](state)

    def exit_costs(self, input_shape: Sequence[int]) -> list[int]:
        """Cumulative per-sample FLOPs of a sample that leaves at each exit.

        A sample leaving at exit `k` ran the patch embedding, every block up to
        `exit_after[k]` and the heads of exits `0..k` (it was scored at each one).
        Computed from the layers' sizes (nothing is run).

        Args:
            input_shape: `(C, H, W)`.

        Returns:
            `K` ints, increasing; the last is the cost of `forward`.
        """
        shape = tuple(int(s) for s in input_shape)
        super().flops(shape)  # checks the shape
        tokens = self.tokens_for(shape)
        total = self.patch_embed.flops(shape[1], shape[2])
        costs = []
        for k in range(self.num_exits):
            total += sum(self.blocks[i].flops(tokens) for i in self._segment_blocks(k))
            total += self.head_flops() if k == self.num_exits - 1 else self.exit_heads[k].flops()
            costs.append(total)
        return costs

    def flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Per-sample FLOPs of `forward` (every block and every exit): `exit_costs(...)[-1]`."""
        return self.exit_costs(self.default_input_shape if input_shape is None else input_shape)[-1]

    # ------------------------------------------------------------ forward and classifier API
    def forward(self, x: Tensor, policy: ExitPolicy | None = None) -> DynamicOutput:
        """`(B, C, H, W)` images: every exit's logits, or with `policy` (eval mode) the real
        early exits of `inference.run_early_exit`, samples leaving the batch at their exit."""
        if policy is not None:
            return run_early_exit(self, x, policy).as_output()
        state = None
        all_logits = []
        for k in range(self.num_exits):
            state = self.run_segment(k, state, x)
            all_logits.append(self.exit_logits(k, state))
        flops = self.flops(tuple(x.shape[1:]))
        return DynamicOutput(logits=all_logits[-1], exit_logits=all_logits,
                             flops=constant_flops(flops, x.shape[0], x.device))

    @property
    def classifier_paths(self) -> tuple[str, ...]:
        """Every exit's linear layer, shallowest first; the final one is `head`."""
        return tuple(f"exit_heads.{j}.fc" for j in range(len(self.exit_heads))) + ("head",)


@register_model(family="transformers")
def exit_vit_cifar(*, num_classes: int = 10, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
                   embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                   exit_after: Sequence[int] | None = None, device=None, dtype=None) -> ExitViT:
    """`vit_cifar` with exits after blocks 2, 4 and 6 (DeeBERT-style early exits on images)."""
    return ExitViT(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                   exit_after=exit_after, device=device, dtype=dtype)


@register_model(family="transformers")
def exit_deit_tiny_patch16_224(*, num_classes: int = 1000, in_chans: int = 3,
                               exit_after: Sequence[int] | None = None, device=None,
                               dtype=None) -> ExitViT:
    """DeiT-Tiny with exits after every second block (2, 4, ..., 12), on 224x224 images."""
    return ExitViT(224, 16, in_chans, num_classes, 192, 12, 3, 4.0, exit_after=exit_after, device=device,
                   dtype=dtype)
