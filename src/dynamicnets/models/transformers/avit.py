"""A-ViT: a ViT whose patch tokens halt one by one (Yin, Vahdat, Alvarez, Mallya, Kautz,
Molchanov, "A-ViT: Adaptive Tokens for Efficient Vision Transformer", CVPR 2022).

After every block, each patch token gets a halting score from its own first embedding
channel, `h = sigmoid(halting_scale * t[0] + halting_shift)` (A-ViT's parameter-free
halting: fixed `gamma = halting_scale`, `beta = halting_shift`; the network learns to
write the score into that channel). A token's scores add up over the blocks; once the
sum reaches `1 - eps` the token halts: it leaves the attention of every later block and
its state is frozen at that block's output. After the last block every token has halted
(`dynamicnets.gates.token_halting`). The class token never halts: it runs every block
and the head reads it after the last one, as for the static ViT.

With the defaults (`gamma = 5`, `beta = -10`) a token halts only where its first channel
is well above 2: a ViT checkpoint loads with tokens halting late, if at all, and
fine-tuning with the training terms moves them earlier:

- ponder cost: `ponder_weight * mean(N + R)` over the patch tokens (`aux_losses["ponder"]`);
- distributional prior: `prior_weight * KL(prior || q)` between a Gaussian over the
  blocks centred at `target_depth` blocks (std `prior_std`) and the batch's halting-depth
  distribution `q` (`aux_losses["halting_prior"]`).

Executions (the same decisions, the same logits):

- `Execution.MASKED` (training default): every block runs on all tokens, halted ones
  masked out of the attention (`attn_mask`) and their state kept (`where`). No host syncs.
- `Execution.COMPACT` (eval default): a `RaggedTokens` batch from which halted tokens
  leave after every block (`RaggedTokens.select`), each sample with its own count, run
  with the policy's `token_batching`.

The inference rule is a `HaltingPolicy(eps, token_batching)` (`forward(x, policy=...)`;
default `eps` = the model's): the threshold `1 - eps` is one number for all blocks, so
it is a policy of its own rather than a `TokenPolicy`, whose thresholds act on the
scores of a pruning stage and which always keeps a patch token (here all may halt).

Registered: `avit_cifar` (`vit_cifar`'s size, target depth 4 of 6 blocks) and
`avit_deit_tiny_patch16_224` (target depth 8 of 12); no parameters beyond the ViT's.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, resolve_execution
from ...gates.token_halting import (
    HaltingPolicy,
    depth_prior,
    halting_distribution,
    ponder_cost,
    prior_kl,
    token_halting_scores,
)
from ...layers.ragged_tokens import RaggedTokens
from ...layers.token_batching import executed_flops, run_blocks
from ...outputs import DynamicOutput, constant_flops
from .._registry import register_model
from ..skipping.act import HaltingState
from ._token_costs import QuadraticCost
from .token_maps import halting_depth_map
from .vit import VisionTransformer


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class AViT(VisionTransformer):
    """A ViT with A-ViT's per-token halting (module docstring).

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
        mlp_ratio, qkv_bias: as for `VisionTransformer`.
        eps: tokens halt once their cumulative score reaches `1 - eps` (training, and the
            default policy); in `(0, 1)`.
        halting_scale: `gamma`, finite.
        halting_shift: `beta`, finite.
        target_depth: the number of blocks a token should run, the centre of the prior;
            in `[1, depth]`.
        prior_std: the prior's standard deviation in blocks, `> 0`.
        ponder_weight: weight of the ponder cost, `>= 0` (A-ViT: 5e-4).
        prior_weight: weight of the prior's KL term, `>= 0` (A-ViT: 0.1).

    Shapes:
        `forward(x (B, in_chans, H, W), *, execution=None, policy=None) -> DynamicOutput`
        with `logits (B, num_classes)`, `flops (B,)` of what ran, `decisions`:
        `halting_depth (B, N)` int64, the block (0-based) after which each patch token
        halted; `tokens_per_block (B, depth)` int64, the tokens each block ran on (class
        token included); `ponder (B,)` mean `N + R` over the patch tokens;
        `compact_flops (B,)`, what the decisions cost with every sample running its own
        tokens only; in training `aux_losses` `"ponder"` and `"halting_prior"`.
        `forward_features(x, **kwargs) -> (B, 1 + N, D)`: the normalised tokens, each
        patch token's state frozen where it halted.

    Raises:
        ConfigError: an argument outside its range, naming it.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, *, eps: float = 0.01, halting_scale: float = 5.0,
                 halting_shift: float = -10.0, target_depth: float = 4.0, prior_std: float = 1.0,
                 ponder_weight: float = 5e-4, prior_weight: float = 0.1, device=None, dtype=None) -> None:
        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                         qkv_bias, device=device, dtype=dtype)
        checks = {
            "eps": (eps, _real(eps) and 0 < eps < 1, "a number in (0, 1)"),
            "halting_scale": (halting_scale, _real(halting_scale), "a finite number"),
            "halting_shift": (halting_shift, _real(halting_shift), "a finite number"),
            "target_depth": (target_depth, _real(target_depth) and 1 <= target_depth <= depth,
                             f"a number of blocks in [1, depth = {depth}]"),
            "prior_std": (prior_std, _real(prior_std) and prior_std > 0, "a number > 0"),
            "ponder_weight": (ponder_weight, _real(ponder_weight) and ponder_weight >= 0, "a number >= 0"),
            "prior_weight": (prior_weight, _real(prior_weight) and prior_weight >= 0, "a number >= 0"),
        }
        for name, (value, ok, expected) in checks.items():
            if not ok:
                raise ConfigError(f"AViT: {name} must be {expected}, got {value!r}")
        self.eps = float(eps)
        self.halting_scale = float(halting_scale)
        self.halting_shift = float(halting_shift)
        self.target_depth = float(target_depth)
        self.prior_std = float(prior_std)
        self.ponder_weight = float(ponder_weight)
        self.prior_weight = float(prior_weight)
        self._block_cost = [QuadraticCost(block.flops, f"AViT block {i}") for i, block in enumerate(self.blocks)]

    def default_policy(self) -> HaltingPolicy:
        """`HaltingPolicy(eps=eps)`, the rule of training and of `policy=None`."""
        return HaltingPolicy(eps=self.eps)

    def _policy(self, policy: HaltingPolicy | None) -> HaltingPolicy:
        if policy is None:
            return self.default_policy()
        if not isinstance(policy, HaltingPolicy):
            raise ConfigError(f"AViT: policy must be a HaltingPolicy, got {type(policy).__name__}")
        return policy

    def full_flops(self, input_shape: tuple[int, ...]) -> float:
        """Per-sample FLOPs with no token halting: every block on every token (the halting
        score reads a channel and costs nothing), whatever the mode; a zero input in eval
        would count only what its tokens ran before they halted."""
        return float(self.flops(input_shape))

    def halting_scores(self, tokens: Tensor) -> Tensor:
        """`(..., D)` block outputs -> `(...)` halting scores in `(0, 1)`."""
        return token_halting_scores(tokens, self.halting_scale, self.halting_shift)

    def forward_features(self, x: Tensor, *, execution: ExecutionLike = None,
                         policy: HaltingPolicy | None = None) -> Tensor:
        """`(B, in_chans, H, W) -> (B, 1 + N, D)` normalised tokens (class docstring), with
        `forward`'s keyword arguments."""
        return self._run(x, execution, policy)[0]

    def forward(self, x: Tensor, *, execution: ExecutionLike = None,
                policy: HaltingPolicy | None = None) -> DynamicOutput:
        """Classify, patch tokens halting one by one.

        Args:
            x: `(B, in_chans, H, W)`.
            execution: `"masked"` / `"compact"`; default masked in training, compact in eval.
            policy: the halting rule (default `HaltingPolicy(eps=eps)`); its
                `token_batching` runs the compact path.

        Returns:
            `DynamicOutput` (see the class docstring).
        """
        features, flops, decisions, masses = self._run(x, execution, policy)
        out = DynamicOutput(logits=self.forward_head(features), flops=flops, decisions=decisions)
        out.decisions.update(halting_depth_map(out.decisions["halting_depth"],
                                               self.patch_embed.grid_for(x.shape[2], x.shape[3])))
        if self.training:
            out.aux_losses["ponder"] = self.ponder_weight * decisions.pop("_ponder").mean()
            prior = depth_prior(self.depth, self.target_depth, self.prior_std, device=x.device,
                                dtype=features.dtype)
            out.aux_losses["halting_prior"] = self.prior_weight * prior_kl(halting_distribution(masses), prior)
        decisions.pop("_ponder", None)
        return out

    def _run(self, x: Tensor, execution: ExecutionLike, policy: HaltingPolicy | None):
        mode = resolve_execution(execution, self.training)
        policy = self._policy(policy)
        if mode is Execution.COMPACT:
            return self._run_compact(x, policy)
        return self._run_masked(x, policy)

    def _fixed_flops(self, x: Tensor) -> int:
        return self.patch_embed.flops(x.shape[2], x.shape[3]) + self.head_flops()

    def _decisions(self, count: Tensor, remainder: Tensor, per_block: Tensor, fixed: int) -> dict[str, Tensor]:
        compact = sum(self._block_cost[i](per_block[:, i]) for i in range(self.depth)) + fixed
        ponder = ponder_cost(count, remainder)
        return {"halting_depth": count.long() - 1, "tokens_per_block": per_block, "ponder": ponder.detach(),
                "compact_flops": compact, "_ponder": ponder}

    def _run_masked(self, x: Tensor, policy: HaltingPolicy):
        tokens = self.embed(x)
        state = HaltingState(tokens[:, 1:, 0].detach(), policy.eps)
        cls = torch.ones_like(state.running[:, :1])
        masses, per_block = [], []
        for i, block in enumerate(self.blocks):
            alive = torch.cat([cls, state.running], dim=1)
            per_block.append(alive.sum(dim=1))
            out = block(tokens, attn_mask=None if i == 0 else alive[:, None, None, :])
            tokens = torch.where(alive.unsqueeze(-1), out, tokens)
            masses.append(state.step(None, None if i == self.depth - 1 else self.halting_scores(out[:, 1:])))
        decisions = self._decisions(state.count, state.remainder, torch.stack(per_block, dim=1), self._fixed_flops(x))
        flops = constant_flops(self.flops(tuple(x.shape[1:])), x.shape[0], x.device)
        return self.norm(tokens), flops, decisions, masses

    def _run_compact(self, x: Tensor, policy: HaltingPolicy):
        strategy = policy.token_batching
        dense = self.embed(x)
        batch, length, dim = dense.shape
        tokens = RaggedTokens.from_dense(dense)
        positions = torch.arange(length, device=x.device).repeat(batch)
        flat = torch.arange(batch * length, device=x.device)  # row of each token in the (B * L, D) output
        final = dense.new_empty(batch * length, dim)
        cum = dense.new_zeros(batch * length)
        count = dense.new_full((batch * length,), float(self.depth))
        remainder = dense.new_zeros(batch * length)
        per_block = torch.zeros(batch, self.depth, dtype=torch.long, device=x.device)
        flops = [float(self._fixed_flops(x))] * batch
        masses = []
        for i, block in enumerate(self.blocks):
            per_block[:, i] = torch.tensor(tokens.lengths, device=x.device)
            flops = [f + c for f, c in zip(flops, executed_flops([block], tokens.lengths, strategy))]
            tokens = run_blocks([block], tokens, strategy)
            mass = dense.new_zeros(batch * length)
            if i == self.depth - 1:
                final[flat] = tokens.values
                remainder[flat] = mass[flat] = 1 - cum
                masses.append(mass.reshape(batch, length)[:, 1:])
                break
            rows = self.halting_scores(tokens.values)
            halts = (cum + rows >= policy.threshold) & (positions > 0)
            mass[flat] = torch.where(halts, 1 - cum, rows)
            masses.append(mass.reshape(batch, length)[:, 1:])
            if bool(halts.any()):
                done = flat[halts]
                final[done] = tokens.values[halts]
                count[done] = float(i + 1)
                remainder[done] = 1 - cum[halts]
                running = ~halts
                tokens = tokens.select(running)
                positions, flat, cum, rows = positions[running], flat[running], cum[running], rows[running]
            cum = cum + rows
        features = self.norm(final.reshape(batch, length, dim))
        decisions = self._decisions(count.reshape(batch, length)[:, 1:], remainder.reshape(batch, length)[:, 1:],
                                    per_block, self._fixed_flops(x))
        return features, torch.tensor(flops, dtype=torch.float64, device=x.device), decisions, masses


@register_model(family="transformers")
def avit_cifar(*, num_classes: int = 10, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
               embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
               eps: float = 0.01, halting_scale: float = 5.0, halting_shift: float = -10.0,
               target_depth: float = 4.0, prior_std: float = 1.0, ponder_weight: float = 5e-4,
               prior_weight: float = 0.1, device=None, dtype=None) -> AViT:
    """A-ViT on `vit_cifar` (32x32, 4x4 patches, 6 blocks of width 128): tokens halt, prior at 4 blocks."""
    return AViT(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                eps=eps, halting_scale=halting_scale, halting_shift=halting_shift, target_depth=target_depth,
                prior_std=prior_std, ponder_weight=ponder_weight, prior_weight=prior_weight,
                device=device, dtype=dtype)


@register_model(family="transformers")
def avit_deit_tiny_patch16_224(*, num_classes: int = 1000, in_chans: int = 3, eps: float = 0.01,
                               halting_scale: float = 5.0, halting_shift: float = -10.0,
                               target_depth: float = 8.0, prior_std: float = 1.0, ponder_weight: float = 5e-4,
                               prior_weight: float = 0.1, device=None, dtype=None) -> AViT:
    """A-ViT on DeiT-Tiny (224x224, 16x16 patches, 12 blocks of width 192): tokens halt, prior at 8 blocks."""
    return AViT(224, 16, in_chans, num_classes, 192, 12, 3, 4.0, eps=eps, halting_scale=halting_scale,
                halting_shift=halting_shift, target_depth=target_depth, prior_std=prior_std,
                ponder_weight=ponder_weight, prior_weight=prior_weight, device=device, dtype=dtype)
