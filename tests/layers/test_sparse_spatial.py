"""Sparse spatial execution of residual blocks (`SparseBranch`): compact == masked for the
same hard mask (positions and tiles), per-sample FLOPs == `FlopCounterMode`, in-place and
memory formats, clear errors."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dynamicnets.errors import ConfigError
from dynamicnets.execution import Execution
from dynamicnets.layers.spatial_block import SparseBranch, SparseStrategy
from dynamicnets.models.static.resnet_cifar import BasicBlock

DT = torch.float64  # compact and masked differ only in summation order
CHANS = 6
HEIGHT, WIDTH = 13, 11  # no tile size > 1 used here divides both


class TinyBottleneck(nn.Module):
    """torchvision layout: 1x1 -> 3x3 -> 1x1, BN after each, identity shortcut."""

    def __init__(self, chans: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(chans, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, chans, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(chans)
        self.relu = nn.ReLU()
        self.downsample = None

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.relu(self.bn2(self.conv2(h)))
        return self.relu(self.bn3(self.conv3(h)) + x)


def randomise_bn(block: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is exercised."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                shape = m.running_mean.shape
                m.running_mean.copy_(0.5 * torch.randn(shape, generator=generator))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(shape, generator=generator))
                m.weight.copy_(1 + 0.3 * torch.randn(shape, generator=generator))
                m.bias.copy_(0.3 * torch.randn(shape, generator=generator))
    return block


def make_block(kind: str) -> nn.Module:
    torch.manual_seed(0)
    block = BasicBlock(CHANS, CHANS) if kind == "basic" else TinyBottleneck(CHANS, 4)
    return randomise_bn(block.to(DT)).eval()


def make_input(batch: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, CHANS, height, width, generator=generator, dtype=DT)


def make_mask(kind, batch: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 2) -> torch.Tensor:
    """`(B, H, W)` bool: none, all, random at a density, or a disc ("blob") per sample."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "blob":
        rows = torch.arange(height, dtype=DT).view(1, -1, 1)
        cols = torch.arange(width, dtype=DT).view(1, 1, -1)
        centre_r = torch.rand(batch, 1, 1, generator=generator, dtype=DT) * height
        centre_c = torch.rand(batch, 1, 1, generator=generator, dtype=DT) * width
        return (rows - centre_r) ** 2 + (cols - centre_c) ** 2 < 3.0 ** 2
    return torch.rand(batch, height, width, generator=generator) < kind


# (strategy, tile): positions; tiles of 1, tiles not dividing 13x11, a tile bigger than the map
STRATEGIES = [("positions", 8), ("tiles", 1), ("tiles", 4), ("tiles", 5), ("tiles", 16)]
STRATEGY_IDS = [f"{s}{t}" if s == "tiles" else s for s, t in STRATEGIES]
DENSITIES = [0.0, 0.1, 0.5, 1.0, "blob"]


@pytest.fixture(scope="module", params=["basic", "bottleneck"])
def branch(request):
    return SparseBranch(make_block(request.param), request.param)


# ------------------------------------------------------------------ compact == masked


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("strategy,tile", STRATEGIES, ids=STRATEGY_IDS)
def test_compact_equals_masked(branch, strategy, tile, batch, density):
    x = make_input(batch)
    mask = make_mask(density, batch)
    with torch.no_grad():
        masked = branch(x, mask, Execution.MASKED)
        compact = branch(x, mask, Execution.COMPACT, strategy=SparseStrategy(strategy), tile=tile)
        dense = branch.block(x)
    assert compact.shape == x.shape
    torch.testing.assert_close(compact, masked, rtol=0, atol=1e-10)
    torch.testing.assert_close(compact, torch.where(mask.unsqueeze(1), dense, x), rtol=0, atol=1e-10)
    keep = ~mask.unsqueeze(1).expand_as(x)
    assert torch.equal(compact[keep], x[keep])  # untouched positions are the input, bit for bit


def test_divisible_map_and_names_as_strings(branch):
    x, mask = make_input(2, 16, 8), make_mask(0.3, 2, 16, 8)
    with torch.no_grad():
        want = branch(x, mask, Execution.MASKED)
        for strategy, tile in [("tiles", 4), ("tiles", 8), ("tiles", 2), ("positions", 8)]:
            got = branch(x, mask, "compact", strategy=strategy, tile=tile)  # names, not enums
            torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
        torch.testing.assert_close(branch(x, mask, "masked"), want, rtol=0, atol=0)


def test_zero_one_float_and_int_masks_are_hard_masks(branch):
    x, mask = make_input(2), make_mask(0.5, 2)
    with torch.no_grad():
        want = branch(x, mask, Execution.COMPACT)
        for other in (mask.to(DT), mask.to(torch.float32), mask.long()):
            torch.testing.assert_close(branch(x, other, Execution.COMPACT), want, rtol=0, atol=0)
            torch.testing.assert_close(branch.flops(other, Execution.COMPACT), branch.flops(mask, Execution.COMPACT))


def test_compact_with_autograd_on_gives_the_same_values(branch):
    x, mask = make_input(2), make_mask(0.5, 2)
    with torch.no_grad():
        want = branch(x, mask, Execution.MASKED)
    for strategy, tile in STRATEGIES[:3]:
        got = branch(x, mask, Execution.COMPACT, strategy=strategy, tile=tile)
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-10)


def test_masked_blends_a_soft_mask():
    branch = SparseBranch(make_block("basic"))
    x = make_input(2)
    soft = torch.rand(2, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3), dtype=DT)
    with torch.no_grad():
        got = branch(x, soft, Execution.MASKED)
        want = x + soft.unsqueeze(1) * (branch.block(x) - x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_folded_weights_follow_a_batchnorm_update():
    """A training-mode forward changes the running statistics without a version bump."""
    block = make_block("basic")
    branch = SparseBranch(block)
    x, mask = make_input(2), make_mask(0.5, 2)
    with torch.no_grad():
        branch(x, mask, Execution.COMPACT)  # folds and caches
        block.train()
        block(3 * x + 1)  # new running statistics
        block.eval()
        torch.testing.assert_close(branch(x, mask, Execution.COMPACT), branch(x, mask, Execution.MASKED),
                                   rtol=0, atol=1e-10)
        block.conv1.conv.weight.mul_(2)  # an in-place weight change
        torch.testing.assert_close(branch(x, mask, Execution.COMPACT), branch(x, mask, Execution.MASKED),
                                   rtol=0, atol=1e-10)
        block.conv1.conv.weight = nn.Parameter(-block.conv1.conv.weight)  # a replaced parameter
        torch.testing.assert_close(branch(x, mask, Execution.COMPACT), branch(x, mask, Execution.MASKED),
                                   rtol=0, atol=1e-10)
        block.float()  # every tensor converted in place (same objects, new data)
        got = branch(x.float(), mask, Execution.COMPACT)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, branch(x.float(), mask, Execution.MASKED), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ FLOPs


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("strategy,tile", STRATEGIES, ids=STRATEGY_IDS)
def test_per_sample_flops_match_the_counter(branch, strategy, tile, density):
    batch = 3
    x, mask = make_input(batch), make_mask(density, batch)
    flops = branch.flops(mask, Execution.COMPACT, strategy=strategy, tile=tile)
    assert flops.shape == (batch,) and flops.dtype == torch.float64
    with torch.no_grad():
        for i in range(batch):  # one sample at a time: the per-sample split
            got = counted(lambda: branch(x[i:i + 1], mask[i:i + 1], Execution.COMPACT, strategy=strategy, tile=tile))
            assert got == flops[i].item()
        whole = counted(lambda: branch(x, mask, Execution.COMPACT, strategy=strategy, tile=tile))
    assert whole == flops.sum().item()
    if density == 0.0:
        assert whole == 0
    full = branch.full_flops(HEIGHT, WIDTH)
    if strategy == "positions" and density == 1.0:
        assert flops.tolist() == [full] * batch  # all positions: exactly the dense block


def test_masked_flops_are_the_dense_block(branch):
    x, mask = make_input(2), make_mask(0.1, 2)
    flops = branch.flops(mask, Execution.MASKED)
    with torch.no_grad():
        assert counted(lambda: branch(x, mask, Execution.MASKED)) == flops.sum().item()
        assert counted(lambda: branch.block(x[:1])) == branch.full_flops(HEIGHT, WIDTH) == flops[0].item()


# ------------------------------------------------------------------ in place, memory formats


@pytest.mark.parametrize("strategy,tile", STRATEGIES[:3], ids=STRATEGY_IDS[:3])
def test_inplace_writes_into_a_channels_last_input(branch, strategy, tile):
    x, mask = make_input(3), make_mask(0.5, 3)
    with torch.no_grad():
        want = branch(x, mask, Execution.COMPACT, strategy=strategy, tile=tile)
        target = x.clone(memory_format=torch.channels_last)
        got = branch(target, mask, Execution.COMPACT, strategy=strategy, tile=tile, inplace=True)
    assert got.data_ptr() == target.data_ptr()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(target, want, rtol=0, atol=0)


@pytest.mark.parametrize("strategy,tile", STRATEGIES[:3], ids=STRATEGY_IDS[:3])
def test_inplace_leaves_other_inputs_alone(branch, strategy, tile):
    """A contiguous (NCHW) input is copied either way; with autograd on nothing is in place."""
    x, mask = make_input(3), make_mask(0.5, 3)
    with torch.no_grad():
        want = branch(x, mask, Execution.COMPACT, strategy=strategy, tile=tile)
        source = x.clone()
        got = branch(source, mask, Execution.COMPACT, strategy=strategy, tile=tile, inplace=True)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(source, x)
    source = x.clone(memory_format=torch.channels_last)
    got = branch(source, mask, Execution.COMPACT, strategy=strategy, tile=tile, inplace=True)
    torch.testing.assert_close(got.detach(), want, rtol=0, atol=1e-10)
    assert torch.equal(source, x)


@pytest.mark.parametrize("strategy,tile", STRATEGIES[:3], ids=STRATEGY_IDS[:3])
def test_channels_last_and_contiguous_inputs_agree(branch, strategy, tile):
    x, mask = make_input(3), make_mask("blob", 3)
    with torch.no_grad():
        plain = branch(x, mask, Execution.COMPACT, strategy=strategy, tile=tile)
        last = branch(x.contiguous(memory_format=torch.channels_last), mask, Execution.COMPACT,
                      strategy=strategy, tile=tile)
        masked = branch(x.contiguous(memory_format=torch.channels_last), mask, Execution.MASKED)
    torch.testing.assert_close(plain, last, rtol=0, atol=0)
    torch.testing.assert_close(masked, plain, rtol=0, atol=1e-10)


# ------------------------------------------------------------------ bad input


def test_mask_of_the_wrong_shape_is_refused():
    branch = SparseBranch(make_block("basic"), "stage 1 block 2")
    x = make_input(2)
    for bad in (torch.ones(2, HEIGHT + 1, WIDTH, dtype=torch.bool), torch.ones(2, 1, HEIGHT, WIDTH, dtype=torch.bool),
                torch.ones(3, HEIGHT, WIDTH, dtype=torch.bool)):
        for execution in Execution.MASKED, Execution.COMPACT:
            with pytest.raises(ConfigError, match=r"stage 1 block 2.*spatial mask of shape \(B, H, W\)"):
                branch(x, bad, execution)


def test_soft_mask_in_compact_execution_is_refused():
    branch = SparseBranch(make_block("basic"), "blk")
    x, soft = make_input(1), torch.full((1, HEIGHT, WIDTH), 0.5, dtype=DT)
    with pytest.raises(ConfigError, match="blk: compact execution needs a hard"):
        branch(x, soft, Execution.COMPACT)
    with pytest.raises(ConfigError, match="blk: compact execution needs a hard"):
        branch.flops(soft, Execution.COMPACT)


def test_unknown_strategy_execution_and_tile_are_refused():
    branch = SparseBranch(make_block("basic"))
    x, mask = make_input(1), make_mask(0.5, 1)
    with pytest.raises(ConfigError, match="sparse strategy must be one of.*'positions'.*'tiles'.*got 'rows'"):
        branch(x, mask, Execution.COMPACT, strategy="rows")
    with pytest.raises(ConfigError, match="sparse strategy.*got 'rows'"):
        branch.flops(mask, Execution.COMPACT, strategy="rows")
    for tile in (0, -2, 2.5, None):
        with pytest.raises(ConfigError, match=f"'tiles' strategy needs a tile size >= 1, got {tile!r}"):
            branch(x, mask, Execution.COMPACT, strategy="tiles", tile=tile)
        with pytest.raises(ConfigError, match="tile size >= 1"):
            branch.flops(mask, Execution.COMPACT, strategy="tiles", tile=tile)
    with pytest.raises(ConfigError, match="execution must be one of.*got 'sparse'"):
        branch(x, mask, "sparse")


def test_blocks_that_cannot_run_sparsely_are_refused():
    with pytest.raises(ConfigError, match="BasicBlock: a block with a projection shortcut"):
        SparseBranch(BasicBlock(4, 8))
    with pytest.raises(ConfigError, match="BasicBlock: a block with a projection shortcut"):
        SparseBranch(BasicBlock(4, 4, stride=2))
    projected = TinyBottleneck(4, 2)
    projected.downsample = nn.Conv2d(4, 4, 1)
    with pytest.raises(ConfigError, match="TinyBottleneck: a block with a projection shortcut"):
        SparseBranch(projected)
    with pytest.raises(ConfigError, match=r"TinyBottleneck conv2: .*stride 1.*got kernel \(3, 3\), stride \(2, 2\)"):
        SparseBranch(TinyBottleneck(4, 2, stride=2))
    with pytest.raises(ConfigError, match="Linear: sparse spatial execution reads a residual branch"):
        SparseBranch(nn.Linear(3, 3))


def test_norms_that_cannot_be_folded_are_refused():
    no_norm = TinyBottleneck(4, 2)
    no_norm.bn2 = nn.Identity()
    with pytest.raises(ConfigError, match="TinyBottleneck bn2: .*BatchNorm2d with running statistics.*Identity"):
        SparseBranch(no_norm)
    batch_stats = TinyBottleneck(4, 2)
    batch_stats.bn1 = nn.BatchNorm2d(2, track_running_stats=False)
    with pytest.raises(ConfigError, match="TinyBottleneck bn1: .*without running statistics"):
        SparseBranch(batch_stats)


def test_folded_weights_follow_a_parametrized_weight():
    """A parametrized weight (weight norm, pruning) is no entry of `_parameters`: its
    change is seen through the attribute, not missed."""
    block = make_block("basic")
    nn.utils.parametrizations.weight_norm(block.conv1.conv)
    branch = SparseBranch(block)
    x, mask = make_input(2), make_mask(0.5, 2)
    with torch.no_grad():
        branch(x, mask, Execution.COMPACT)  # folds and caches
        block.conv1.conv.parametrizations.weight.original0.mul_(3)  # the norm: the weight changes
        torch.testing.assert_close(branch(x, mask, Execution.COMPACT), branch(x, mask, Execution.MASKED),
                                   rtol=0, atol=1e-10)


def test_folded_weights_follow_a_parameter_replaced_twice():
    """The second replacement can get the memory, hence the `id`, of the folded one (with
    the same version, 0): still refolded."""
    block = make_block("basic")
    branch = SparseBranch(block)
    x, mask = make_input(2), make_mask(0.5, 2)
    conv = block.conv1.conv
    weights = [s * conv.weight.detach() for s in (1.0, 2.0, 3.0)]
    with torch.no_grad():
        for _ in range(3):
            conv.weight = nn.Parameter(weights[0].clone())
            branch(x, mask, Execution.COMPACT)  # folds and caches
            conv.weight = nn.Parameter(weights[1].clone())
            conv.weight = nn.Parameter(weights[2].clone())
            torch.testing.assert_close(branch(x, mask, Execution.COMPACT), branch(x, mask, Execution.MASKED),
                                       rtol=0, atol=1e-10)
