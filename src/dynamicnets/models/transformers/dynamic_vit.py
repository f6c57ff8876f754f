"""DynamicViT (Rao et al., NeurIPS 2021): a ViT that drops uninformative patch tokens at a
few pruning stages, hierarchically (a token dropped once stays dropped).

Before each pruning block a `TokenScorer` scores the patch tokens the sample still has;
the class token is never dropped.

- Training (masked execution, static shapes): a straight-through Gumbel-softmax sample of
  keep/drop per token, multiplied by the previous stage's mask. Every token keeps running
  through the blocks, but later blocks take the mask as `keep`: a dropped token leaves
  every other token's attention (it still attends itself), so the class token and the
  kept tokens compute exactly what they would without it, and the decisions get
  gradients. The ratio loss pulls each sample's kept fraction of patch tokens at stage
  `s` towards `rho^(s+1)`: `aux_losses["keep_ratio"] = ratio_weight * mean_{s, b}
  (mean_j keep_{b,j}^s - rho^(s+1))^2`.
- Inference (compact execution, the eval default): a `TokenPolicy` (default: the model's
  `keep_ratio` at every stage, i.e. `rho, rho^2, rho^3` of the patches) keeps the tokens
  with the highest keep probability; only they run the next blocks. A keep ratio keeps the
  same count in every sample: the batch stays dense, each stage one gather, and the count
  follows from the shape (so this path traces and exports as one graph). A threshold
  policy keeps a different count per sample: a `RaggedTokens` batch run by `run_blocks`
  with the policy's `token_batching`, every sample computing what it would alone.
- Masked execution in eval mode (or with a policy given in training) takes the policy's
  hard decisions on the full token set: the same logits as the compact path.

Cost, `out.flops` (per sample, FLOPs as `FlopCounterMode` counts them): the patch
embedding, every block at the sample's token count `1 + n` (`n` patch tokens it has when
the block runs), every `TokenScorer` at the `n` patch tokens it scores, and the head. On
the compact path that is what the sample executes with `pack` and `bucket` batching; with
`pad` the batch also pays every block at the longest sample's count (`executed_flops`).
On the masked path the same formula is taken from the hard decisions (what the compact
path would execute; the masked path itself runs every token).

Registered: `dynamic_vit_cifar` (`vit_cifar`'s sizes, stages before blocks 1, 3, 5) and
`dynamic_deit_tiny_patch16_224` (DeiT-Tiny, stages before blocks 3, 6, 9, as the paper's
DeiT models). Parameter names are `VisionTransformer`'s plus `predictors.s.*`, so a static
ViT checkpoint initialises everything but the prediction modules (`init_from`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...gates.gumbel import gumbel_softmax
from ...gates.token_scorer import TokenScorer, keep_probability
from ...inference.token_policy import TokenPolicy
from ...layers.ragged_tokens import RaggedTokens
from ...layers.token_batching import run_blocks
from ...outputs import DynamicOutput
from .._registry import register_model
from .token_maps import kept_token_masks
from .vit import VisionTransformer


def default_prune_before(depth: int) -> tuple[int, ...]:
    """DynamicViT's layout for any depth: the first quarter of the blocks (at least one)
    sees every token, the remaining blocks are split into (at most) three equal segments,
    the longer ones first, each starting with a pruning stage.

    Depth 12 gives the paper's `(3, 6, 9)`; depth 6 gives `(1, 3, 5)`.

    Raises:
        ConfigError: `depth < 2` (no block is left to prune before).
    """
    first = max(1, depth // 4)
    rest = depth - first
    if rest < 1:
        raise ConfigError(f"DynamicViT: depth must be >= 2 to prune tokens, got {depth!r}")
    stages = min(3, rest)
    starts, at = [], first
    for s in range(stages):
        starts.append(at)
        at += rest // stages + (1 if s < rest % stages else 0)
    return tuple(starts)


def _quadratic(cost: Callable[[int], int]) -> tuple[int, int]:
    """`(a, b)` with `cost(t) == a t + b t^2` (block and scorer costs have this form)."""
    one, two = cost(1), cost(2)
    b = (two - 2 * one) // 2
    a = one - b
    if cost(3) != 3 * a + 9 * b:
        raise ConfigError("DynamicViT: a block's cost is not of the form a t + b t^2 in its token count t")
    return a, b


class DynamicViT(VisionTransformer):
    """A `VisionTransformer` with DynamicViT's hierarchical token pruning.

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
            mlp_ratio, qkv_bias: as `VisionTransformer`.
        prune_before: block indices (strictly increasing, in `[1, depth - 1]`) before
            which tokens are pruned; default `default_prune_before(depth)`.
        keep_ratio: `rho` in (0, 1]: the training target keeps `rho^(s+1)` of the patch
            tokens after stage `s`, and the default inference policy keeps `rho` of the
            tokens entering each stage.
        ratio_weight: weight of the ratio loss (the paper's 2.0); 0 turns it off.
        tau: Gumbel-softmax temperature of the training decisions.

    Shapes:
        `forward(x (B, C, H, W)) -> DynamicOutput`: `logits (B, num_classes)`, `flops (B,)`
        (module docstring), `decisions`: `kept.{s}` `(B, N)` bool, the patch positions
        (row-major over the patch grid) a sample still has after stage `s`, and `tokens`
        `(B,)` int64, patch tokens kept after the last stage; in training
        `aux_losses["keep_ratio"]` (sampled decisions only).
        `forward_features -> (B, L, D)` normalised tokens, class token first: all `1 + N`
        on the masked path, each sample's kept tokens zero-padded to the longest on the
        compact path.

    Raises:
        ConfigError: `VisionTransformer`'s, and a bad `prune_before`, `keep_ratio`,
            `ratio_weight` or `tau`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, *, prune_before: Sequence[int] | None = None, keep_ratio: float = 0.7,
                 ratio_weight: float = 2.0, tau: float = 1.0, device=None, dtype=None) -> None:
        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                         qkv_bias, device=device, dtype=dtype)
        self.prune_before = _check_stages(prune_before, depth)
        if isinstance(keep_ratio, bool) or not isinstance(keep_ratio, (int, float)) or not 0 < keep_ratio <= 1:
            raise ConfigError(f"DynamicViT: keep_ratio must be in (0, 1], got {keep_ratio!r}")
        if (isinstance(ratio_weight, bool) or not isinstance(ratio_weight, (int, float))
                or not math.isfinite(ratio_weight) or ratio_weight < 0):
            raise ConfigError(f"DynamicViT: ratio_weight must be a finite number >= 0, got {ratio_weight!r}")
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (math.isfinite(tau) and tau > 0):
            raise ConfigError(f"DynamicViT: tau must be a finite number > 0, got {tau!r}")
        self.keep_ratio = float(keep_ratio)
        self.ratio_weight = float(ratio_weight)
        self.tau = float(tau)
        self.predictors = nn.ModuleList(
            TokenScorer(embed_dim, keep_prior=self.keep_ratio, device=device, dtype=dtype)
            for _ in self.prune_before
        )
        self._cost_cache: dict[tuple[int, int], tuple] = {}

    @property
    def num_stages(self) -> int:
        return len(self.prune_before)

    @property
    def gated_index(self) -> tuple[int, ...]:
        """The first block run on each stage's kept tokens (`spatial_mask.{s}` is stage `s`'s)."""
        return self.prune_before

    def default_policy(self) -> TokenPolicy:
        """`TokenPolicy(keep_ratio=self.keep_ratio)`: `rho` of the tokens at every stage."""
        return TokenPolicy(keep_ratio=self.keep_ratio)

    def check_policy(self, policy: TokenPolicy | None) -> TokenPolicy:
        """`policy`, or the default when None, checked against the model's stages.

        Raises:
            ConfigError: not a `TokenPolicy`, or per-stage values of another length.
        """
        if policy is None:
            return self.default_policy()
        if not isinstance(policy, TokenPolicy):
            raise ConfigError(f"DynamicViT: policy must be a TokenPolicy, got {type(policy).__name__}")
        for name in ("keep_ratio", "threshold"):
            value = getattr(policy, name)
            if isinstance(value, Sequence) and len(value) != self.num_stages:
                raise ConfigError(
                    f"DynamicViT: policy {name} has {len(value)} entries, but the model prunes at "
                    f"{self.num_stages} stages (before blocks {list(self.prune_before)})"
                )
        return policy

    # ----------------------------------------------------------------- forward
    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None,
                         policy: TokenPolicy | None = None) -> Tensor:
        """Normalised tokens `(B, L, D)`, class token first, with `forward`'s arguments."""
        return self._run(x, execution, policy)[0]

    def forward(self, x: Tensor, *, execution: ExecutionLike = None,
                policy: TokenPolicy | None = None) -> DynamicOutput:
        """Classify `x (B, C, H, W)`, pruning tokens at every stage.

        Args:
            x: images.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: the inference rule (`TokenPolicy`); default `default_policy()`. In
                masked training without a policy, the decisions are Gumbel samples.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        features, masks, flops, loss = self._run(x, execution, policy)
        out = DynamicOutput(logits=self.forward_head(features), flops=flops)
        out.decisions = {f"kept.{s}": mask for s, mask in enumerate(masks)}
        out.decisions["tokens"] = masks[-1].sum(dim=1)
        out.decisions.update(kept_token_masks(out.decisions, self.patch_embed.grid_for(x.shape[2], x.shape[3])))
        if loss is not None:
            out.aux_losses["keep_ratio"] = loss
        return out

    def _run(self, x: Tensor, execution: ExecutionLike,
             policy: TokenPolicy | None) -> tuple[Tensor, list[Tensor], Tensor, Tensor | None]:
        given = policy is not None
        policy = self.check_policy(policy)
        mode = resolve_execution(execution, self.training, static_shapes=policy.keep_ratio is not None)
        sampled = mode is Execution.MASKED and self.training and not given
        tokens = self.embed(x)
        if mode is Execution.COMPACT:
            features, masks, counts = self._compact(tokens, policy)
            loss = None
        else:
            features, masks, counts, loss = self._masked(tokens, None if sampled else policy)
        return features, masks, self._flops(counts, x.shape[2], x.shape[3]), loss

    def _segments(self) -> list[list[nn.Module]]:
        bounds = (0, *self.prune_before, self.depth)
        blocks = list(self.blocks)
        return [blocks[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]

    def _masked(self, tokens: Tensor, policy: TokenPolicy | None):
        """Every token runs every block; dropped tokens leave the attention of the others."""
        batch, patches = tokens.shape[0], tokens.shape[1] - 1
        segments = self._segments()
        mask = tokens.new_ones(batch, patches)
        keep = None
        masks, counts, errors = [], [], []
        for s, predictor in enumerate(self.predictors):
            for block in segments[s]:
                tokens = block(tokens, keep=keep)
            log_probs = predictor(tokens[:, 1:], None if s == 0 else mask)
            if policy is None:
                decision = gumbel_softmax(log_probs, self.tau, hard=True)[..., 0]
            else:
                scores = keep_probability(log_probs).masked_fill(mask <= 0, float("-inf"))
                decision = policy.select(scores, s, self.num_stages).to(mask.dtype)
            mask = decision * mask
            keep = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
            masks.append(mask.detach() > 0.5)
            counts.append(mask.detach().sum(dim=1))
            if policy is None:
                errors.append((mask.mean(dim=1) - self.keep_ratio ** (s + 1)) ** 2)
        for block in segments[-1]:
            tokens = block(tokens, keep=keep)
        loss = self.ratio_weight * torch.stack(errors).mean() if policy is None else None
        return self.norm(tokens), masks, counts, loss

    def _compact(self, tokens: Tensor, policy: TokenPolicy):
        """Only the kept tokens run. While every sample keeps the same number of tokens (a
        keep-ratio policy) the batch stays a dense `(B, 1 + n, D)` tensor and pruning is one
        gather; once counts differ it becomes a ragged batch run by `run_blocks`."""
        batch, patches = tokens.shape[0], tokens.shape[1] - 1
        segments = self._segments()
        positions = torch.arange(patches, device=tokens.device).expand(batch, -1)  # (B, n) grid positions
        state: Tensor | RaggedTokens = tokens
        masks, counts = [], []
        for s, predictor in enumerate(self.predictors):
            if isinstance(state, Tensor):
                for block in segments[s]:
                    state = block(state)
                state, positions, chosen = self._prune_dense(s, predictor, state, positions, patches, policy)
            else:
                state = run_blocks(segments[s], state, policy.token_batching)
                state, positions, chosen = self._prune(s, predictor, state, positions, patches, policy)
            masks.append(chosen)
            counts.append(chosen.sum(dim=1).to(torch.float64))
        if isinstance(state, Tensor):
            for block in segments[-1]:
                state = block(state)
            return self.norm(state), masks, counts
        state = run_blocks(segments[-1], state, policy.token_batching)
        padded, _ = state.to_padded()
        return self.norm(padded), masks, counts

    def _prune_dense(self, stage: int, predictor: TokenScorer, tokens: Tensor, positions: Tensor,
                     patches: int, policy: TokenPolicy) -> tuple[Tensor | RaggedTokens, Tensor, Tensor]:
        """`_prune` for a dense batch `tokens (B, 1 + n, D)` (`positions (B, n)`): a dense batch
        again when the policy keeps the same count for every sample, else a ragged one."""
        probs = keep_probability(predictor(tokens[:, 1:]))
        if policy.keep_ratio is not None:  # the count follows from the shape: static shapes, traceable
            order = policy.select_fixed(probs, stage, self.num_stages)  # rows keep the grid order
            patches_kept = tokens[:, 1:].gather(1, order[..., None].expand(-1, -1, tokens.shape[2]))
            kept_positions = positions.gather(1, order)
            chosen = torch.zeros(tokens.shape[0], patches, dtype=torch.bool, device=tokens.device)
            chosen = chosen.scatter(1, kept_positions, True)
            return torch.cat([tokens[:, :1], patches_kept], dim=1), kept_positions, chosen
        scores = probs.new_full((tokens.shape[0], patches), float("-inf")).scatter_(1, positions, probs)
        chosen = policy.select(scores, stage, self.num_stages)
        row_kept = chosen.gather(1, positions)
        kept_counts = row_kept.sum(dim=1)
        if bool((kept_counts == kept_counts[0]).all()):
            # the kept rows first, in their original order (a stable sort of "dropped")
            order = torch.argsort((~row_kept).to(torch.uint8), dim=1, stable=True)[:, :int(kept_counts[0])]
            patches_kept = tokens[:, 1:].gather(1, order[..., None].expand(-1, -1, tokens.shape[2]))
            return torch.cat([tokens[:, :1], patches_kept], dim=1), positions.gather(1, order), chosen
        keep_rows = torch.cat([row_kept.new_ones(tokens.shape[0], 1), row_kept], dim=1)
        return RaggedTokens.from_mask(tokens, keep_rows), positions[row_kept], chosen

    def _prune(self, stage: int, predictor: TokenScorer, ragged: RaggedTokens, positions: Tensor,
               patches: int, policy: TokenPolicy) -> tuple[RaggedTokens, Tensor, Tensor]:
        """Score the patch rows of `ragged` (`positions`: their places among the `patches` grid
        positions), keep the policy's choice and every class token."""
        is_cls = torch.zeros(ragged.values.shape[0], dtype=torch.bool, device=ragged.values.device)
        is_cls[ragged.offsets()[:-1]] = True
        patch_rows = RaggedTokens(ragged.values[~is_cls], tuple(n - 1 for n in ragged.lengths))
        probs = keep_probability(predictor.forward_ragged(patch_rows))
        samples = patch_rows.sample_ids()
        scores = probs.new_full((ragged.batch_size, patches), float("-inf"))
        scores[samples, positions] = probs
        chosen = policy.select(scores, stage, self.num_stages)
        row_kept = chosen[samples, positions]
        keep_rows = is_cls.clone()
        keep_rows[~is_cls] = row_kept
        return ragged.select(keep_rows), positions[row_kept], chosen

    def _cost_terms(self, height: int, width: int) -> tuple[int, int, list[tuple[int, int, int]]]:
        """`(patches, fixed, [(scorer a, blocks a, blocks b) per stage])`, cached per image size:
        a stage with `n` patch tokens in and `m` out costs `scorer_a n + a (1 + m) + b (1 + m)^2`."""
        key = (height, width)
        if key not in self._cost_cache:
            patches = self.tokens_for((self.patch_embed.proj.in_channels, height, width)) - 1
            segments = self._segments()
            fixed = self.patch_embed.flops(height, width) + self.head_flops()
            fixed += sum(block.flops(1 + patches) for block in segments[0])
            stages = []
            for s, predictor in enumerate(self.predictors):
                terms = [_quadratic(block.flops) for block in segments[s + 1]]
                stages.append((_quadratic(predictor.flops)[0], sum(a for a, _ in terms), sum(b for _, b in terms)))
            self._cost_cache[key] = (patches, fixed, stages)
        return self._cost_cache[key]

    def classifier_changed(self) -> None:
        self._cost_cache.clear()

    def _flops(self, counts: list[Tensor], height: int, width: int) -> Tensor:
        """Per-sample FLOPs from the patch tokens kept after each stage (`counts[s] (B,)`)."""
        patches, fixed, stages = self._cost_terms(height, width)
        total = counts[0].new_full(counts[0].shape, float(fixed), dtype=torch.float64)
        before = float(patches)
        for (scorer, a, b), count in zip(stages, counts):
            after = count.to(torch.float64)
            total = total + scorer * before + a * (1 + after) + b * (1 + after) ** 2
            before = after
        return total

    def flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Per-sample FLOPs of the masked forward on a `(C, H, W)` input (default
        `default_input_shape`): the static ViT's, plus every prediction module on all patch
        tokens."""
        shape = self.default_input_shape if input_shape is None else tuple(int(s) for s in input_shape)
        patches = self.tokens_for(shape) - 1 if len(shape) == 3 else 0
        return super().flops(shape) + sum(p.flops(patches) for p in self.predictors)

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with every token kept (`flops`: every block on all tokens, the
        prediction modules included), whatever the mode; a zero input in eval would count
        only what the default policy keeps."""
        return float(self.flops(input_shape))


def _check_stages(prune_before, depth: int) -> tuple[int, ...]:
    if prune_before is None:
        return default_prune_before(depth)
    expected = f"strictly increasing block indices in [1, depth - 1 = {depth - 1}]"
    if isinstance(prune_before, (str, bytes)) or not isinstance(prune_before, Sequence) or not prune_before:
        raise ConfigError(f"DynamicViT: prune_before must be a non-empty sequence of {expected}, got "
                          f"{prune_before!r}")
    stages = tuple(prune_before)
    ok = all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= depth - 1 for b in stages)
    if not ok or any(b >= c for b, c in zip(stages[:-1], stages[1:])):
        raise ConfigError(f"DynamicViT: prune_before must be {expected}, got {prune_before!r}")
    return stages


@register_model(family="transformers")
def dynamic_vit_cifar(*, num_classes: int = 10, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
                      embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                      prune_before: Sequence[int] | None = None, keep_ratio: float = 0.7,
                      ratio_weight: float = 2.0, tau: float = 1.0, device=None, dtype=None) -> DynamicViT:
    """DynamicViT on `vit_cifar`: 4x4 patches of 32x32 images, 6 blocks of width 128,
    pruning before blocks 1, 3 and 5 (keeping 70%, 49%, 34% of the 64 patches by default)."""
    return DynamicViT(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                      prune_before=prune_before, keep_ratio=keep_ratio, ratio_weight=ratio_weight, tau=tau,
                      device=device, dtype=dtype)


@register_model(family="transformers")
def dynamic_deit_tiny_patch16_224(*, num_classes: int = 1000, in_chans: int = 3,
                                  prune_before: Sequence[int] | None = (3, 6, 9), keep_ratio: float = 0.7,
                                  ratio_weight: float = 2.0, tau: float = 1.0, device=None,
                                  dtype=None) -> DynamicViT:
    """DynamicViT on DeiT-Tiny (224x224, 16x16 patches, 12 blocks of width 192), pruning
    before blocks 3, 6 and 9 as the paper."""
    return DynamicViT(224, 16, in_chans, num_classes, 192, 12, 3, 4.0, prune_before=prune_before,
                      keep_ratio=keep_ratio, ratio_weight=ratio_weight, tau=tau, device=device, dtype=dtype)
