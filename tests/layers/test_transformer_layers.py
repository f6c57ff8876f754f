"""ViT building blocks: PatchEmbed shapes and errors, Attention against a hand-written
softmax(QK^T / sqrt(d)) V per head (no mask, padding mask, DynamicViT's keep masking), the
class-token attention scores, and every block's FLOPs against the FLOP counter."""
from __future__ import annotations

import math

import pytest
import torch

from dynamicnets import ConfigError
from dynamicnets.flops import counted_flops
from dynamicnets.layers.transformer import Attention, Mlp, PatchEmbed, TransformerBlock

DIM, HEADS = 24, 3


def reference_attention(attn: Attention, x: torch.Tensor, allowed: torch.Tensor | None = None,
                        key_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention written out: per head `h`, `softmax(Q_h K_h^T / sqrt(d)) V_h`,
    heads concatenated, then the output projection.

    `allowed (B, N, N)` bool removes keys from each query's softmax; `key_weights (B, N, N)`
    multiplies the exponentials before normalising (DynamicViT's masked softmax)."""
    _, _, dim = x.shape
    d = dim // attn.num_heads
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
    heads = []
    for h in range(attn.num_heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[..., cols] @ k[..., cols].transpose(-2, -1) / math.sqrt(d)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        if key_weights is None:
            probs = scores.softmax(dim=-1)
        else:
            e = (scores - scores.amax(dim=-1, keepdim=True)).exp() * key_weights
            probs = e / e.sum(dim=-1, keepdim=True)
        heads.append(probs @ v[..., cols])
    return torch.cat(heads, dim=-1) @ attn.proj.weight.T + attn.proj.bias


@pytest.fixture
def attn() -> Attention:
    torch.manual_seed(0)
    return Attention(DIM, HEADS, dtype=torch.float64).eval()


def x64(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


# --- PatchEmbed ------------------------------------------------------------------------------


@pytest.mark.parametrize("img_size, patch, size, grid", [
    (32, 4, (32, 32), (8, 8)),
    (224, 16, (224, 224), (14, 14)),
    ((32, 48), 8, (32, 48), (4, 6)),
    (32, 4, (64, 48), (16, 12)),  # another size than the default, divisible by the patch
])
def test_patch_embed_shapes(img_size, patch, size, grid):
    embed = PatchEmbed(img_size, patch, in_chans=3, embed_dim=16)
    out = embed(torch.randn(2, 3, *size))
    assert out.shape == (2, grid[0] * grid[1], 16)
    assert embed.grid_for(*size) == grid
    assert embed.flops(*size) == counted_flops(embed, torch.randn(1, 3, *size))


def test_patch_embed_tokens_are_the_patches_in_row_major_order():
    embed = PatchEmbed(8, 4, in_chans=1, embed_dim=1)
    with torch.no_grad():
        embed.proj.weight.zero_()
        embed.proj.weight[0, 0, 0, 0] = 1.0  # each token = its patch's top-left pixel
        embed.proj.bias.zero_()
    image = torch.arange(64.0).reshape(1, 1, 8, 8)
    assert embed(image)[0, :, 0].tolist() == [0.0, 4.0, 32.0, 36.0]


def test_patch_embed_size_not_divisible_names_the_arguments():
    with pytest.raises(ConfigError, match=r"img_size \(30, 30\).*patch_size 4"):
        PatchEmbed(30, 4)
    with pytest.raises(ConfigError, match=r"img_size \(32, 30\).*patch_size 4"):
        PatchEmbed((32, 30), 4)
    embed = PatchEmbed(32, 4, in_chans=3, embed_dim=8)
    with pytest.raises(ConfigError, match=r"\(30, 32\).*patch_size 4"):
        embed(torch.randn(1, 3, 30, 32))
    with pytest.raises(ConfigError, match=r"patch_size 4"):
        embed.flops(32, 30)


@pytest.mark.parametrize("kwargs, name", [
    ({"patch_size": 0}, "patch_size"), ({"in_chans": 0}, "in_chans"),
    ({"embed_dim": 2.5}, "embed_dim"), ({"img_size": -32}, "img_size"),
])
def test_patch_embed_bad_sizes_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        PatchEmbed(**{"img_size": 32, "patch_size": 4, **kwargs})


def test_patch_embed_wrong_channels_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"expected input \(B, 3, H, W\)"):
        PatchEmbed(32, 4, in_chans=3)(torch.randn(1, 1, 32, 32))


# --- Attention -----------------------------------------------------------------------------


def test_attention_equals_reference_without_mask(attn):
    x = x64(2, 7, DIM)
    torch.testing.assert_close(attn(x), reference_attention(attn, x))


def test_attention_with_padding_mask_equals_each_sample_unpadded(attn):
    lengths = [7, 4, 1]
    x = x64(3, 7, DIM)
    valid = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    out = attn(x, attn_mask=valid[:, None, None, :])
    allowed = valid[:, None, :].expand(3, 7, 7)
    torch.testing.assert_close(out, reference_attention(attn, x, allowed))
    for i, n in enumerate(lengths):  # real tokens never see padding
        torch.testing.assert_close(out[i, :n], attn(x[i:i + 1, :n])[0])


def test_attention_with_full_mask_per_query(attn):
    x = x64(2, 5, DIM)
    allowed = torch.rand(2, 5, 5) < 0.6
    allowed |= torch.eye(5, dtype=torch.bool)  # every query keeps at least itself
    torch.testing.assert_close(attn(x, attn_mask=allowed[:, None]), reference_attention(attn, x, allowed))


def test_keep_all_ones_is_plain_attention(attn):
    x = x64(2, 6, DIM)
    torch.testing.assert_close(attn(x, keep=torch.ones(2, 6, dtype=torch.float64)), attn(x),
                               atol=1e-6, rtol=1e-6)


def test_keep_masking_kept_tokens_see_only_kept_tokens(attn):
    """DynamicViT's property: a kept token's output is attention over the kept tokens only,
    exactly what running the kept tokens alone gives; a dropped token attends the kept
    tokens and itself."""
    torch.manual_seed(1)
    x = x64(3, 8, DIM)
    keep = torch.rand(3, 8) < 0.5
    keep[:, 0] = True
    keep[2] = True  # one sample keeps everything
    out = attn(x, keep=keep.double())
    for i in range(3):
        kept = keep[i].nonzero().flatten()
        torch.testing.assert_close(out[i, kept], attn(x[i:i + 1, kept])[0], atol=1e-6, rtol=1e-6)
        for j in (~keep[i]).nonzero().flatten().tolist():
            own = torch.cat([kept, torch.tensor([j])]).sort().values
            alone = attn(x[i:i + 1, own])[0]
            torch.testing.assert_close(out[i, j], alone[(own == j).nonzero().item()], atol=1e-6, rtol=1e-6)


def test_soft_keep_equals_reference_weighted_softmax_and_gets_gradients(attn):
    x = x64(2, 5, DIM)
    keep = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    eye = torch.eye(5, dtype=torch.float64)
    weights = keep.detach()[:, None, :] * (1 - eye) + eye
    out = attn(x, keep=keep)
    torch.testing.assert_close(out, reference_attention(attn, x, key_weights=weights), atol=1e-6, rtol=1e-6)
    out.sum().backward()
    assert keep.grad is not None and keep.grad.abs().sum() > 0


def test_keep_with_padding_mask_equals_keep_on_unpadded_samples(attn):
    """The two masks compose: padding is removed on top of the keep decisions."""
    lengths = [6, 4]
    x = x64(2, 6, DIM)
    valid = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
    keep = torch.tensor([[1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 1, 1]], dtype=torch.float64)
    out = attn(x, keep=keep, attn_mask=valid[:, None, None, :])
    for i, n in enumerate(lengths):
        torch.testing.assert_close(out[i, :n], attn(x[i:i + 1, :n], keep=keep[i:i + 1, :n])[0],
                                   atol=1e-6, rtol=1e-6)


def test_class_attention_scores(attn):
    x = x64(2, 6, DIM)
    out, scores = attn.forward_with_cls_attention(x)
    torch.testing.assert_close(out, attn(x))
    assert scores.shape == (2, 5)
    # the class token's full attention row (itself included), averaged over heads
    d = DIM // HEADS
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias
    q, k = qkv[..., :DIM], qkv[..., DIM:2 * DIM]
    rows = torch.stack([(q[:, :1, h * d:(h + 1) * d] @ k[..., h * d:(h + 1) * d].transpose(-2, -1)
                         / math.sqrt(d)).softmax(-1)[:, 0] for h in range(HEADS)]).mean(0)
    torch.testing.assert_close(scores, rows[:, 1:])
    # with all tokens, the class token's attention (to itself and the patches) sums to 1
    torch.testing.assert_close(scores.sum(-1) + rows[:, 0], torch.ones(2, dtype=torch.float64))
    assert bool((scores > 0).all()) and bool((scores.sum(-1) < 1).all())


def test_class_attention_scores_ignore_padding(attn):
    x = x64(2, 6, DIM)
    valid = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    out, scores = attn.forward_with_cls_attention(x, attn_mask=valid[:, None, None, :])
    assert bool((scores[1, 3:] == 0).all())
    alone_out, alone_scores = attn.forward_with_cls_attention(x[1:, :4])
    torch.testing.assert_close(scores[1, :3], alone_scores[0])
    torch.testing.assert_close(out[1, :4], alone_out[0])


def test_attention_bad_heads_is_a_clear_error():
    with pytest.raises(ConfigError, match="num_heads 5 does not divide dim 24"):
        Attention(24, 5)
    with pytest.raises(ConfigError, match="num_heads"):
        Attention(24, 0)


@pytest.mark.parametrize("tokens", [1, 5, 17])
def test_attention_flops_match_the_counter(tokens):
    attn = Attention(DIM, HEADS).eval()
    x = torch.randn(3, tokens, DIM)
    assert 3 * attn.flops(tokens) == counted_flops(attn, x)
    masked = counted_flops(attn, x, keep=torch.ones(3, tokens))  # the training path: same products
    assert masked == 3 * attn.flops(tokens)
    cls = counted_flops(attn.forward_with_cls_attention, x)
    assert cls == 3 * (attn.flops(tokens) + attn.cls_attention_flops(tokens))


# --- Mlp and TransformerBlock ----------------------------------------------------------------


def test_mlp_equals_reference_and_counts_its_flops():
    mlp = Mlp(8, 20)
    x = torch.randn(4, 3, 8)
    ref = torch.nn.functional.gelu(x @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias
    torch.testing.assert_close(mlp(x), ref)
    assert 4 * mlp.flops(3) == counted_flops(mlp, x)


@pytest.mark.parametrize("tokens", [1, 2, 9, 65, 197])
def test_block_flops_equal_counted(tokens):
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, mlp_ratio=2.5).eval()
    assert block.flops(tokens) == counted_flops(block, torch.randn(1, tokens, DIM))
    assert 2 * block.flops(tokens) == counted_flops(block, torch.randn(2, tokens, DIM))


def test_block_flops_formula_of_the_module_docstring():
    """`2 N (4 D^2 + 2 D M)` for the linears and `4 N^2 D` for attention."""
    dim, mlp, tokens = 192, 768, 197
    block = TransformerBlock(dim, 3, mlp_ratio=4.0)
    assert block.flops(tokens) == 2 * tokens * (4 * dim ** 2 + 2 * dim * mlp) + 4 * tokens ** 2 * dim


def test_block_equals_reference_and_takes_decisions():
    torch.manual_seed(0)
    block = TransformerBlock(DIM, HEADS, mlp_ratio=2.0, dtype=torch.float64).eval()
    x = x64(2, 6, DIM)
    h = x + reference_attention(block.attn, block.norm1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.norm2(h)))
    keep = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 0, 1, 1, 1]], dtype=torch.bool)
    masked = block(x, keep=keep.double())
    for i in range(2):  # masked (training) equals compact (kept tokens alone) on the kept tokens
        kept = keep[i].nonzero().flatten()
        torch.testing.assert_close(masked[i, kept], block(x[i:i + 1, kept])[0], atol=1e-6, rtol=1e-6)


def test_block_with_its_own_mlp_counts_it():
    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(DIM, DIM)

        def forward(self, x):
            return self.fc(x)

        def flops(self, tokens):
            return 2 * tokens * DIM * DIM

    block = TransformerBlock(DIM, HEADS, mlp=Half())
    assert isinstance(block.mlp, Half)
    assert block.flops(5) == counted_flops(block, torch.randn(1, 5, DIM))


def test_block_bad_mlp_ratio_names_it():
    with pytest.raises(ConfigError, match="mlp_ratio"):
        TransformerBlock(DIM, HEADS, mlp_ratio=0)


def test_timm_module_names():
    names = {n for n, _ in TransformerBlock(DIM, HEADS).named_parameters()}
    assert {"norm1.weight", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "norm2.bias",
            "mlp.fc1.weight", "mlp.fc2.bias"} <= names
