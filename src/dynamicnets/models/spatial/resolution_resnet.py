"""A CIFAR ResNet that runs at several input resolutions, with private BatchNorms per resolution.

The statistics of a feature map depend on the resolution it was computed at (a 16x16 image
gives other activations than the same image at 32x32), so a network that shares its
convolutions across resolutions keeps one BatchNorm per resolution, as RS-Net does (Wang et
al., "Resolution Switchable Networks", ECCV 2020) and as slimmable networks keep one per width.

`resolution_resnet(...)` builds an ordinary `CifarResNet` whose BatchNorms are replaced by
`ResolutionBatchNorm2d` (one `BatchNorm2d` per resolution); `run_trunk(net, x, index)` runs
its stem and stages with the norms of resolution `index`. Costs are the `CifarResNet`'s
(`net.cost_breakdown` is unchanged: norms are free). A plain `CifarResNet`'s state_dict loads
into it (`net.load_state_dict(plain.state_dict())`): each plain BatchNorm's tensors go to
every resolution's norm, so every resolution starts as the plain network.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..static.conv_norm_act import ConvNormAct
from ..static.resnet_cifar import BasicBlock, CifarResNet


class ResolutionBatchNorm2d(nn.Module):
    """One `BatchNorm2d` per resolution; `forward(x, index)` normalises with resolution `index`'s.

    Args:
        num_features: channels.
        count: number of resolutions.

    A plain `BatchNorm2d`'s state (`weight`, `bias`, `running_mean`, ... at this module's
    prefix) loads into every one of its norms.

    Shapes:
        `(B, num_features, H, W)` -> same.
    """

    def __init__(self, num_features: int, count: int, *, device=None, dtype=None) -> None:
        super().__init__()
        self.bns = nn.ModuleList(nn.BatchNorm2d(num_features, device=device, dtype=dtype) for _ in range(count))
        self._register_load_state_dict_pre_hook(self._spread_plain_norm)

    def _spread_plain_norm(self, state_dict, prefix, *args) -> None:
        for name in list(self.bns[0].state_dict()):
            plain = state_dict.pop(prefix + name, None)
            if plain is not None:
                for i in range(len(self.bns)):
                    state_dict.setdefault(f"{prefix}bns.{i}.{name}", plain)

    def forward(self, x: Tensor, index: int) -> Tensor:
        return self.bns[index](x)


def resolution_resnet(depth: int, num_classes: int, in_chans: int, width: int, count: int, *,
                      device=None, dtype=None) -> CifarResNet:
    """A `CifarResNet` of `depth` whose every BatchNorm is a `ResolutionBatchNorm2d` of `count`
    norms (`count=1`: one shared norm). Run it with `run_trunk`, not its own `forward`."""
    net = CifarResNet(depth, num_classes, in_chans, width, device=device, dtype=dtype)
    for module in net.modules():
        if isinstance(module, ConvNormAct):
            module.bn = ResolutionBatchNorm2d(module.bn.num_features, count, device=device, dtype=dtype)
    return net


def _conv_norm_act(layer: ConvNormAct, x: Tensor, index: int) -> Tensor:
    return layer.act(layer.bn(layer.conv(x), index))


def _block(block: BasicBlock, x: Tensor, index: int) -> Tensor:
    residual = _conv_norm_act(block.conv2, _conv_norm_act(block.conv1, x, index), index)
    shortcut = _conv_norm_act(block.shortcut, x, index) if isinstance(block.shortcut, ConvNormAct) else x
    return block.act(residual + shortcut)


def run_trunk(net: CifarResNet, x: Tensor, index: int) -> Tensor:
    """Stem and stages of a `resolution_resnet` with the norms of resolution `index`.

    Shapes:
        `(B, in_chans, H, W) -> (B, 4 * width, ceil(H / 4), ceil(W / 4))`.
    """
    x = _conv_norm_act(net.stem, x, index)
    for blocks in net.stages:
        for block in blocks:
            x = _block(block, x, index)
    return x
