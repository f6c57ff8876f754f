"""Vision Transformer (Dosovitskiy et al., ICLR 2021) in DeiT's layout (Touvron et al., ICML 2021).

Patches of `patch_size` pixels become tokens, a learned class token is prepended, learned
position embeddings are added, `depth` pre-norm blocks run, and a final LayerNorm and a
linear head read the class token. Module names are timm's (`patch_embed.proj`,
`cls_token`, `pos_embed`, `blocks.i.attn.qkv`, ..., `norm`, `head`).

Registered sizes (FLOPs per sample as `FlopCounterMode` counts them, fused attention
included; `tests/models/transformers/test_vit.py` recomputes every figure):

| model                  | input      | tokens | dim | depth | heads | MLP | params    | FLOPs         |
|------------------------|------------|--------|-----|-------|-------|-----|-----------|---------------|
| `vit_cifar`            | 3x32x32    | 64 + 1 | 128 | 6     | 4     | 256 | 811,146   | 116,004,352   |
| `deit_tiny_patch16_224`| 3x224x224  | 196 + 1| 192 | 12    | 3     | 768 | 5,717,416 | 2,507,366,400 |

DeiT reports 5M parameters and 1.3 GFLOPs (multiply-adds) for DeiT-Ti: the FLOPs above
are 2 per multiply-add, 1.25 G multiply-adds (timm lists 5.72M parameters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError
from ...flops import linear_flops
from ...layers.transformer import PatchEmbed, TransformerBlock
from ...outputs import DynamicOutput, constant_flops
from .._api import ClassifierApi
from .._registry import register_model
from ..static._checks import require_positive


class VisionTransformer(ClassifierApi, nn.Module):
    """A ViT classifier with a class token.

    Args:
        img_size: the trained input side (square images); other sizes divisible by the
            patch run with interpolated position embeddings.
        patch_size: patch side; must divide `img_size`.
        in_chans: input channels.
        num_classes: classes.
        embed_dim: token width `D`.
        depth: number of blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP width over `D`.
        qkv_bias: bias on the qkv projections.

    Shapes:
        `forward: (B, in_chans, img_size, img_size) -> DynamicOutput` with `logits (B,
        num_classes)` and `flops (B,)`; `embed: -> (B, 1 + N, D)` (class token first);
        `forward_features: -> (B, 1 + N, D)` after the final norm; `forward_head: (B, 1 + N,
        D) -> (B, num_classes)` from the class token.

    Raises:
        ConfigError: `img_size` not divisible by `patch_size`, or a size that is not a
            positive int.
    """

    head_path = "head"
    classifier_paths = ("head",)

    def __init__(self, img_size: int = 32, patch_size: int = 4, in_chans: int = 3, num_classes: int = 10,
                 embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__()
        require_positive("VisionTransformer", img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         num_classes=num_classes, embed_dim=embed_dim, depth=depth, num_heads=num_heads)
        factory = {"device": device, "dtype": dtype}
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, **factory)
        self.num_tokens = 1 + self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim, **factory))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, embed_dim, **factory))
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio, qkv_bias, **factory) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6, **factory)
        self.head = nn.Linear(embed_dim, num_classes, **factory)
        self.embed_dim = embed_dim
        self.default_input_shape = (in_chans, img_size, img_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias) if module.bias is not None else None

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def embed(self, x: Tensor) -> Tensor:
        """Patch tokens with the class token first and position embeddings added: `(B, 1 + N, D)`.

        An image of another size than `img_size` (sides divisible by the patch) gets the
        position embeddings of its grid by bicubic interpolation of the trained grid (as
        DeiT fine-tunes at 384 from 224)."""
        tokens = self.patch_embed(x)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.position_embedding(x.shape[2], x.shape[3])

    def position_embedding(self, height: int, width: int) -> Tensor:
        """`(1, 1 + N, D)` position embeddings for a `height` x `width` image."""
        grid = self.patch_embed.grid_for(height, width)
        if grid == self.patch_embed.grid_size:
            return self.pos_embed
        trained = self.patch_embed.grid_size
        patches = self.pos_embed[:, 1:].reshape(1, *trained, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat([self.pos_embed[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)

    def tokens_for(self, input_shape: tuple[int, ...]) -> int:
        """Tokens (class token included) of a `(C, H, W)` input."""
        rows, cols = self.patch_embed.grid_for(int(input_shape[-2]), int(input_shape[-1]))
        return 1 + rows * cols

    def forward_features(self, x: Tensor) -> Tensor:
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.head(features[:, 0])

    def forward(self, x: Tensor) -> DynamicOutput:
        logits = self.forward_head(self.forward_features(x))
        return DynamicOutput(logits=logits, flops=constant_flops(self.flops(tuple(x.shape[1:])), x.shape[0], x.device))

    def head_flops(self) -> int:
        return linear_flops(self.head)

    def flops(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Per-sample FLOPs of the forward on a `(C, H, W)` input (default
        `default_input_shape`): patch embedding, every block on all tokens, head."""
        shape = self.default_input_shape if input_shape is None else tuple(int(s) for s in input_shape)
        if len(shape) != 3 or shape[0] != self.patch_embed.proj.in_channels:
            raise ConfigError(f"VisionTransformer expects per-sample inputs (C, H, W) with C = "
                              f"{self.patch_embed.proj.in_channels}, got {shape}")
        tokens = self.tokens_for(shape)
        blocks = sum(block.flops(tokens) for block in self.blocks)
        return self.patch_embed.flops(shape[1], shape[2]) + blocks + self.head_flops()

    def flops_and_shape(self, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        return self.flops(tuple(in_shape)), (self.head.out_features,)


@register_model(family="transformers")
def vit_cifar(*, num_classes: int = 10, img_size: int = 32, patch_size: int = 4, in_chans: int = 3,
              embed_dim: int = 128, depth: int = 6, num_heads: int = 4, mlp_ratio: float = 2.0,
              device=None, dtype=None) -> VisionTransformer:
    """A small ViT for 32x32 images: 4x4 patches (64 tokens + class token), 6 blocks of width 128."""
    return VisionTransformer(img_size, patch_size, in_chans, num_classes, embed_dim, depth, num_heads,
                             mlp_ratio, device=device, dtype=dtype)


@register_model(family="transformers")
def deit_tiny_patch16_224(*, num_classes: int = 1000, in_chans: int = 3, device=None,
                          dtype=None) -> VisionTransformer:
    """DeiT-Tiny: 224x224 images in 16x16 patches (196 tokens + class token), 12 blocks of width 192, 3 heads."""
    return VisionTransformer(224, 16, in_chans, num_classes, 192, 12, 3, 4.0, device=device, dtype=dtype)
