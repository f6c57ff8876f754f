"""Where a spatially dynamic network spends its computation, drawn over its inputs.

`save_spatial_maps` runs a model in eval mode (compact execution, the model's default
there) on a batch of images and reads the per-position decisions it returns:

- `spatial_mask.{i}` `(B, h_i, w_i)` bool: the positions gated block `i` executed
  (DynConv-style models); the panel value is the executed fraction of the block's
  positions (its density, `decisions["block_density"][:, i]`);
- `ponder_map.{i}` `(B, h_i, w_i)` float: the per-position ponder cost (blocks run plus
  remainder) of stage `i` (SACT-style models); the panel value is the map's mean.

Per image it writes one PNG: the input, then one panel per decision with the map
upsampled (nearest) to the image size and drawn in colour, semi-transparent, over the
greyscale image, titled with the block (or stage) index and its value. A summary PNG
gives each block's mean over the batch. Figures are drawn on matplotlib's Agg canvas (no `pyplot`, no
display) and written atomically.

```python
import torch
import dynamicnets as dn
from dynamicnets.profiling.spatial_maps import save_spatial_maps

model = dn.create_model("dynconv_resnet20", gate_bias_init=0.0)
maps = save_spatial_maps(model, torch.randn(2, 3, 32, 32), "maps", max_images=2)
maps.paths          # [maps/image_000.png, maps/image_001.png, maps/summary.png]
maps.values.shape   # (2, 7): per image, per gated block, the executed fraction
```
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..outputs import DynamicOutput

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DECISION_KINDS = ("spatial_mask", "ponder_map")
"""Prefixes of the per-position decisions drawn: `spatial_mask.{i}` (bool) and `ponder_map.{i}` (float)."""

MASK_COLOUR = (1.0, 0.15, 0.1)
"""RGB of executed positions over the greyscale image."""

OVERLAY_ALPHA = 0.55
"""Opacity of the overlaid decisions."""

_NAME = re.compile(r"^(spatial_mask|ponder_map)\.(\d+)$")


@dataclass(frozen=True)
class SpatialMaps:
    """What `save_spatial_maps` wrote and the values it drew.

    Attributes:
        paths: every PNG written: one per image (`image_000.png`, ...), then the summary.
        image_paths: the per-image PNGs, in batch order.
        summary_path: the summary PNG (mean per block over the batch).
        names: the decisions drawn, one per panel, e.g. `["spatial_mask.0", ...]`, in
            index order.
        blocks: the index each panel is titled with: for `spatial_mask.{i}` the block's
            index among all blocks (the model's `gated_index[i]` when it has one, else
            `i`), for `ponder_map.{i}` the stage `i`.
        values: `(B, P)` float64: per image and panel, the executed fraction of positions
            (`spatial_mask`) or the mean ponder cost (`ponder_map`); `B` is the whole
            batch given, not only the images drawn.
        mean_values: `(P,)` float64: `values` averaged over the batch (the summary's bars).
    """

    paths: list[Path]
    image_paths: list[Path]
    summary_path: Path
    names: list[str]
    blocks: list[int]
    values: Tensor
    mean_values: Tensor


def save_spatial_maps(
    model: nn.Module,
    images: Tensor,
    out_dir: str | os.PathLike,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    denormalise: Callable[[Tensor], Tensor] | None = None,
    max_images: int = 8,
    policy: Any = None,
    dpi: int = 100,
) -> SpatialMaps:
    """Draw where `model` executes, per block and position, over each of `images`.

    Args:
        model: a spatially dynamic model returning `DynamicOutput` with `spatial_mask.{i}`
            or `ponder_map.{i}` decisions. It runs in eval mode under `torch.no_grad()`
            (compact execution) and is put back in its previous mode afterwards.
        images: `(B, C, H, W)` model inputs (normalised as the model was trained).
        out_dir: folder for the PNGs (created).
        mean, std: per-channel statistics the inputs were normalised with, length `C`
            (or 1); shown pixels are `x * std + mean`, clipped to `[0, 1]`.
        denormalise: instead of `mean`/`std`, `(B, C, H, W) -> (B, C, H, W)` in `[0, 1]`.
            With neither, each image is min-max scaled to `[0, 1]`.
        max_images: PNGs are written for the first `max_images` images; the summary and
            `values` cover the whole batch.
        policy: passed to the model as `policy=` (e.g. a `GatePolicy` of inference
            thresholds); `None` passes nothing (the model's default rule).
        dpi: resolution of the PNGs.

    Returns:
        `SpatialMaps`: the paths written (per image, then the summary) and the values
        drawn (`values (B, P)`, `mean_values (P,)`).

    Raises:
        ConfigError: `images` is not a `(B, C, H, W)` batch, `max_images < 1`, both or half
            of `mean`/`std` and `denormalise` are given, a statistic has the wrong length,
            or the model returns no spatial decisions (naming the model).
        OutputError: a PNG cannot be written.
    """
    _check_images(images)
    if not (isinstance(max_images, int) and max_images >= 1):
        raise ConfigError(f"save_spatial_maps: max_images must be an int >= 1, got {max_images!r}")
    shown = _display_images(images, mean, std, denormalise)
    _require_matplotlib()
    decisions = _run(model, images, policy)
    names = sorted(decisions, key=lambda n: (DECISION_KINDS.index(_NAME.match(n)[1]), int(_NAME.match(n)[2])))
    maps = [_upsampled(decisions[n], images.shape) for n in names]
    values = torch.stack([_panel_values(decisions[n]) for n in names], dim=1)  # (B, P)
    blocks = _block_indices(model, names)

    out = Path(out_dir)
    grey = _greyscale(shown)
    image_paths = []
    for k in range(min(max_images, images.shape[0])):
        figure = _image_figure(shown[k], grey[k], [m[k] for m in maps], names, blocks, values[k])
        image_paths.append(_write(figure, out / f"image_{k:03d}.png", dpi))
    mean_values = values.mean(dim=0)
    summary = _write(_summary_figure(values, names, blocks, images.shape[0], _model_name(model)),
                     out / "summary.png", dpi)
    return SpatialMaps(paths=[*image_paths, summary], image_paths=image_paths, summary_path=summary,
                       names=names, blocks=blocks, values=values, mean_values=mean_values)


def _model_name(model: nn.Module) -> str:
    return str(getattr(model, "name", type(model).__name__))


def _check_images(images: Any) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ConfigError(f"save_spatial_maps: images must be a float (B, C, H, W) batch, got {got}")
    if images.shape[0] == 0:
        raise ConfigError("save_spatial_maps: images is an empty batch")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("save_spatial_maps: needs matplotlib to draw PNGs; install it "
                          "(`pip install matplotlib`)") from None


def _stat(values: Sequence[float], what: str, channels: int) -> Tensor:
    try:
        stat = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"save_spatial_maps: {what} must be a list of numbers, got {values!r}") from None
    if stat.numel() not in (1, channels):
        raise ConfigError(f"save_spatial_maps: {what} must hold 1 or {channels} values (one per channel), "
                          f"got {stat.numel()}")
    return stat.reshape(1, -1, 1, 1)


def _display_images(images: Tensor, mean, std, denormalise) -> Tensor:
    """`(B, C, H, W)` in `[0, 1]`, float32 on the CPU."""
    x = images.detach().float().cpu()
    stats = (mean is not None, std is not None)
    if denormalise is not None and any(stats):
        raise ConfigError("save_spatial_maps: give either mean/std or denormalise, not both")
    if stats[0] != stats[1]:
        raise ConfigError("save_spatial_maps: mean and std go together; give both or neither")
    if denormalise is not None:
        shown = denormalise(x)
        if not isinstance(shown, Tensor) or shown.shape != x.shape:
            got = tuple(shown.shape) if isinstance(shown, Tensor) else type(shown).__name__
            raise ConfigError(f"save_spatial_maps: denormalise must return a tensor of the images' shape "
                              f"{tuple(x.shape)}, got {got}")
        x = shown.float()
    elif mean is not None:
        x = x * _stat(std, "std", x.shape[1]) + _stat(mean, "mean", x.shape[1])
    else:
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - low) / (high - low).clamp_min(1e-12)
    return x.clamp(0.0, 1.0)


def _greyscale(shown: Tensor) -> Tensor:
    """`(B, C, H, W) -> (B, H, W)`: luminance for RGB, the channel mean otherwise."""
    if shown.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)
        return (shown * weights).sum(dim=1)
    return shown.mean(dim=1)


def _run(model: nn.Module, images: Tensor, policy: Any) -> dict[str, Tensor]:
    """The model's per-position decisions by name, on the CPU."""
    was_training = model.training
    kwargs = {} if policy is None else {"policy": policy}
    model.eval()
    try:
        with torch.no_grad():
            out = model(images, **kwargs)
    finally:
        model.train(was_training)
    decisions = out.decisions if isinstance(out, DynamicOutput) else {}
    found = {n: d.detach().cpu() for n, d in decisions.items() if _NAME.match(n)}
    if not found:
        raise ConfigError(
            f"save_spatial_maps: model {_model_name(model)!r} returned no spatial decisions (expected "
            f"'spatial_mask.{{i}}' or 'ponder_map.{{i}}' of shape (B, h, w) in DynamicOutput.decisions, got "
            f"{sorted(decisions) if decisions else 'none'}); use a spatially dynamic model, e.g. dynconv_resnet20"
        )
    for name, value in found.items():
        if value.dim() != 3 or value.shape[0] != images.shape[0]:
            raise ConfigError(f"save_spatial_maps: model {_model_name(model)!r} decision {name!r} must be "
                              f"(B={images.shape[0]}, h, w), got {tuple(value.shape)}")
    return found


def _upsampled(decision: Tensor, shape: torch.Size) -> Tensor:
    """`(B, h, w) -> (B, H, W)` float, nearest neighbour."""
    return F.interpolate(decision.float()[:, None], size=tuple(shape[-2:]), mode="nearest")[:, 0]


def _panel_values(decision: Tensor) -> Tensor:
    """`(B, h, w) -> (B,)` float64: executed fraction of a mask, mean of a ponder map."""
    return decision.double().flatten(1).mean(dim=1)


def _block_indices(model: nn.Module, names: list[str]) -> list[int]:
    """The block each panel belongs to: `gated_index[i]` for `spatial_mask.{i}` when the
    model lists its gated blocks, else `i`."""
    gated = getattr(model, "gated_index", None)
    indices = []
    for name in names:
        kind, index = _NAME.match(name)[1], int(_NAME.match(name)[2])
        if kind == "spatial_mask" and isinstance(gated, Sequence) and index < len(gated):
            index = int(gated[index])
        indices.append(index)
    return indices


def _label(name: str, block: int, value: float) -> str:
    if name.startswith("spatial_mask"):
        return f"block {block}: density {value:.2f}"
    return f"stage {block}: ponder {value:.2f}"


def _image_figure(shown: Tensor, grey: Tensor, maps: list[Tensor], names: list[str], blocks: list[int],
                  values: Tensor):
    from .plots import _new_figure

    panels = 1 + len(maps)
    cols = min(panels, 4)
    rows = -(-panels // cols)
    figure = _new_figure(2.3 * cols, 2.5 * rows)
    axes = figure.add_subplot(rows, cols, 1)
    picture = shown.permute(1, 2, 0).numpy()
    axes.imshow(picture if shown.shape[0] == 3 else picture.mean(axis=2), cmap="gray", vmin=0.0, vmax=1.0,
                interpolation="nearest")
    _plain(axes, "input")
    ponder_top = max([float(m.max()) for m, n in zip(maps, names) if n.startswith("ponder_map")] or [1.0])
    for p, (decision, name) in enumerate(zip(maps, names), start=2):
        axes = figure.add_subplot(rows, cols, p)
        axes.imshow(grey.numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.imshow(_overlay(decision, name, ponder_top), interpolation="nearest")
        _plain(axes, _label(name, blocks[p - 2], float(values[p - 2])))
    # Fixed margins: the panels have no tick labels, and tight_layout costs as much as drawing.
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.25 / (2.5 * rows), wspace=0.08,
                           hspace=0.25)
    return figure


def _overlay(decision: Tensor, name: str, ponder_top: float):
    """`(H, W)` decision -> `(H, W, 4)` RGBA array drawn over the greyscale image."""
    import numpy as np

    rgba = np.zeros((*decision.shape, 4), dtype=np.float32)
    if name.startswith("spatial_mask"):
        on = decision.numpy() > 0.5
        rgba[on, :3] = MASK_COLOUR
        rgba[on, 3] = OVERLAY_ALPHA
        return rgba
    from matplotlib import colormaps

    level = (decision / max(ponder_top, 1e-12)).clamp(0, 1).numpy()
    rgba[...] = colormaps["viridis"](level)
    rgba[..., 3] = OVERLAY_ALPHA
    return rgba


def _plain(axes: "Axes", title: str) -> None:
    axes.set_title(title, fontsize=8)
    axes.set_xticks([])
    axes.set_yticks([])


def _summary_figure(values: Tensor, names: list[str], blocks: list[int], batch: int, model_name: str):
    from .plots import _new_figure

    kinds = [k for k in DECISION_KINDS if any(n.startswith(k) for n in names)]
    figure = _new_figure(max(4.5, 0.6 * len(names) + 2.0), 0.4 + 3.4 * len(kinds))
    for row, kind in enumerate(kinds, start=1):
        columns = [p for p, n in enumerate(names) if n.startswith(kind)]
        axes = figure.add_subplot(len(kinds), 1, row)
        picked = values[:, columns]
        spread = picked.std(dim=0, unbiased=False) if batch > 1 else torch.zeros(len(columns))
        positions = list(range(len(columns)))
        axes.bar(positions, picked.mean(dim=0).tolist(), yerr=spread.tolist(), capsize=3,
                 color=MASK_COLOUR if kind == "spatial_mask" else "tab:green", alpha=0.8)
        axes.set_xticks(positions, [str(blocks[p]) for p in columns])
        axes.set_xlabel("block" if kind == "spatial_mask" else "stage")
        if kind == "spatial_mask":
            axes.set_ylim(0.0, 1.05)
            axes.set_ylabel("executed fraction")
        else:
            axes.set_ylabel("mean ponder cost")
        axes.grid(True, axis="y", alpha=0.3)
    figure.suptitle(f"{model_name}: mean over {batch} image{'s' if batch != 1 else ''}\n(bars: ± one std)",
                    fontsize=10)
    figure.tight_layout()
    return figure


def _write(figure, path: Path, dpi: int) -> Path:
    from .plots import _save_png

    return _save_png(figure, path, dpi)
