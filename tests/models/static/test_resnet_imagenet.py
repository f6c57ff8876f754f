"""ImageNet ResNets: torchvision's published figures recomputed, torchvision's state-dict
layout, costs against FlopCounterMode, classifier API, channels_last, input checks."""
import pytest
import torch
from torch import nn

from dynamicnets import ConfigError, create_model
from dynamicnets.flops import count_flops, counted_flops, traced_flops_and_shape
from dynamicnets.models import model_info
from dynamicnets.models.static import Bottleneck, ImageNetBasicBlock, ImageNetResNet, resnet_imagenet

IMAGENET = (3, 224, 224)
SMALL = (3, 64, 64)  # real forwards run here; the 224 figures are analytic or on meta tensors

# name, block, blocks per stage, our params and FLOPs (3x224x224, 1000 classes), and what
# torchvision publishes for its weights: `num_params`, and `_ops` (multiply-adds, in GFLOPS)
# with the 2-decimal figure of its model table.
FIGURES = [
    ("resnet18", ImageNetBasicBlock, (2, 2, 2, 2), 11_689_512, 3_628_146_688, 11_689_512, "1.814", "1.81"),
    ("resnet34", ImageNetBasicBlock, (3, 4, 6, 3), 21_797_672, 7_327_522_816, 21_797_672, "3.664", "3.66"),
    ("resnet50", Bottleneck, (3, 4, 6, 3), 25_557_032, 8_178_368_512, 25_557_032, "4.089", "4.09"),
]

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def bn_keys(prefix: str) -> list[str]:
    return [f"{prefix}.{suffix}" for suffix in BN]


def bn_layout(prefix: str, chans: int) -> dict[str, tuple[int, ...]]:
    return {key: () if key.endswith("num_batches_tracked") else (chans,) for key in bn_keys(prefix)}


def torchvision_layout(bottleneck: bool, counts, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a torchvision ResNet state dict, written from its layout rule: stem
    `conv1`/`bn1`; `layer{s}.{b}` blocks with `conv1, bn1, conv2, bn2 (, conv3, bn3)`;
    `downsample.0` (1x1 conv) / `.1` (BN) on a stage's first block where the stride or the
    width changes; `fc`."""
    expansion = 4 if bottleneck else 1
    layout = {"conv1.weight": (64, 3, 7, 7)}
    layout.update(bn_layout("bn1", 64))
    chans = 64
    for s, (planes, count) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        for b in range(count):
            p = f"layer{s}.{b}"
            if bottleneck:
                convs = [(chans, planes, 1), (planes, planes, 3), (planes, planes * 4, 1)]
            else:
                convs = [(chans, planes, 3), (planes, planes, 3)]
            for i, (cin, cout, k) in enumerate(convs, start=1):
                layout[f"{p}.conv{i}.weight"] = (cout, cin, k, k)
                layout.update(bn_layout(f"{p}.bn{i}", cout))
            out = planes * expansion
            if b == 0 and (s > 1 or chans != out):
                layout[f"{p}.downsample.0.weight"] = (out, chans, 1, 1)
                layout.update(bn_layout(f"{p}.downsample.1", out))
            chans = out
    layout["fc.weight"] = (num_classes, chans)
    layout["fc.bias"] = (num_classes,)
    return layout


# --- published figures -------------------------------------------------------------------

@pytest.mark.parametrize("name,block,counts,params,flops,tv_params,tv_ops,tv_gflops", FIGURES)
def test_published_cost_figures(name, block, counts, params, flops, tv_params, tv_ops, tv_gflops):
    model = create_model(name, device="meta")  # shapes are all the figures need
    assert isinstance(model, ImageNetResNet) and model.default_input_shape == IMAGENET
    assert [len(stage) for stage in model.stages] == list(counts)
    assert all(isinstance(blk, block) for stage in model.stages for blk in stage)
    assert n_params(model) == params == tv_params
    assert model.flops(IMAGENET) == flops
    # independent of the analytic walk: FlopCounterMode on a meta-tensor forward at 224
    assert traced_flops_and_shape(model, IMAGENET) == (flops, (1000,))
    assert model.flops_and_shape(IMAGENET) == (flops, (1000,))
    assert count_flops(model, IMAGENET) == flops
    # torchvision counts multiply-adds: half our FLOPs, equal at every digit it prints
    assert f"{flops / 2 / 1e9:.3f}" == tv_ops and f"{flops / 2 / 1e9:.2f}" == tv_gflops
    assert f"| {name} | {params:,} | {flops:,} | {flops // 2:,} |" in resnet_imagenet.__doc__


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_flops_equal_flop_counter_on_a_real_forward(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(1, *SMALL)
    with torch.no_grad():
        out = model(x)
    assert out.flops.shape == (1,) and out.flops.dtype == torch.float64
    assert int(out.flops[0]) == model.flops(SMALL) == counted_flops(model, x)


def test_every_block_costs_what_the_counter_sees():
    """Block by block, on an odd-sized input (rounding of every stride), both block types."""
    torch.manual_seed(0)
    for name in ("resnet18", "resnet50"):
        model = create_model(name, num_classes=5).eval()
        shape = (3, 45, 37)
        x = torch.randn(2, *shape)
        parts = model.cost_breakdown(shape)
        with torch.no_grad():
            assert counted_flops(model.forward_stem, x) == 2 * parts["stem"]
            h = model.forward_stem(x)
            assert h.shape == (2, 64, 12, 10)  # ceil(45/4), ceil(37/4)
            for stage, costs in zip(model.stages, parts["stages"]):
                for blk, cost in zip(stage, costs):
                    flops, out_shape = blk.flops_and_shape(tuple(h.shape[1:]))
                    assert flops == cost and counted_flops(blk, h) == 2 * cost
                    h = blk(h)
                    assert tuple(h.shape[1:]) == out_shape
            assert h.shape == (2, model.num_features, 2, 2)  # ceil(45/32), ceil(37/32)
            assert counted_flops(model.forward_head, h) == 2 * parts["head"]
        assert parts["stem"] + sum(map(sum, parts["stages"])) + parts["head"] == model.flops(shape)


@pytest.mark.parametrize("shape", [(3, 1, 1), (3, 17, 23), (1, 33, 32)])
def test_any_input_size(shape):
    model = create_model("resnet18", in_chans=shape[0], num_classes=3).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        out = model(x)
    assert out.logits.shape == (2, 3)
    assert int(out.flops.sum()) == counted_flops(model, x) == 2 * model.flops(shape)


def test_model_info_reports_the_table():
    info = model_info("resnet18")
    assert (info.family, info.default_input_shape) == ("static", IMAGENET)
    assert (info.params, info.flops) == (11_689_512, 3_628_146_688)
    assert info.description == "ResNet-18 for ImageNet (basic blocks 2-2-2-2)."


# --- torchvision's layout -------------------------------------------------------------------

def test_resnet18_state_dict_keys_are_torchvision_s():
    expected = ["conv1.weight", *bn_keys("bn1")]
    for s in (1, 2, 3, 4):
        for b in (0, 1):
            p = f"layer{s}.{b}"
            expected += [f"{p}.conv1.weight", *bn_keys(f"{p}.bn1"), f"{p}.conv2.weight", *bn_keys(f"{p}.bn2")]
            if s > 1 and b == 0:
                expected += [f"{p}.downsample.0.weight", *bn_keys(f"{p}.downsample.1")]
    expected += ["fc.weight", "fc.bias"]
    state = create_model("resnet18", device="meta").state_dict()
    assert list(state) == expected  # names and torchvision's order
    assert {k: tuple(v.shape) for k, v in state.items()} == torchvision_layout(False, (2, 2, 2, 2))


@pytest.mark.parametrize("name,bottleneck,counts", [("resnet34", False, (3, 4, 6, 3)),
                                                    ("resnet50", True, (3, 4, 6, 3))])
def test_state_dict_layout_of_the_deeper_models(name, bottleneck, counts):
    state = create_model(name, num_classes=7, device="meta").state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == torchvision_layout(bottleneck, counts, 7)


def test_a_checkpoint_in_torchvision_s_layout_loads_strictly(tmp_path):
    """A file holding exactly torchvision's keys and shapes loads with `strict=True` and
    the model then computes with those tensors."""
    generator = torch.Generator().manual_seed(0)
    checkpoint = {
        key: (torch.tensor(5) if key.endswith("tracked") else
              torch.rand(shape, generator=generator) + 0.5 if key.endswith("running_var") else
              torch.randn(shape, generator=generator))
        for key, shape in torchvision_layout(False, (2, 2, 2, 2), 4).items()
    }
    path = tmp_path / "resnet18.pth"
    torch.save(checkpoint, path)
    model = create_model("resnet18", num_classes=4)
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert torch.equal(model.layer3[0].downsample[0].weight, checkpoint["layer3.0.downsample.0.weight"])
    assert torch.equal(model.bn1.running_var, checkpoint["bn1.running_var"])
    with torch.no_grad():
        logits = model.eval()(torch.randn(1, *SMALL)).logits
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


def test_blocks_have_torchvision_s_attributes_and_v1_5_strides():
    model = create_model("resnet50", device="meta")
    first = model.layer2[0]
    assert first.stride == 2 and first.conv1.stride == (1, 1) and first.conv2.stride == (2, 2)
    assert first.conv3.stride == (1, 1) and first.downsample[0].stride == (2, 2)
    assert isinstance(first.downsample, nn.Sequential) and model.layer2[1].downsample is None
    assert model.layer1[0].downsample is not None and model.layer1[0].stride == 1  # 64 -> 256
    basic = create_model("resnet18", device="meta")
    assert basic.layer1[0].downsample is None and basic.layer2[0].conv1.stride == (2, 2)
    assert (basic.conv1.kernel_size, basic.conv1.stride, basic.conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert (basic.maxpool.kernel_size, basic.maxpool.stride, basic.maxpool.padding) == (3, 2, 1)


# --- classifier API, layout, blocks ----------------------------------------------------------

@pytest.mark.parametrize("name,features", [("resnet18", 512), ("resnet50", 2048)])
def test_forward_features_and_forward_head(name, features):
    torch.manual_seed(0)
    model = create_model(name, num_classes=6).eval()
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
        out = model(x)
    assert feats.shape == (2, features, 2, 2) and model.num_features == features
    torch.testing.assert_close(logits, out.logits)
    assert model.get_classifier() is model.fc
    model.reset_classifier(3)
    assert model.fc.out_features == 3 and "fc.weight" in model.state_dict()
    assert model(x).logits.shape == (2, 3)


@pytest.mark.parametrize("name,shape", [("resnet18", SMALL), ("resnet50", (3, 32, 32))])
def test_channels_last_gives_the_same_result_and_keeps_the_layout(name, shape):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = model(x).logits
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        features = model.forward_features(x_cl)
        out = model(x_cl)
    assert features.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.logits, expected, rtol=1e-4, atol=1e-5)

    model.train()
    model(x_cl).logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("block_cls,planes,stride,out", [
    (ImageNetBasicBlock, 8, 1, 8), (ImageNetBasicBlock, 16, 2, 16),
    (Bottleneck, 4, 1, 16), (Bottleneck, 8, 2, 32),
])
def test_block_is_relu_of_residual_plus_shortcut(block_cls, planes, stride, out):
    torch.manual_seed(0)
    block = block_cls(8, planes, stride).eval()
    x = torch.randn(2, 8, 9, 10)
    with torch.no_grad():
        y = block(x)
        assert y.shape == (2, out, -(-9 // stride), -(-10 // stride))
        torch.testing.assert_close(y, torch.relu(block.residual(x) + block.shortcut(x)))
    assert (block.in_chans, block.out_chans) == (8, out)
    assert (block.downsample is None) == (stride == 1 and out == 8)
    assert block.flops_and_shape((8, 9, 10)) == (counted_flops(block, x[:1]), tuple(y.shape[1:]))
    with pytest.raises(ConfigError, match="C = 8"):
        block.flops_and_shape((3, 9, 10))


def test_zero_init_residual_starts_every_block_as_the_identity():
    torch.manual_seed(0)
    model = ImageNetResNet(Bottleneck, (2, 1, 1, 1), num_classes=5, zero_init_residual=True).eval()
    assert all(not b.last_bn.weight.detach().any() for stage in model.stages for b in stage)
    x = torch.randn(2, 256, 8, 8).relu()
    blk = model.layer1[1]  # no downsample: the whole block is the identity on x >= 0
    with torch.no_grad():
        torch.testing.assert_close(blk(x), x)
        first = model.layer1[0]  # with one: relu(downsample(x)), the branch adds nothing
        x = torch.randn(2, 64, 8, 8)
        torch.testing.assert_close(first(x), torch.relu(first.shortcut(x)))


# --- errors ------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 64), (3, 1, 64, 64)])
def test_input_of_the_wrong_shape_raises_config_error(shape):
    model = create_model("resnet18", device="meta")
    with pytest.raises(ConfigError, match=r"'resnet18' expects per-sample inputs of shape \(C, H, W\)"):
        model(torch.empty(2, *shape, device="meta"))


def test_unbatched_input_is_refused():
    model = create_model("resnet18", device="meta")
    with pytest.raises(ConfigError, match="in_chans = 3"):
        model(torch.empty(3, 64, 64, device="meta"))


@pytest.mark.parametrize("kwargs,match", [
    ({"block": nn.Conv2d, "blocks_per_stage": (2, 2, 2, 2)}, "block must be"),
    ({"block": Bottleneck, "blocks_per_stage": (3, 4, 6)}, "4 counts"),
    ({"block": Bottleneck, "blocks_per_stage": (3, 0, 6, 3)}, r"blocks_per_stage\[1\]"),
    ({"block": ImageNetBasicBlock, "blocks_per_stage": (2, 2, 2, 2), "num_classes": 0}, "num_classes"),
])
def test_bad_configuration_raises_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ImageNetResNet(device="meta", **kwargs)


def test_registered_constructors_take_only_the_common_keywords():
    with pytest.raises(ConfigError, match="width"):
        create_model("resnet50", width=32)
