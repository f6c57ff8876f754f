"""Vision-transformer building blocks (ViT, Dosovitskiy et al., ICLR 2021; DeiT, Touvron et
al., ICML 2021): patch embedding, multi-head self-attention, MLP and the pre-norm block.

Module names follow timm's `VisionTransformer` (`patch_embed.proj`, `attn.qkv`,
`attn.proj`, `mlp.fc1`, `mlp.fc2`, `norm1`, `norm2`), so state dicts map one to one.

Every block takes its token-level decisions as forward arguments (the library's rule:
gates decide, layers take decisions):

- `keep (B, N)`: DynamicViT's attention masking for training. A dropped token `j` is
  removed from every other token's softmax, `A_ij = exp(s_ij) g_ij / sum_k exp(s_ik) g_ik`
  with `g_ij = keep_j` off the diagonal and 1 on it, so the decisions get gradients.
- `attn_mask (B, 1, N, N)` or `(B, 1, 1, N)` bool, `True` = may attend: padded batches.
  Both may be given: a key then counts where it is kept and allowed.

Costs (per sample, `N` tokens, width `D`, MLP width `M`, FLOPs as `FlopCounterMode`
counts them): `2 N (4 D^2 + 2 D M)` for the linear layers and `4 N^2 D` for attention
(`Q K^T` and `softmax(.) V`); norms, softmax and GELU are free.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import attention_flops, conv2d_flops, linear_flops


def _positive_int(where: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {name} must be a positive int, got {value!r}")
    return value


class PatchEmbed(nn.Module):
    """Non-overlapping `patch_size` x `patch_size` patches, each projected to `embed_dim`.

    Args:
        img_size: the default input height and width (an int for square images, or
            `(H, W)`); other sizes divisible by `patch_size` are accepted too.
        patch_size: side of a patch; must divide both sides of `img_size`.
        in_chans: input channels.
        embed_dim: token width `D`.

    Shapes:
        `(B, in_chans, H, W) -> (B, N, D)` with `N = (H / patch_size) * (W / patch_size)`.

    Raises:
        ConfigError: a patch size that does not divide the image size, naming both.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 embed_dim: int = 768, *, device=None, dtype=None) -> None:
        super().__init__()
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        for name, value in (("img_size", height), ("img_size", width), ("patch_size", patch_size),
                            ("in_chans", in_chans), ("embed_dim", embed_dim)):
            _positive_int("PatchEmbed", name, value)
        if height % patch_size or width % patch_size:
            raise ConfigError(f"PatchEmbed: img_size {(height, width)} is not divisible by patch_size {patch_size}")
        self.patch_size = patch_size
        self.img_size = (height, width)
        self.grid_size = self.grid_for(height, width)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, device=device, dtype=dtype)

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid of a `height` x `width` image.

        Raises:
            ConfigError: a side not divisible by `patch_size`.
        """
        if height % self.patch_size or width % self.patch_size:
            raise ConfigError(
                f"PatchEmbed: input image size {(height, width)} is not divisible by patch_size {self.patch_size}"
            )
        return height // self.patch_size, width // self.patch_size

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.proj.in_channels:
            raise ConfigError(
                f"PatchEmbed: expected input (B, {self.proj.in_channels}, H, W), got {tuple(x.shape)}"
            )
        self.grid_for(x.shape[2], x.shape[3])
        return self.proj(x).flatten(2).transpose(1, 2)

    def flops(self, height: int | None = None, width: int | None = None) -> int:
        """Per-sample FLOPs on a `height` x `width` image (default `img_size`)."""
        height, width = self.img_size if height is None else (height, width)
        self.grid_for(height, width)
        return conv2d_flops(self.proj, height, width)[0]


class Attention(nn.Module):
    """Multi-head self-attention with one fused `qkv` projection.

    Args:
        dim: token width `D`; `num_heads` must divide it.
        num_heads: `H`.
        qkv_bias: bias on the `qkv` projection (ViT and DeiT use one).

    Shapes:
        `forward(x (B, N, D), keep=None, attn_mask=None) -> (B, N, D)`;
        `forward_with_cls_attention(x) -> ((B, N, D), (B, N - 1))`.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, *, device=None, dtype=None) -> None:
        super().__init__()
        _positive_int("Attention", "dim", dim)
        _positive_int("Attention", "num_heads", num_heads)
        if dim % num_heads:
            raise ConfigError(f"Attention: num_heads {num_heads} does not divide dim {dim}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, device=device, dtype=dtype)
        self.proj = nn.Linear(dim, dim, device=device, dtype=dtype)

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, out: Tensor) -> Tensor:
        batch, _, tokens, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))

    def forward(self, x: Tensor, keep: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        q, k, v = self._heads(x)
        if keep is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = _keep_masked_attention(q * self.scale, k, v, keep, attn_mask)
        return self._merge(out)

    def forward_with_cls_attention(self, x: Tensor, attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The forward, plus how much the class token (token 0) attends to every other token,
        averaged over heads (EViT's token scores): `(B, N - 1)`, rows sum to at most 1.

        The class token's attention row is computed once more from the same `Q`, `K`
        (`2 H N d` FLOPs per sample, `cls_attention_flops`); the fused kernel keeps its own
        weights to itself."""
        q, k, v = self._heads(x)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        scores = (q[:, :, :1] * self.scale) @ k.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask[:, :, :1, :], float("-inf"))
        return self._merge(out), scores.softmax(dim=-1).mean(dim=1)[:, 0, 1:]

    def flops(self, tokens: int) -> int:
        """Per-sample FLOPs on `tokens` tokens."""
        return (linear_flops(self.qkv, tokens) + linear_flops(self.proj, tokens)
                + attention_flops(self.num_heads, tokens, tokens, self.head_dim))

    def cls_attention_flops(self, tokens: int) -> int:
        return 2 * self.num_heads * tokens * self.head_dim


def _keep_masked_attention(q: Tensor, k: Tensor, v: Tensor, keep: Tensor, attn_mask: Tensor | None) -> Tensor:
    """DynamicViT's masked softmax: `keep (B, N)` in [0, 1] weights every key except each
    query's own token, and a bool `attn_mask` (padding) removes the keys it forbids, own
    token included; computed stably (max subtracted) and with a small floor in the sum."""
    tokens = q.shape[-2]
    scores = q @ k.transpose(-2, -1)
    scores = scores - scores.amax(dim=-1, keepdim=True).detach()
    eye = torch.eye(tokens, dtype=q.dtype, device=q.device)
    weights = keep[:, None, None, :].to(q.dtype) * (1 - eye) + eye
    if attn_mask is not None:
        weights = weights * attn_mask.to(q.dtype)
    attn = scores.exp() * weights
    attn = attn / (attn.sum(dim=-1, keepdim=True) + 1e-6)
    return attn @ v


class Mlp(nn.Module):
    """`fc2(GELU(fc1(x)))`. Shapes: `(..., D) -> (..., D)`."""

    def __init__(self, dim: int, hidden: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, device=device, dtype=dtype)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def flops(self, tokens: int) -> int:
        return linear_flops(self.fc1, tokens) + linear_flops(self.fc2, tokens)


class TransformerBlock(nn.Module):
    """Pre-norm block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.

    Args:
        dim: token width `D`.
        num_heads: attention heads.
        mlp_ratio: MLP width `M = round(mlp_ratio * D)`.
        qkv_bias: bias on the `qkv` projection.
        mlp: a module to use in place of the MLP (`(..., D) -> (..., D)`, e.g. a mixture of
            experts); it must answer `flops(tokens)` for the block's cost.

    Shapes:
        `forward(x (B, N, D), keep=None, attn_mask=None) -> (B, N, D)`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 *, mlp: nn.Module | None = None, device=None, dtype=None) -> None:
        super().__init__()
        if not mlp_ratio > 0:
            raise ConfigError(f"TransformerBlock: mlp_ratio must be > 0, got {mlp_ratio!r}")
        factory = {"device": device, "dtype": dtype}
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **factory)
        self.attn = Attention(dim, num_heads, qkv_bias, **factory)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **factory)
        self.mlp = Mlp(dim, int(round(mlp_ratio * dim)), **factory) if mlp is None else mlp

    def forward(self, x: Tensor, keep: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), keep=keep, attn_mask=attn_mask)
        return x + self.mlp(self.norm2(x))

    def flops(self, tokens: int) -> int:
        """Per-sample FLOPs on `tokens` tokens."""
        return self.attn.flops(tokens) + self.mlp.flops(tokens)
