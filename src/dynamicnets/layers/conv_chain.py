"""A residual branch as a chain of convolutions with BatchNorm folded in: what sparse
spatial execution runs.

Sparse execution (`sparse_positions`, `sparse_tiles`) computes a residual branch on part
of the feature map only, as matrix products over gathered positions or convolutions over
gathered tiles. It does not call the block's modules: it reads the branch as a list of
`ConvStep`s (weight and bias with the inference BatchNorm folded in, kernel size, ReLU or
not) and runs them itself. `branch_layers(block)` reads the branch from the blocks the
library uses (CIFAR `BasicBlock` of `ConvNormAct`s, and torchvision-layout basic and
bottleneck blocks with `conv1, bn1, conv2, bn2[, conv3, bn3]`).

Folding costs a pass over the weights, so `FoldedSteps` keeps the folded tensors and
folds again only when a parameter or BN statistic changed (optimizer steps and loading a
state dict bump the tensors' version counters; a BN update in training mode bumps the
norm's batch counter).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ConvStep:
    """One stride-1, 'same'-padded convolution of a residual branch, BN folded in.

    Attributes:
        weight: `(C_out, C_in, k, k)`, odd `k`.
        bias: `(C_out,)`.
        relu: apply ReLU after the convolution.
    """

    weight: Tensor
    bias: Tensor
    relu: bool

    @property
    def kernel_size(self) -> int:
        return self.weight.shape[-1]

    @property
    def reach(self) -> int:
        """How many positions away from an output this step reads its input: `k // 2`."""
        return self.weight.shape[-1] // 2

    def flops_per_position(self) -> int:
        """FLOPs of one output position (2 per multiply-add, as `FlopCounterMode`)."""
        c_out, c_in, kh, kw = self.weight.shape
        return 2 * c_out * c_in * kh * kw

    def gemm_weight(self) -> Tensor:
        """The weight as a `(k * k * C_in, C_out)` matrix whose rows follow a gathered
        neighbourhood: kernel row, kernel column, then input channel (made once per step:
        a step holds one fold of the weights)."""
        return self._gemm_weight

    @cached_property
    def _gemm_weight(self) -> Tensor:
        c_out = self.weight.shape[0]
        return self.weight.permute(2, 3, 1, 0).reshape(-1, c_out)


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[Tensor, Tensor]:
    """`conv` followed by `bn` (inference statistics) as one convolution's weight and bias.

    Returns:
        `(weight (C_out, C_in, k, k), bias (C_out,))`.
    """
    weight = conv.weight
    bias = conv.bias if conv.bias is not None else weight.new_zeros(weight.shape[0])
    if bn is None:
        return weight, bias
    mean = bn.running_mean if bn.running_mean is not None else torch.zeros_like(bias)
    var = bn.running_var if bn.running_var is not None else torch.ones_like(bias)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = bn.bias if bn.bias is not None else torch.zeros_like(bias)
    return weight * scale.view(-1, 1, 1, 1), (bias - mean) * scale + shift


# (conv, bn or None, relu after) for each convolution of a residual branch
BranchLayers = list[tuple[nn.Conv2d, nn.BatchNorm2d | None, bool]]


def _check_conv(conv: nn.Module, where: str) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"{where}: expected an nn.Conv2d, got {type(conv).__name__}")
    k = conv.kernel_size
    if (conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or k[0] != k[1]
            or k[0] % 2 == 0 or conv.padding != (k[0] // 2, k[1] // 2)):
        raise ConfigError(
            f"{where}: sparse spatial execution needs square odd kernels with stride 1, "
            f"dilation 1, groups 1 and padding k // 2; got kernel {k}, stride {conv.stride}, "
            f"padding {conv.padding}, dilation {conv.dilation}, groups {conv.groups}"
        )


def _check_norm(bn: nn.Module | None, where: str) -> None:
    if bn is None:
        return
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None or bn.running_var is None:
        raise ConfigError(f"{where}: sparse spatial execution folds a BatchNorm2d with running "
                          f"statistics into its convolution; got {type(bn).__name__}"
                          + (" without running statistics" if isinstance(bn, nn.BatchNorm2d) else ""))


def branch_layers(block: nn.Module) -> BranchLayers:
    """The residual branch of `block` as `(conv, bn, relu)` triples, shallowest first.

    Accepts a block with `ConvNormAct` children `conv1, conv2` (the CIFAR `BasicBlock`) or
    the torchvision layout (`conv1, bn1, conv2, bn2` and optionally `conv3, bn3`). The
    block must keep its shape (identity shortcut): only such blocks can leave positions
    unchanged.

    Raises:
        ConfigError: naming the block type, when it has another layout, a projection
            shortcut, a convolution sparse execution cannot run or a norm it cannot fold
            (anything but a `BatchNorm2d` with running statistics).
    """
    name = type(block).__name__
    layers: BranchLayers = []
    if hasattr(block, "conv1") and hasattr(block.conv1, "conv") and hasattr(block.conv1, "bn"):
        units = [block.conv1, block.conv2]
        layers = [(u.conv, u.bn, not isinstance(u.act, nn.Identity)) for u in units]
        shortcut = getattr(block, "shortcut", None)
        projected = shortcut is not None and not isinstance(shortcut, nn.Identity)
    elif hasattr(block, "conv1") and hasattr(block, "bn1"):
        depth = 3 if hasattr(block, "conv3") else 2
        for i in range(1, depth + 1):
            layers.append((getattr(block, f"conv{i}"), getattr(block, f"bn{i}"), i < depth))
        projected = getattr(block, "downsample", None) is not None
    else:
        raise ConfigError(
            f"{name}: sparse spatial execution reads a residual branch of ConvNormAct units "
            f"(conv1, conv2) or of torchvision-style conv1/bn1/conv2/bn2[/conv3/bn3]"
        )
    if projected:
        raise ConfigError(f"{name}: a block with a projection shortcut changes its shape; "
                          f"only identity-shortcut blocks can run sparsely")
    for i, (conv, bn, _) in enumerate(layers):
        _check_conv(conv, f"{name} conv{i + 1}")
        _check_norm(bn, f"{name} bn{i + 1}")
    if layers[0][0].in_channels != layers[-1][0].out_channels:
        raise ConfigError(f"{name}: the branch maps {layers[0][0].in_channels} to "
                          f"{layers[-1][0].out_channels} channels; an identity shortcut needs equal")
    return layers


_NORM_PARAMETERS = ("weight", "bias")
_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


class FoldedSteps:
    """The folded `ConvStep`s of a residual branch, refolded only when its tensors change.

    A change is seen through each tensor's identity and version counter: in-place ops,
    optimizer steps, replaced parameters, `module.to(...)` and training-mode statistics
    updates all refold. Writes through `tensor.data` (`w.data.mul_(2)`, `w.data = ...`)
    bypass the version counter and are not seen; use `with torch.no_grad(): w.mul_(2)`.

    Args:
        layers: `branch_layers(block)`.
    """

    def __init__(self, layers: BranchLayers) -> None:
        self.layers = layers
        self._key: tuple | None = None
        self._steps: list[ConvStep] = []
        self._held: list[Tensor] | None = None

    def _tensors(self) -> list[Tensor] | None:
        """The branch's tensors, read from the registries directly (`Module.__getattr__`
        made this 12x slower, a cost paid by every compact call of every block); `None`
        when one is computed on access instead (a parametrization such as weight norm or
        pruning): a fresh tensor per access has no version to compare, so never cache."""
        out = []
        for conv, bn, _ in self.layers:
            params = conv._parameters
            if "weight" not in params or "bias" not in params:
                return None
            out += [params["weight"], params["bias"]]
            if bn is not None:
                params, buffers = bn._parameters, bn._buffers
                if any(k not in params for k in _NORM_PARAMETERS) or any(k not in buffers for k in _NORM_BUFFERS):
                    return None
                # a training-mode forward updates the running statistics inside the kernel,
                # without bumping their version counters; the batch counter it bumps does
                out += [params[k] for k in _NORM_PARAMETERS] + [buffers[k] for k in _NORM_BUFFERS]
        return [t for t in out if t is not None]

    def steps(self) -> list[ConvStep]:
        """The current folded steps (recomputed when a weight or statistic changed)."""
        tensors = self._tensors()
        key = None if tensors is None else tuple((id(t), t._version, t.device, t.dtype) for t in tensors)
        if key is None or key != self._key or torch.is_grad_enabled():
            with torch.set_grad_enabled(torch.is_grad_enabled()):
                self._steps = [ConvStep(*fold_batchnorm(conv, bn), relu)
                               for conv, bn, relu in self.layers]
            # steps built with autograd on hold graph references: never reuse them
            self._key = None if torch.is_grad_enabled() else key
            # the key names tensors by `id`: holding them keeps a freed tensor's id from
            # being reused by a new one that would then match
            self._held = None if self._key is None else tensors
        return self._steps

    def chain_flops_per_position(self) -> list[int]:
        """Per-position FLOPs of each step (independent of the fold)."""
        return [2 * c.out_channels * c.in_channels * c.kernel_size[0] * c.kernel_size[1]
                for c, _, _ in self.layers]
