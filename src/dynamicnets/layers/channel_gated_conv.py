"""Channel-gated conv pair: `conv2(relu(bn1(conv1(x))) * scale)` with per-sample channels.

`scale (B, C_mid)` is a decision taken as an argument (from `dynamicnets.gates.channel`): channel `c`
of sample `b` runs iff `scale[b, c] != 0` and is multiplied by it (0/1 for a Gumbel mask,
the FBS boost otherwise). A skipped channel is skipped twice: `conv1` does not compute
it and `conv2` does not read it, so the pair's per-sample cost is
`kept * (conv1 FLOPs per output channel + conv2 FLOPs per input channel)`.
`conv2`'s own output channels are not gated (its output feeds a residual sum).

Two executions of the same decisions:

- `masked` (training, static shapes): the full convs run and the mid activations are
  multiplied by `scale`. Costs the full pair; every weight gets a gradient.
- `compact` (inference): `K` channels per sample are gathered, each sample gets its own
  `conv1` output slice `W1[idx_b]` and `conv2` input slice `W2[:, idx_b]`, and each conv
  runs as ONE grouped convolution with the batch folded into the groups
  (`cond_conv.per_sample_conv2d`); no Python loop over samples. `bn1` must be in eval
  mode: it is then a per-channel affine, folded into the gathered `conv1` kernels.

Choosing `K` (the trade-off). A fixed-`k` gate (FBS) passes `max_kept=k`: no padding, no
host sync. A variable gate (Gumbel) lets every sample keep its own count; the batch runs
at `K = max_b count_b`, the samples with fewer channels padded with channels whose
scale is 0 (they are computed and then multiplied by 0, so the result is exact). That
keeps one convolution per layer whatever the spread of counts, at the price of computing
`K - count_b` useless channels for sample `b`. The other sound option, grouping samples
by count, wastes nothing but issues up to `C_mid + 1` convolutions per layer, which on
small batches is a loop over samples. `pair_cost` reports both figures: what ran
(padded, what `FlopCounterMode` counts) and what was kept (the cost of the same sample
run alone). `K == C_mid` runs the masked path (same cost, no gather); `K == 0` runs no
convolution (the output is zeros, plus `conv2`'s bias).

Uncounted work (as in `FlopCounterMode`): gathering the per-sample weight slices, folding
`bn1` into them and the elementwise ops. The gathered weights take
`B * K * (C_in + C_out) * kh * kw` elements per pair, which grows with the batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..flops import conv2d_flops
from ..gates.channel import check_positive_ints
from .cond_conv import per_sample_conv2d
from ..execution import parse_execution


def check_pair(conv1: nn.Conv2d, bn1: nn.BatchNorm2d, conv2: nn.Conv2d) -> None:
    """Raise `ConfigError` unless `conv1 -> bn1 -> conv2` chain and are ungrouped."""
    if conv1.groups != 1 or conv2.groups != 1:
        raise ConfigError("channel-gated convs: conv1 and conv2 must have groups=1")
    if bn1.num_features != conv1.out_channels or conv2.in_channels != conv1.out_channels:
        raise ConfigError(
            f"channel-gated convs: conv1.out_channels ({conv1.out_channels}), "
            f"bn1.num_features ({bn1.num_features}) and conv2.in_channels "
            f"({conv2.in_channels}) must be equal"
        )
    if isinstance(conv1.padding, str) or isinstance(conv2.padding, str):
        raise ConfigError("channel-gated convs: conv1 and conv2 need numeric padding")


def count_kept(scale: Tensor) -> Tensor:
    """`(B, C)` scale -> `(B,)` number of channels each sample runs (`scale != 0`)."""
    return (scale != 0).sum(dim=1)


def eval_bn_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """`(a, b)`, each `(C,)`, with `bn(z) == a[c] * z + b[c]` per channel in eval mode."""
    if bn.training or bn.running_var is None:
        raise ConfigError(
            "compact execution needs bn1 in eval mode with running statistics (then it is "
            "a per-channel affine); call .eval() or use execution='masked'"
        )
    a = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight
    b = -bn.running_mean * a
    if bn.bias is not None:
        b = b + bn.bias
    return a, b


def _masked(x, conv1, bn1, conv2, scale):
    h = F.relu(bn1(conv1(x))) * scale[:, :, None, None].to(x.dtype)
    return conv2(h)


def _compact(x, conv1, bn1, conv2, scale, kept):
    batch, mid = scale.shape
    a, b = eval_bn_affine(bn1)  # checked first: every compact run needs eval-mode bn1
    if kept == mid:
        return _masked(x, conv1, bn1, conv2, scale)
    if kept == 0:
        oh, ow = pair_output_size(conv1, conv2, x.shape[-2], x.shape[-1])
        out = x.new_zeros(batch, conv2.out_channels, oh, ow)
        return out if conv2.bias is None else out + conv2.bias[:, None, None]
    # the channels each sample runs come first; padding (scale 0) fills the rest
    idx = (scale != 0).to(scale.dtype).topk(kept, dim=1).indices  # (B, K)
    if conv1.bias is not None:
        b = b + a * conv1.bias
    w1 = conv1.weight[idx] * a[idx][:, :, None, None, None]  # (B, K, C_in, kh, kw)
    h = per_sample_conv2d(x, w1, b[idx], conv1.stride, conv1.padding, conv1.dilation)
    h = F.relu(h) * scale.gather(1, idx)[:, :, None, None].to(h.dtype)
    w2 = conv2.weight.transpose(0, 1)[idx].transpose(1, 2)  # (B, C_out, K, kh, kw)
    bias2 = None if conv2.bias is None else conv2.bias.expand(batch, -1)
    return per_sample_conv2d(h, w2, bias2, conv2.stride, conv2.padding, conv2.dilation)


def channel_gated_convs(
    x: Tensor,
    conv1: nn.Conv2d,
    bn1: nn.BatchNorm2d,
    conv2: nn.Conv2d,
    scale: Tensor,
    execution: str = "masked",
    max_kept: int | None = None,
) -> Tensor:
    """`conv2(relu(bn1(conv1(x))) * scale)`, running only the channels with `scale != 0`.

    Args:
        x: `(B, C_in, H, W)`.
        conv1, bn1, conv2: `nn.Conv2d(C_in, C_mid)`, `nn.BatchNorm2d(C_mid)`,
            `nn.Conv2d(C_mid, C_out)`, both convs ungrouped (any kernel, stride, padding).
        scale: `(B, C_mid)` per-sample channel factors; 0 skips the channel.
        execution: `"masked"` or `"compact"` (module docstring); compact needs `bn1` in
            eval mode.
        max_kept: compact only: the batch runs `K = max_kept` channels per sample; it
            must be at least every sample's count of nonzero `scale` (a fixed-`k` gate
            guarantees it). None: `K` is the largest count in the batch (one host sync).

    Returns:
        `(B, C_out, H', W')` (before any norm of `conv2`). The two executions agree up to
        floating-point rounding.

    Raises:
        ConfigError: for a bad `execution`, `scale` shape, `max_kept`, modules that do not
            chain (`check_pair`), or a compact run with `bn1` in training mode.
    """
    execution = parse_execution(execution)
    check_pair(conv1, bn1, conv2)
    mid = conv1.out_channels
    if scale.dim() != 2 or scale.shape != (x.shape[0], mid):
        raise ConfigError(
            f"channel-gated convs: scale must be (B, C_mid) = ({x.shape[0]}, {mid}), got "
            f"{tuple(scale.shape)}"
        )
    if max_kept is not None and (
        isinstance(max_kept, bool) or not isinstance(max_kept, int) or not 0 <= max_kept <= mid
    ):
        raise ConfigError(
            f"channel-gated convs: max_kept must be an int in [0, {mid}], got {max_kept!r}"
        )
    if execution == "masked":
        return _masked(x, conv1, bn1, conv2, scale)
    kept = int(count_kept(scale).max()) if max_kept is None else max_kept
    return _compact(x, conv1, bn1, conv2, scale, kept)


def pair_output_size(
    conv1: nn.Conv2d, conv2: nn.Conv2d, height: int, width: int
) -> tuple[int, int]:
    """`(H', W')` of `conv2(conv1(x))` for an `(H, W)` input."""
    _, h1, w1 = conv2d_flops(conv1, height, width)
    _, h2, w2 = conv2d_flops(conv2, h1, w1)
    return h2, w2


def channel_cost(conv1: nn.Conv2d, conv2: nn.Conv2d, height: int, width: int) -> int:
    """Per-sample FLOPs one mid channel adds: its `conv1` output plus its `conv2` input."""
    f1, h1, w1 = conv2d_flops(conv1, height, width)
    f2, _, _ = conv2d_flops(conv2, h1, w1)
    return f1 // conv1.out_channels + f2 // conv2.in_channels


def executed_channels(
    scale: Tensor, execution: str, max_kept: int | None = None
) -> tuple[Tensor, Tensor]:
    """Mid channels each sample computes and keeps under `channel_gated_convs`.

    Args:
        scale, execution, max_kept: as passed to it (`scale` is `(B, C_mid)`).

    Returns:
        `(ran, kept)`, each `(B,)` float64: `ran` is what the execution computed for the
        sample (masked: `C_mid`; compact: `K`, padding included), `kept` its nonzero `scale`s.
    """
    kept = count_kept(scale.detach()).to(torch.float64)
    if execution == "masked":
        return torch.full_like(kept, scale.shape[1]), kept
    if max_kept is not None:
        return torch.full_like(kept, max_kept), kept
    return kept.max().expand_as(kept).clone(), kept


def pair_cost(
    conv1: nn.Conv2d,
    conv2: nn.Conv2d,
    height: int,
    width: int,
    scale: Tensor,
    execution: str,
    max_kept: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-sample FLOPs of `channel_gated_convs` with the same arguments (FlopCounterMode's count).

    Args:
        conv1, conv2: the pair.
        height, width: of `x`.
        scale, execution, max_kept: as passed to `channel_gated_convs`.

    Returns:
        `(ran, kept)`, each `(B,)` float64 on `scale`'s device. `ran`: what each sample's
        execution computed (masked: the full pair; compact: `K` channels, padding
        included); `ran.sum()` is what `FlopCounterMode` sees. `kept`: the cost of the
        channels the sample keeps (its compact cost run alone, or in a batch of equal counts).
    """
    ran, kept = executed_channels(scale, execution, max_kept)
    per_channel = channel_cost(conv1, conv2, height, width)
    return ran * per_channel, kept * per_channel


class ChannelGatedConvPair(nn.Module):
    """`conv1 -> bn1 -> ReLU -> (x scale) -> conv2`, the mid channels gated per sample.

    Args:
        in_chans, mid_chans, out_chans: channels of `x`, of the gated middle, of the
            output.
        kernel_size, stride: of `conv1` (`conv2` has stride 1); padding `kernel_size // 2`.

    Attributes:
        conv1, bn1, conv2: the layers (bias-free convs, He-initialised).

    Shapes:
        `forward(x (B, in_chans, H, W), scale (B, mid_chans), execution, max_kept)
        -> (B, out_chans, H', W')` (see `channel_gated_convs`).
    """

    def __init__(
        self,
        in_chans: int,
        mid_chans: int,
        out_chans: int,
        kernel_size: int = 3,
        stride: int = 1,
        *,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_positive_ints(
            "ChannelGatedConvPair", in_chans=in_chans, mid_chans=mid_chans, out_chans=out_chans,
            kernel_size=kernel_size, stride=stride,
        )
        factory = {"device": device, "dtype": dtype}
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(in_chans, mid_chans, kernel_size, stride, pad, bias=False, **factory)
        self.bn1 = nn.BatchNorm2d(mid_chans, **factory)
        self.conv2 = nn.Conv2d(mid_chans, out_chans, kernel_size, 1, pad, bias=False, **factory)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(
        self, x: Tensor, scale: Tensor, execution: str = "masked", max_kept: int | None = None
    ) -> Tensor:
        return channel_gated_convs(x, self.conv1, self.bn1, self.conv2, scale, execution, max_kept)

    def flops(
        self, height: int, width: int, scale: Tensor, execution: str, max_kept: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """`(ran (B,), kept (B,))` per-sample FLOPs on an `(H, W)` input (see `pair_cost`)."""
        return pair_cost(self.conv1, self.conv2, height, width, scale, execution, max_kept)
