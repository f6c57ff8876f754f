"""EViT: a ViT that keeps the patch tokens its class token attends to and fuses the rest
(Liang, Ge, Tong, Song, Wang, Xie, "Not All Patches are What You Need: Expediting Vision
Transformers via Token Reorganizations", ICLR 2022).

In every block listed in `reorganize_in`, after the attention and before the MLP, the
patch tokens are ranked by the class token's attention (mean over heads), the best are
kept, and the others are fused into one token, their average weighted by that attention
(`dynamicnets.layers.token_reorganisation`). EViT adds no parameters: a static ViT
checkpoint of the same size loads as it is.

How many tokens stay is a `TokenPolicy` (`forward(x, policy=...)`, default
`TokenPolicy(keep_ratio=keep_ratio)`): with `keep_ratio` every sample keeps
`ceil(ratio * n)` of the `n` tokens entering a reorganisation; with `threshold` a sample
keeps the tokens whose attention is above `threshold` times its most attended token's
(keep scores in `[0, 1]`, at least `min_tokens`), so counts differ per sample. Training
uses the same top-k selection (no gradient through it; the fused token's weights, the
attention, get one).

Executions (the same decisions, the same logits):

- `Execution.MASKED` (training default): tokens stay in place, dropped tokens are masked
  out of the attention of later blocks, each reorganisation appends its fused token as a
  new slot. Static shapes, no host syncs; every block's MLP runs on every slot.
- `Execution.COMPACT` (eval default): a `RaggedTokens` batch, each sample with only its
  class token, kept tokens and fused token; between reorganisations the blocks run with
  the policy's `token_batching` (`run_blocks`). With a keep ratio every sample keeps the
  same count and the batch runs as a dense one.

Registered (3x32x32 and 3x224x224, keep ratio 0.7; FLOPs as `FlopCounterMode` counts them,
per sample; compact = what a keep-ratio forward executes, masked = the static forward):

| model                        | reorganize_in | tokens at the end | compact       | masked        | static ViT    |
|------------------------------|---------------|-------------------|---------------|---------------|---------------|
| `evit_cifar`                 | (1, 3, 5)     | 1 + 24 + 1 of 65  | 80,664,832    | 118,475,520   | 116,004,352   |
| `evit_deit_tiny_patch16_224` | (3, 6, 9)     | 1 + 70 + 1 of 197 | 1,641,759,360 | 2,527,426,176 | 2,507,366,400 |

(EViT reports 0.8 G multiply-adds for DeiT-Tiny at keep rate 0.7: 1.6 GFLOPs here.)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...inference.token_policy import TokenPolicy
from ...layers.ragged_tokens import RaggedTokens
from ...layers.token_batching import executed_flops, run_blocks
from ...layers.token_reorganisation import (
    fusion_flops, fusion_weights, keep_scores, masked_flops, reorganise_masked, reorganise_ragged,
)
from ...outputs import DynamicOutput, constant_flops
from .._registry import register_model
from .._zero_sample import zero_sample_output
from ._token_costs import QuadraticCost
from .token_maps import kept_token_masks
from .vit import VisionTransformer


class EViT(VisionTransformer):
    """A ViT with EViT's token reorganisation (module docstring).

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
        mlp_ratio, qkv_bias: as for `VisionTransformer`.
        keep_ratio: the default policy's keep ratio, in `(0, 1]`, one for every
            reorganisation or one per reorganisation.
        reorganize_in: indices of the blocks that reorganise (distinct, in `[0, depth)`).

    Shapes:
        `forward(x (B, in_chans, H, W), *, execution=None, policy=None) -> DynamicOutput`
        with `logits (B, num_classes)`, `flops (B,)` of what ran, and `decisions`:
        `kept.{s} (B, N)` bool, the original patch tokens still present after the `s`-th
        reorganisation; `tokens (B,)` int64, the tokens the blocks after the last
        reorganisation run on (class and fused tokens included); `compact_flops (B,)`,
        what these decisions cost with every sample running its own tokens only (the
        compact execution with `"pack"` or `"bucket"` batching).
        `forward_features(x, **kwargs) -> (B, L, D)`: the normalised tokens after the
        last block, class token first (compact: each sample's tokens, zero rows after
        them up to the longest sample's count; masked: every slot, dropped ones included).

    Raises:
        ConfigError: a keep ratio outside `(0, 1]` or with one entry per stage of the
            wrong count; `reorganize_in` empty, repeated or outside `[0, depth)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, *, keep_ratio: float | Sequence[float] = 0.7,
                 reorganize_in: Sequence[int] = (1, 3, 5), device=None, dtype=None) -> None:
        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                         qkv_bias, device=device, dtype=dtype)
        stages = tuple(reorganize_in) if isinstance(reorganize_in, Sequence) else None
        if (not stages or len(set(stages)) != len(stages)
                or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < depth for i in stages)):
            raise ConfigError(f"EViT: reorganize_in must be distinct block indices in [0, {depth}), got "
                              f"{reorganize_in!r}")
        self.reorganize_in = tuple(sorted(stages))
        if isinstance(keep_ratio, Sequence) and len(keep_ratio) != len(stages):
            raise ConfigError(f"EViT: keep_ratio has {len(keep_ratio)} entries but reorganize_in has "
                              f"{len(stages)} blocks")
        try:
            TokenPolicy(keep_ratio=keep_ratio)
        except ConfigError:
            raise ConfigError(f"EViT: keep_ratio must be in (0, 1] (one, or one per reorganisation), got "
                              f"{keep_ratio!r}") from None
        self.keep_ratio = tuple(float(r) for r in keep_ratio) if isinstance(keep_ratio, Sequence) else (
            float(keep_ratio))
        self._block_cost = [QuadraticCost(block.flops, f"EViT block {i}") for i, block in enumerate(self.blocks)]
        self._attn_cost = [QuadraticCost(lambda n, b=block: b.attn.flops(n) + b.attn.cls_attention_flops(n),
                                         f"EViT block {i} attention") for i, block in enumerate(self.blocks)]
        self._mlp_cost = [QuadraticCost(block.mlp.flops, f"EViT block {i} MLP") for i, block in enumerate(self.blocks)]

    @property
    def num_stages(self) -> int:
        """How many blocks reorganise."""
        return len(self.reorganize_in)

    @property
    def gated_index(self) -> tuple[int, ...]:
        """The block whose MLP first runs on each stage's kept tokens (`spatial_mask.{s}`)."""
        return tuple(self.reorganize_in)

    def default_policy(self) -> TokenPolicy:
        """`TokenPolicy(keep_ratio=keep_ratio)`, the policy of training and of `policy=None`."""
        return TokenPolicy(keep_ratio=self.keep_ratio)

    def _policy(self, policy: TokenPolicy | None) -> TokenPolicy:
        if policy is None:
            return self.default_policy()
        if not isinstance(policy, TokenPolicy):
            raise ConfigError(f"EViT: policy must be a TokenPolicy, got {type(policy).__name__}")
        for name in ("keep_ratio", "threshold"):
            value = getattr(policy, name)
            if isinstance(value, Sequence) and len(value) != self.num_stages:
                raise ConfigError(f"EViT: policy {name} has {len(value)} entries but the model reorganises in "
                                  f"{self.num_stages} blocks {self.reorganize_in}")
        return policy

    def flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Per-sample FLOPs of the masked (static) forward on a `(C, H, W)` input: every block
        on every slot (one more after each reorganisation), the class-attention rows and
        the fusions."""
        shape = self.default_input_shape if input_shape is None else tuple(int(s) for s in input_shape)
        total = VisionTransformer.flops(self, shape) - sum(block.flops(self.tokens_for(shape)) for block in self.blocks)
        tokens = self.tokens_for(shape)
        for i, block in enumerate(self.blocks):
            if i in self.reorganize_in:
                total += masked_flops(block, tokens)
                tokens += 1
            else:
                total += block.flops(tokens)
        return total

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs of the compact forward keeping every token
        (`TokenPolicy(keep_ratio=1.0)`: every block on all tokens, the class-attention rows
        included), whatever the mode; a zero input in eval would count only what the
        default policy keeps."""
        every = TokenPolicy(keep_ratio=1.0)
        return float(zero_sample_output(self, input_shape, policy=every, execution="compact").flops[0])

    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None,
                         policy: TokenPolicy | None = None) -> Tensor:
        """`(B, in_chans, H, W) -> (B, L, D)` normalised tokens (class docstring), with
        `forward`'s keyword arguments."""
        return self._run(x, execution, policy)[0]

    def forward(self, x: Tensor, *, execution: ExecutionLike = None,
                policy: TokenPolicy | None = None) -> DynamicOutput:
        """Classify, reorganising tokens in the `reorganize_in` blocks.

        Args:
            x: `(B, in_chans, H, W)`.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: which tokens stay (default `TokenPolicy(keep_ratio=keep_ratio)`); its
                `token_batching` runs the compact path.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        features, flops, decisions = self._run(x, execution, policy)
        decisions.update(kept_token_masks(decisions, self.patch_embed.grid_for(x.shape[2], x.shape[3])))
        return DynamicOutput(logits=self.forward_head(features), flops=flops, decisions=decisions)

    def _run(self, x: Tensor, execution: ExecutionLike,
             policy: TokenPolicy | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        policy = self._policy(policy)
        mode = resolve_execution(execution, self.training, static_shapes=policy.keep_ratio is not None)
        if mode is Execution.COMPACT:
            if policy.keep_ratio is not None:  # every sample keeps the same count
                return self._run_uniform(x, policy)
            return self._run_compact(x, policy)
        return self._run_masked(x, policy)

    def _select(self, policy: TokenPolicy, stage: int):
        return lambda scores: policy.select(scores, stage, self.num_stages)

    def _fixed_flops(self, x: Tensor) -> int:
        return self.patch_embed.flops(x.shape[2], x.shape[3]) + self.head_flops()

    def _run_masked(self, x: Tensor, policy: TokenPolicy) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        tokens = self.embed(x)
        patches = tokens.shape[1] - 1
        alive = None
        count = torch.full((x.shape[0],), tokens.shape[1], dtype=torch.long, device=x.device)
        compact = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device) + self._fixed_flops(x)
        decisions: dict[str, Tensor] = {}
        for i, block in enumerate(self.blocks):
            if i in self.reorganize_in:
                stage = self.reorganize_in.index(i)
                tokens, alive = reorganise_masked(block, tokens, alive, self._select(policy, stage))
                decisions[f"kept.{stage}"] = alive[:, 1:1 + patches]
                entering, count = count, alive.sum(dim=1)
                compact = compact + self._packed_reorganisation(i, entering, alive[:, -1], count)
            else:
                tokens = block(tokens, attn_mask=None if alive is None else alive[:, None, None, :])
                compact = compact + self._block_cost[i](count)
        decisions["tokens"] = count
        decisions["compact_flops"] = compact
        flops = constant_flops(self.flops(tuple(x.shape[1:])), x.shape[0], x.device)
        return self.norm(tokens), flops, decisions

    def _packed_reorganisation(self, index: int, entering: Tensor, fused: Tensor, leaving: Tensor) -> Tensor:
        """`(B,)` FLOPs of reorganising block `index` on each sample's own tokens."""
        fusion = fusion_flops(self.blocks[index], entering).double() * fused.double()
        return self._attn_cost[index](entering) + fusion + self._mlp_cost[index](leaving)

    def _run_compact(self, x: Tensor, policy: TokenPolicy) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        strategy = policy.token_batching
        dense = self.embed(x)
        batch, length = dense.shape[:2]
        tokens = RaggedTokens.from_dense(dense)
        positions = torch.arange(length, device=x.device).repeat(batch)
        flops = [float(self._fixed_flops(x))] * batch
        compact = torch.zeros(batch, dtype=torch.float64, device=x.device) + self._fixed_flops(x)
        decisions: dict[str, Tensor] = {}
        start = 0
        for stage, index in enumerate(self.reorganize_in):
            tokens, flops, compact = self._run_segment(start, index, tokens, strategy, flops, compact)
            entering = self._lengths(tokens)
            tokens, positions, cost, fused = reorganise_ragged(self.blocks[index], tokens, positions,
                                                               self._select(policy, stage), strategy)
            flops = [f + c for f, c in zip(flops, cost)]
            compact = compact + self._packed_reorganisation(index, entering, fused, self._lengths(tokens))
            kept = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
            kept[tokens.sample_ids(), positions.clamp_min(0)] = positions > 0
            decisions[f"kept.{stage}"] = kept[:, 1:]
            start = index + 1
        tokens, flops, compact = self._run_segment(start, self.depth, tokens, strategy, flops, compact)
        decisions["tokens"] = self._lengths(tokens)
        decisions["compact_flops"] = compact
        flops = torch.tensor(flops, dtype=torch.float64, device=x.device)
        padded, valid = tokens.to_padded()
        return self.norm(padded).masked_fill(~valid.unsqueeze(-1), 0), flops, decisions

    def _run_uniform(self, x: Tensor, policy: TokenPolicy) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """The compact path when every sample keeps the same number of tokens (a keep-ratio
        policy): a dense `(B, L, D)` batch throughout, each reorganisation one gather. The
        same decisions, outputs and costs as `_run_compact`."""
        tokens = self.embed(x)
        batch, length, width = tokens.shape
        labels = torch.arange(length, device=x.device).expand(batch, -1)  # original position; -1 fused
        flops = self._fixed_flops(x)
        decisions: dict[str, Tensor] = {}
        start = 0
        for stage, index in enumerate(self.reorganize_in):
            for block in self.blocks[start:index]:
                flops += block.flops(tokens.shape[1])
                tokens = block(tokens)
            block, entering = self.blocks[index], tokens.shape[1]
            out, attention = block.attn.forward_with_cls_attention(block.norm1(tokens))
            tokens = tokens + out
            present = torch.ones_like(attention, dtype=torch.bool)
            # the count follows from the shape (static shapes: this path can be traced)
            order = policy.select_fixed(keep_scores(attention, present), stage, self.num_stages)
            kept = order.shape[1]
            keep = torch.zeros_like(present).scatter(1, order, True)
            patches = tokens[:, 1:]
            parts = [tokens[:, :1], patches.gather(1, order[..., None].expand(-1, -1, width))]
            names = [labels[:, :1], labels[:, 1:].gather(1, order)]
            if kept < entering - 1:  # the dropped tokens, fused into one (last)
                parts.append(fusion_weights(attention, ~keep)[:, None, :] @ patches)
                names.append(labels.new_full((batch, 1), -1))
                flops += 2 * (entering - 1) * width
            tokens, labels = torch.cat(parts, dim=1), torch.cat(names, dim=1)
            tokens = tokens + block.mlp(block.norm2(tokens))
            flops += (block.attn.flops(entering) + block.attn.cls_attention_flops(entering)
                      + block.mlp.flops(tokens.shape[1]))
            mask = torch.zeros(batch, length, dtype=torch.bool, device=x.device)
            decisions[f"kept.{stage}"] = mask.scatter_(1, labels.clamp_min(0), labels > 0)[:, 1:]
            start = index + 1
        for block in self.blocks[start:]:
            flops += block.flops(tokens.shape[1])
            tokens = block(tokens)
        per_sample = torch.full((batch,), float(flops), dtype=torch.float64, device=x.device)
        decisions["tokens"] = torch.full((batch,), tokens.shape[1], dtype=torch.long, device=x.device)
        decisions["compact_flops"] = per_sample.clone()
        return self.norm(tokens), per_sample, decisions

    @staticmethod
    def _lengths(tokens: RaggedTokens) -> Tensor:
        return torch.tensor(tokens.lengths, dtype=torch.long, device=tokens.values.device)

    def _run_segment(self, start: int, stop: int, tokens: RaggedTokens, strategy, flops: list[float],
                     compact: Tensor) -> tuple[RaggedTokens, list[float], Tensor]:
        blocks = list(self.blocks[start:stop])
        if not blocks:
            return tokens, flops, compact
        cost = executed_flops(blocks, tokens.lengths, strategy)
        count = self._lengths(tokens)
        compact = compact + sum(self._block_cost[i](count) for i in range(start, stop))
        return run_blocks(blocks, tokens, strategy), [f + c for f, c in zip(flops, cost)], compact


@register_model(family="transformers")
def evit_cifar(*, num_classes: int = 10, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
               embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
               keep_ratio: float | Sequence[float] = 0.7, reorganize_in: Sequence[int] = (1, 3, 5),
               device=None, dtype=None) -> EViT:
    """EViT on `vit_cifar` (32x32, 4x4 patches, 6 blocks of width 128): 70% of the tokens kept in blocks 1, 3, 5."""
    return EViT(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                keep_ratio=keep_ratio, reorganize_in=reorganize_in, device=device, dtype=dtype)


@register_model(family="transformers")
def evit_deit_tiny_patch16_224(*, num_classes: int = 1000, in_chans: int = 3,
                               keep_ratio: float | Sequence[float] = 0.7,
                               reorganize_in: Sequence[int] = (3, 6, 9), device=None, dtype=None) -> EViT:
    """EViT on DeiT-Tiny (224x224, 16x16 patches, 12 blocks of width 192): 70% kept in blocks 3, 6, 9.

    The paper's placement and keep rate."""
    return EViT(224, 16, in_chans, num_classes, 192, 12, 3, 4.0, keep_ratio=keep_ratio,
                reorganize_in=reorganize_in, device=device, dtype=dtype)
