"""The static Vision Transformer: the figures of its module docstring table recomputed
(parameters counted, FLOPs by the FLOP counter), position-embedding interpolation for another
image size, shapes, timm names and errors."""
from __future__ import annotations

import re

import pytest
import torch

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import count_flops, counted_flops
from dynamicnets.models.transformers import vit as vit_module
from dynamicnets.models.transformers.vit import VisionTransformer, vit_cifar


def docstring_table() -> dict[str, dict[str, str]]:
    """The rows of the table in `vit.py`'s module docstring, by model name."""
    lines = [line for line in vit_module.__doc__.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        row = dict(zip(header, cells))
        rows[row["model"].strip("`")] = row
    return rows


def number(text: str) -> int:
    return int(text.replace(",", ""))


TABLE = docstring_table()


def test_the_table_lists_the_registered_sizes():
    assert set(TABLE) == {"vit_cifar", "deit_tiny_patch16_224"}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_docstring_figures_are_recomputed(name):
    row = TABLE[name]
    torch.manual_seed(0)
    model = create_model(name).eval()
    channels, height, width = (int(s) for s in row["input"].split("x"))
    assert model.default_input_shape == (channels, height, width)
    patches, cls = (int(s) for s in re.fullmatch(r"(\d+) \+ ?(\d+)", row["tokens"]).groups())
    assert model.num_tokens == patches + cls == model.tokens_for(model.default_input_shape)
    assert model.embed_dim == int(row["dim"]) and model.depth == int(row["depth"])
    block = model.blocks[0]
    assert block.attn.num_heads == int(row["heads"]) and block.mlp.fc1.out_features == int(row["MLP"])
    assert sum(p.numel() for p in model.parameters()) == number(row["params"])
    flops = number(row["FLOPs"])
    assert model.flops() == flops == count_flops(model, model.default_input_shape)
    x = torch.randn(2, channels, height, width)
    assert counted_flops(model, x) == 2 * flops
    out = model(x)
    assert out.logits.shape == (2, 1000 if name.startswith("deit") else 10)
    assert out.flops.dtype == torch.float64 and out.flops.tolist() == [float(flops)] * 2


def test_deit_tiny_multiply_adds_as_the_docstring_says():
    """1.25 G multiply-adds (2 FLOPs each) and 5.72 M parameters, timm's DeiT-Ti figures."""
    model = create_model("deit_tiny_patch16_224")
    assert round(model.flops() / 2 / 1e9, 2) == 1.25
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 5.72


def test_interpolated_position_embeddings_for_another_image_size():
    torch.manual_seed(0)
    model = vit_cifar().eval()
    x = torch.randn(2, 3, 64, 64)
    assert model.tokens_for((3, 64, 64)) == 1 + 16 * 16
    out = model(x)
    assert out.logits.shape == (2, 10) and bool(torch.isfinite(out.logits).all())
    features = model.forward_features(x)
    assert features.shape == (2, 257, 128)
    expected = model.flops((3, 64, 64))
    assert expected > model.flops()
    assert counted_flops(model, x) == 2 * expected
    assert out.flops.tolist() == [float(expected)] * 2


def test_position_embedding_interpolation_keeps_class_token_and_smooth_fields():
    model = vit_cifar()
    assert model.position_embedding(32, 32) is model.pos_embed
    with torch.no_grad():  # a field constant over the grid stays constant when resized
        model.pos_embed[:, 1:] = torch.linspace(-1, 1, 128)
    pos = model.position_embedding(64, 48)
    assert pos.shape == (1, 1 + 16 * 12, 128)
    torch.testing.assert_close(pos[:, 0], model.pos_embed[:, 0])
    torch.testing.assert_close(pos[0, 1:], torch.linspace(-1, 1, 128).expand(16 * 12, 128))


def test_non_square_input():
    model = vit_cifar().eval()
    x = torch.randn(1, 3, 32, 48)
    assert model.forward_features(x).shape == (1, 1 + 8 * 12, 128)
    assert counted_flops(model, x) == model.flops((3, 32, 48))


def test_size_not_divisible_by_the_patch_names_the_arguments():
    with pytest.raises(ConfigError, match=r"img_size \(30, 30\) is not divisible by patch_size 4"):
        vit_cifar(img_size=30)
    model = vit_cifar()
    with pytest.raises(ConfigError, match=r"\(30, 30\) is not divisible by patch_size 4"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ConfigError, match="patch_size 4"):
        model.flops((3, 30, 32))


@pytest.mark.parametrize("kwargs, name", [({"depth": 0}, "depth"), ({"embed_dim": -8}, "embed_dim"),
                                          ({"num_heads": 0}, "num_heads")])
def test_bad_sizes_name_the_argument(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        VisionTransformer(**kwargs)


def test_flops_expects_a_per_sample_shape():
    with pytest.raises(ConfigError, match=r"\(C, H, W\) with C = 3"):
        vit_cifar().flops((1, 32, 32))


def test_features_head_and_forward_agree():
    torch.manual_seed(0)
    model = vit_cifar(num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (3, 65, model.num_features)
    torch.testing.assert_close(model.forward_head(features), model(x).logits)
    torch.testing.assert_close(model.forward_head(features), model.head(features[:, 0]))
    tokens = model.embed(x)
    assert tokens.shape == (3, 65, 128)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token + model.pos_embed[:, :1]).expand(3, 1, 128)[:, 0])


def test_timm_state_dict_names():
    keys = set(vit_cifar().state_dict())
    assert {"patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.norm1.weight",
            "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.5.mlp.fc1.weight",
            "blocks.5.mlp.fc2.bias", "norm.weight", "head.weight", "head.bias"} <= keys
    assert not any(k.startswith("blocks.6.") for k in keys)


def test_every_parameter_gets_a_gradient():
    model = vit_cifar()
    model(torch.randn(2, 3, 32, 32)).logits.square().mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
