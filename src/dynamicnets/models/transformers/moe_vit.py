"""A Vision Transformer whose feed-forward layers are mixtures of MLP experts (V-MoE style).

V-MoE (Riquelme et al., NeurIPS 2021) replaces the MLP of every second ViT block by a
sparse mixture of experts routed per token, as the Switch Transformer (Fedus et al.,
2021) and GShard (Lepikhin et al., 2020) do for text. `MoEVisionTransformer` is a
`VisionTransformer` whose blocks `moe_blocks` (default every second one, `1, 3, 5` for
depth 6) are `TransformerBlock`s with an `MoEMlp` as `mlp`: a top-`k` router over `E`
experts, each expert as wide as the dense MLP, so at `k = 1` a token costs what it costs
in the dense block plus the router. The other parameters keep the static ViT's names.

Execution (`forward(x, execution=None)`; None = masked in training, compact in eval):
`"compact"` runs each expert on its own tokens only (sorted dispatch); `"masked"` runs
every expert on every token and mixes with the kept combine weights of the same routing,
so both give the same output for the same routing. The blocks also work as plain
`TransformerBlock`s (`block(x)`, `token_batching.run_blocks` on ragged token batches);
those calls return no aux losses (see `MoEMlp`).

Per-sample FLOPs (`DynamicOutput.flops`) are what ran: patch embedding, attention, the
dense MLPs, head, and per MoE layer the router plus each of the sample's tokens' kept
experts (compact) or all `E` experts and the mix (masked). `decisions["compact_flops"]`
is the compact cost of the same decisions in both executions.

Figures on 3x32x32, 10 classes (`tests/models/transformers/test_moe_vit.py` checks them):

| model                       | params    | FLOPs per image, compact (masked) |
|-----------------------------|-----------|-----------------------------------|
| `vit_cifar` (static)        | 811,146   | 116,004,352                       |
| `moe_vit_cifar`, E=4, k=1   | 1,405,962 | 116,204,032 (193,080,832)         |

Each MoE layer adds `(E - 1)` MLPs of parameters and a `D x E` router (`2 D E` FLOPs per
token: 1,024 per token, 66,560 per image and layer here).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...execution import Execution, ExecutionLike, parse_execution, resolve_execution
from ...layers.moe import MoEOutput
from ...layers.moe_feed_forward import MoEMlp
from ...outputs import DynamicOutput
from .._registry import register_model
from .vit import VisionTransformer


def default_moe_blocks(depth: int) -> tuple[int, ...]:
    """Every second block, ending at the last: `(1, 3, 5)` for depth 6."""
    return tuple(range((depth - 1) % 2, depth, 2))


def check_moe_blocks(moe_blocks: Sequence[int], depth: int) -> tuple[int, ...]:
    """`moe_blocks` as sorted distinct block indices in `0..depth-1`.

    Raises:
        ConfigError: naming `moe_blocks` and what was expected.
    """
    if isinstance(moe_blocks, (str, bytes)) or not isinstance(moe_blocks, Sequence) or not moe_blocks or any(
            isinstance(i, bool) or not isinstance(i, int) for i in moe_blocks):
        raise ConfigError(f"MoEVisionTransformer: moe_blocks must be a non-empty list of block indices, "
                          f"got {moe_blocks!r}")
    blocks = tuple(sorted(set(int(i) for i in moe_blocks)))
    if blocks[0] < 0 or blocks[-1] >= depth:
        raise ConfigError(f"MoEVisionTransformer: moe_blocks must be block indices in 0..{depth - 1}, "
                          f"got {list(moe_blocks)}")
    return blocks


class MoEVisionTransformer(VisionTransformer):
    """A `VisionTransformer` with `MoEMlp` feed-forward layers in the blocks `moe_blocks`.

    Args:
        img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
            mlp_ratio, qkv_bias: as `VisionTransformer`.
        moe_blocks: block indices whose MLP is a mixture (default every second block,
            `default_moe_blocks(depth)`).
        num_experts: `E` per MoE layer.
        k: experts per token.
        router: `"topk"` or `"noisy_topk"`.
        capacity_factor: None (dropless: every sample's cost is fixed) or > 0 (see
            `MoEMlp`; a sample's cost then depends on the batch).
        load_balance_weight, z_loss_weight: aux loss weights of every MoE layer.
        expert_hidden: hidden units per expert; default the dense MLP's
            `round(mlp_ratio * embed_dim)`.

    Attributes:
        moe_blocks: the block indices, sorted. `blocks[i].mlp` is an `MoEMlp` for those.

    Shapes:
        `forward(x (B, C, H, W), execution=None) -> DynamicOutput` with `logits (B,
        num_classes)`, `flops (B,)` (see the module doc), `aux_losses` `"load_balance"` and
        `"router_z"` summed over the `L` MoE layers, and `decisions`: `"expert_indices"`
        `(B, L, 1 + N, k)` int64 (-1 where capacity dropped the assignment) and
        `"compact_flops"` `(B,)` float64. `forward_features(x, execution=None) -> (B, 1 + N, D)`.
    """

    execution_modes = (Execution.MASKED, Execution.COMPACT)

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, *, moe_blocks: Sequence[int] | None = None, num_experts: int = 4,
                 k: int = 1, router: str = "topk", capacity_factor: float | None = None,
                 load_balance_weight: float = 0.01, z_loss_weight: float = 1e-3,
                 expert_hidden: int | None = None, device=None, dtype=None) -> None:
        super().__init__(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
                         qkv_bias, device=device, dtype=dtype)
        self.moe_blocks = check_moe_blocks(default_moe_blocks(depth) if moe_blocks is None else moe_blocks, depth)
        hidden = int(round(mlp_ratio * embed_dim)) if expert_hidden is None else expert_hidden
        for index in self.moe_blocks:
            mlp = MoEMlp(embed_dim, hidden, num_experts, k, router=router, capacity_factor=capacity_factor,
                         load_balance_weight=load_balance_weight, z_loss_weight=z_loss_weight, device=device,
                         dtype=dtype)
            _init_like_vit(mlp)
            self.blocks[index].mlp = mlp

    def moe_layers(self) -> list[MoEMlp]:
        """The `L` `MoEMlp` layers, in execution order."""
        return [self.blocks[i].mlp for i in self.moe_blocks]

    def forward_routed(self, x: Tensor, execution: ExecutionLike = None) -> tuple[Tensor, list[MoEOutput]]:
        """`(B, C, H, W) -> (tokens (B, 1 + N, D) before the final norm, MoEOutput per MoE layer)`."""
        execution = resolve_execution(execution, self.training)
        tokens = self.embed(x)
        routed = []
        for block in self.blocks:
            if isinstance(block.mlp, MoEMlp):
                tokens = tokens + block.attn(block.norm1(tokens))
                out = block.mlp.run(block.norm2(tokens), execution=execution)
                tokens = tokens + out.output
                routed.append(out)
            else:
                tokens = block(tokens)
        return tokens, routed

    def forward_features(self, x: Tensor, execution: ExecutionLike = None) -> Tensor:
        """`(B, C, H, W) -> (B, 1 + N, D)` normalised tokens (execution as in `forward`)."""
        return self.norm(self.forward_routed(x, execution)[0])

    def forward(self, x: Tensor, execution: ExecutionLike = None) -> DynamicOutput:
        tokens, routed = self.forward_routed(x, execution)
        logits = self.forward_head(self.norm(tokens))
        batch, length = tokens.shape[:2]
        fixed = float(self.fixed_flops(tuple(x.shape[1:])))
        flops = torch.full((batch,), fixed, dtype=torch.float64, device=x.device)
        compact = flops.clone()
        aux: dict[str, Tensor] = {}
        indices = []
        for layer, out in zip(self.moe_layers(), routed):
            flops = flops + out.token_flops.view(batch, length).sum(dim=1)
            rows = out.kept.sum(dim=1).to(torch.float64).view(batch, length).sum(dim=1)
            compact = compact + rows * layer.expert_row_flops() + length * layer.router.flops(1)
            indices.append(out.routing.expert_indices.masked_fill(~out.kept, -1).view(batch, length, -1))
            for key, value in out.aux_losses.items():
                aux[key] = aux[key] + value if key in aux else value
        decisions = {"expert_indices": torch.stack(indices, dim=1).detach(), "compact_flops": compact}
        return DynamicOutput(logits=logits, decisions=decisions, aux_losses=aux, flops=flops)

    def fixed_flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Per-sample FLOPs every image pays whatever its routing: patch embedding, every
        block's attention, the dense MLPs and the head (not the MoE layers)."""
        shape = self.default_input_shape if input_shape is None else tuple(int(s) for s in input_shape)
        super().flops(shape)  # checks the shape
        tokens = self.tokens_for(shape)
        blocks = sum(block.attn.flops(tokens) + (0 if isinstance(block.mlp, MoEMlp) else block.mlp.flops(tokens))
                     for block in self.blocks)
        return self.patch_embed.flops(shape[1], shape[2]) + blocks + self.head_flops()

    def flops(self, input_shape: tuple[int, ...] | None = None, execution: ExecutionLike = "compact") -> int:
        """Per-sample FLOPs on a `(C, H, W)` input (default `default_input_shape`).

        Args:
            input_shape: per-sample input shape.
            execution: `"compact"`: with no assignment dropped (exact when dropless, an
                upper bound with a capacity), router and `k` experts per token in every MoE
                layer; `"masked"`: router, all `E` experts and the mix.
        """
        shape = self.default_input_shape if input_shape is None else tuple(int(s) for s in input_shape)
        tokens = self.tokens_for(shape)
        mode = parse_execution(execution)
        moe = sum(layer.flops(tokens) if mode is Execution.COMPACT
                  else tokens * (layer.router.flops(1) + layer.masked_token_flops()) for layer in self.moe_layers())
        return self.fixed_flops(shape) + moe


def _init_like_vit(mlp: MoEMlp) -> None:
    """ViT's initialisation for the experts and the router: weights N(0, 0.02) truncated, biases 0."""
    for weight in (mlp.experts.w1, mlp.experts.w2, mlp.router.gate.weight):
        nn.init.trunc_normal_(weight, std=0.02)
    for bias in (mlp.experts.b1, mlp.experts.b2):
        if bias is not None:
            nn.init.zeros_(bias)


@register_model(family="transformers")
def moe_vit_cifar(*, num_classes: int = 10, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
                  embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                  moe_blocks: Sequence[int] | None = None, num_experts: int = 4, k: int = 1, router: str = "topk",
                  capacity_factor: float | None = None, load_balance_weight: float = 0.01,
                  z_loss_weight: float = 1e-3, device=None, dtype=None) -> MoEVisionTransformer:
    """`vit_cifar` whose blocks 2, 4 and 6 have a 4-expert top-1 mixture of MLPs (each as wide as the dense MLP)."""
    return MoEVisionTransformer(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
                                mlp_ratio, moe_blocks=moe_blocks, num_experts=num_experts, k=k, router=router,
                                capacity_factor=capacity_factor, load_balance_weight=load_balance_weight,
                                z_loss_weight=z_loss_weight, device=device, dtype=dtype)


def upcycled_state_dict(model: MoEVisionTransformer, dense_state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A dense ViT's weights for `model`, every expert a copy of its block's dense MLP.

    Sparse upcycling (Komatsuzaki et al., ICLR 2023): the MoE model starts from a trained
    static ViT of the same sizes. `blocks.i.mlp.fc1` / `fc2` of each MoE block become
    `blocks.i.mlp.experts.w1 (E, D, h)`, `b1`, `w2 (E, h, D)`, `b2`; every other tensor is
    kept; the routers are absent (they keep their initialisation when the result is saved
    as `{"model": ...}` and loaded with `init_from`). With `k = 1` and raw router
    probabilities as combine weights, an upcycled block starts at `p_e(x)` times the dense
    MLP's output.

    Args:
        model: the `MoEVisionTransformer` to initialise (its sizes and `moe_blocks`).
        dense_state: the static `VisionTransformer`'s state dict.

    Returns:
        a state dict whose keys all exist in `model.state_dict()`.

    Raises:
        ConfigError: a dense MLP tensor is missing or its shape does not fit the experts.
    """
    state = dict(dense_state)
    for index, layer in zip(model.moe_blocks, model.moe_layers()):
        prefix = f"blocks.{index}.mlp."
        experts = layer.experts
        sources = {"fc1.weight": ("w1", True), "fc1.bias": ("b1", False),
                   "fc2.weight": ("w2", True), "fc2.bias": ("b2", False)}
        for name, (target, transpose) in sources.items():
            tensor = state.pop(prefix + name, None)
            own = getattr(experts, target)
            if tensor is None or own is None:
                raise ConfigError(f"upcycled_state_dict: the dense weights have no {prefix + name!r} for MoE block "
                                  f"{index} (or the experts have no {target})")
            tensor = tensor.t() if transpose else tensor
            if tuple(tensor.shape) != tuple(own.shape[1:]):
                raise ConfigError(f"upcycled_state_dict: {prefix + name!r} has shape {tuple(tensor.shape)}, the "
                                  f"experts' {target} needs {tuple(own.shape[1:])} per expert (another width?)")
            state[prefix + "experts." + target] = tensor.unsqueeze(0).expand_as(own).clone()
    return state
