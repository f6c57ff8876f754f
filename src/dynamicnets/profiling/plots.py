"""Plots: accuracy vs. FLOPs trade-off curves and training curves, as PNG files.

Figures are drawn on matplotlib's Agg canvas directly (no `pyplot`, no display, no
change to the global backend) and written atomically, like the JSON reports.
matplotlib is imported on first use: `dynamicnets.models` imports this package, and
matplotlib would add ~0.4 s to every `import dynamicnets`.
"""
from __future__ import annotations

import io
import json
import math
import numbers
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..errors import ConfigError, DataError
from .report import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Point = tuple[float, float]


def plot_accuracy_vs_flops(
    series: Mapping[str, Iterable[Sequence[float]]] | Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str = "Accuracy vs. FLOPs",
    static_points: Mapping[str, Sequence[float]] | None = None,
    *,
    group_key: str = "name",
    flops_key: str = "flops",
    accuracy_key: str = "accuracy",
    accuracy_in_percent: bool | None = None,
    dpi: int = 120,
) -> Path:
    """Plot accuracy against per-sample FLOPs, one line per series, and save a PNG.

    Args:
        series: either name -> list of `(flops, accuracy)` points (e.g. one point per
            budget of a dynamic model), or a list of records, each holding
            `group_key`, `flops_key` and `accuracy_key`.
        path: the PNG file to write (parent folders are created).
        title: figure title.
        static_points: name -> `(flops, accuracy)` of static networks, drawn as stars
            and annotated with their names.
        group_key, flops_key, accuracy_key: record keys when `series` is a list.
        accuracy_in_percent: whether accuracies are already in %; `None` decides from
            the data: fractions if every accuracy is <= 1.
        dpi: resolution of the PNG.

    FLOPs are per sample and plotted in MFLOPs; points of a series are joined in
    order of FLOPs.

    Returns:
        `path` as a `Path`.
    """
    curves = _series_points(series, group_key, flops_key, accuracy_key)
    statics = {
        str(name): _point(point, f"static_points[{name!r}]")
        for name, point in (static_points or {}).items()
    }
    if not any(curves.values()) and not statics:
        raise ConfigError("plot_accuracy_vs_flops: no points to plot (series and static_points are empty)")
    all_acc = [acc for pts in curves.values() for _, acc in pts] + [acc for _, acc in statics.values()]
    scale = _accuracy_scale(all_acc, accuracy_in_percent)

    figure = _new_figure(6.4, 4.8)
    axes = figure.add_subplot()
    for name, points in curves.items():
        if not points:
            continue
        points = sorted(points)
        axes.plot(
            [f / 1e6 for f, _ in points], [a * scale for _, a in points],
            marker="o", markersize=4, label=name,
        )
    if statics:
        xs = [f / 1e6 for f, _ in statics.values()]
        ys = [a * scale for _, a in statics.values()]
        axes.scatter(xs, ys, marker="*", s=140, color="black", zorder=3, label="static networks")
        for name, x, y in zip(statics, xs, ys):
            axes.annotate(name, (x, y), xytext=(5, 5), textcoords="offset points", fontsize=8)
        axes.margins(x=0.1, y=0.08)  # room for the names of the outermost points
    axes.set_xlabel("MFLOPs per sample")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    return _save_png(figure, path, dpi)


def plot_grouped_bars(
    groups: Mapping[str, Sequence[float]],
    categories: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    *,
    xlabel: str = "",
    ylabel: str = "",
    normalize: bool = False,
    dpi: int = 120,
) -> Path:
    """A grouped bar chart: one group of bars per entry of `groups`, one bar per category.

    Args:
        groups: name -> one value per category (e.g. samples per chosen resolution at one
            budget), drawn left to right in the order given.
        categories: the bar names, one colour each (e.g. `["16 px", "24 px", "32 px"]`).
        path: the PNG file to write (parent folders are created).
        title, xlabel, ylabel: figure texts.
        normalize: divide each group by its sum (counts become fractions).
        dpi: resolution of the PNG.

    Returns:
        `path` as a `Path`.

    Raises:
        ConfigError: no group or category, a group whose length is not the number of
            categories, or a value that is not a finite number >= 0 (naming the group).
    """
    if not groups or not categories:
        raise ConfigError(f"plot_grouped_bars: expected at least one group and one category, got {len(groups)} "
                          f"group(s) and {len(categories)} category(ies)")
    values = {}
    for name, row in groups.items():
        row = list(row)
        if len(row) != len(categories) or not all(_is_real(v) and math.isfinite(v) and v >= 0 for v in row):
            raise ConfigError(f"plot_grouped_bars: groups[{name!r}] must hold {len(categories)} finite numbers >= 0 "
                              f"(one per category), got {row!r}")
        total = sum(row)
        values[str(name)] = [v / total if normalize and total > 0 else float(v) for v in row]
    figure = _new_figure(max(5.0, 1.0 + 0.35 * len(values) * (len(categories) + 1)), 4.2)
    axes = figure.add_subplot()
    width = 0.8 / len(categories)
    for c, category in enumerate(categories):
        xs = [g + (c - (len(categories) - 1) / 2) * width for g in range(len(values))]
        axes.bar(xs, [row[c] for row in values.values()], width=width, label=str(category))
    axes.set_xticks(range(len(values)), list(values), fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return _save_png(figure, path, dpi)


def plot_training_curves(
    metrics_jsonl_path: str | os.PathLike,
    png_path: str | os.PathLike,
    title: str | None = None,
    *,
    metrics: Sequence[str] | None = None,
    size: tuple[float, float] = (5.2, 4.2),
    dpi: int = 120,
) -> Path:
    """Plot losses and accuracies per epoch from a `metrics.jsonl` file, and save a PNG.

    Args:
        metrics_jsonl_path: one JSON object per line, e.g.
            `{"epoch": 3, "train_loss": 0.41, "val_accuracy": 0.88}`. Numeric keys
            containing "loss" go on the left panel, keys containing "acc" on the right
            (in %, fractions are scaled up). Several lines with the same epoch (e.g.
            per-step logging) are averaged per epoch; without an "epoch" key, the line
            number is the x axis.
        png_path: the PNG file to write (parent folders are created).
        title: figure title; default names the metrics file's folder.
        metrics: plot only these keys (e.g. `["val_accuracy"]`); default: every
            numeric key containing "loss" or "acc".
        size: width and height in inches of one panel.
        dpi: resolution of the PNG.

    Returns:
        `png_path` as a `Path`.

    Raises:
        DataError: the file cannot be read, or holds none of the metrics to plot.
    """
    source = Path(metrics_jsonl_path)
    records = read_metrics_jsonl(source)
    x_name = "epoch" if any("epoch" in record for record in records) else "line"
    by_metric: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for index, record in enumerate(records, start=1):
        x = record.get("epoch") if x_name == "epoch" else index
        if not _is_real(x):
            continue  # e.g. a final test-set line without an epoch
        for key, value in record.items():
            if key != "epoch" and _is_real(value) and _panel(key) and (metrics is None or key in metrics):
                by_metric[key][float(x)].append(float(value))
    if not by_metric:
        keys = sorted({key for record in records for key in record})
        wanted = "whose name contains 'loss' or 'acc'" if metrics is None else f"among {list(metrics)}"
        raise DataError(f"{source}: no numeric metric {wanted} (keys found: {keys})")
    curves = {
        key: sorted((x, sum(vals) / len(vals)) for x, vals in per_x.items())
        for key, per_x in by_metric.items()
    }
    panels = [p for p in ("loss", "acc") if any(_panel(k) == p for k in curves)]

    figure = _new_figure(size[0] * len(panels), size[1])
    for position, panel in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), position)
        for key, points in curves.items():
            if _panel(key) != panel:
                continue
            ys = [y for _, y in points]
            scale = _accuracy_scale(ys, None) if panel == "acc" else 1.0
            axes.plot([x for x, _ in points], [y * scale for y in ys], marker="o", markersize=3, label=key)
        axes.set_xlabel(x_name)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.set_ylabel("loss" if panel == "loss" else "accuracy (%)")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    figure.suptitle(title if title is not None else f"Training curves: {source.parent.name or source.name}")
    figure.tight_layout()
    return _save_png(figure, png_path, dpi)


def _new_figure(width: float, height: float) -> "Figure":
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save_png(figure: "Figure", path: str | os.PathLike, dpi: int) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return atomic_write(path, buffer.getvalue())


def _series_points(
    series: Mapping[str, Iterable[Sequence[float]]] | Sequence[Mapping[str, Any]],
    group_key: str,
    flops_key: str,
    accuracy_key: str,
) -> dict[str, list[Point]]:
    if isinstance(series, Mapping):
        return {
            str(name): [_point(p, f"series[{name!r}][{i}]") for i, p in enumerate(points)]
            for name, points in series.items()
        }
    curves: dict[str, list[Point]] = {}
    for i, record in enumerate(series):
        if not isinstance(record, Mapping):
            raise ConfigError(
                f"series[{i}]: expected a dict with keys {group_key!r}, {flops_key!r}, "
                f"{accuracy_key!r}, got {type(record).__name__}"
            )
        missing = [k for k in (group_key, flops_key, accuracy_key) if k not in record]
        if missing:
            raise ConfigError(
                f"series[{i}]: missing key(s) {missing}; each record needs {group_key!r}, "
                f"{flops_key!r} and {accuracy_key!r} (have {sorted(record)})"
            )
        point = _point((record[flops_key], record[accuracy_key]), f"series[{i}]")
        curves.setdefault(str(record[group_key]), []).append(point)
    return curves


def _point(point: Any, where: str) -> Point:
    try:
        flops, accuracy = point
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a (flops, accuracy) pair, got {point!r}") from None
    if not (_is_real(flops) and _is_real(accuracy)):
        raise ConfigError(f"{where}: flops and accuracy must be numbers, got {point!r}")
    flops, accuracy = float(flops), float(accuracy)
    if not (math.isfinite(flops) and math.isfinite(accuracy)) or flops < 0:
        raise ConfigError(f"{where}: expected finite flops >= 0 and a finite accuracy, got {point!r}")
    return flops, accuracy


def _accuracy_scale(values: Sequence[float], in_percent: bool | None) -> float:
    if in_percent is None:
        finite = [v for v in values if math.isfinite(v)]
        in_percent = bool(finite) and max(finite) > 1.0
    return 1.0 if in_percent else 100.0


def _panel(key: str) -> str | None:
    lowered = key.lower()
    if "loss" in lowered:
        return "loss"
    if "acc" in lowered:
        return "acc"
    return None


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSON-lines file such as a run's `metrics.jsonl`, in order.

    Args:
        path: one JSON object per line (blank lines are skipped).

    Returns:
        the objects, one dict per line.

    Raises:
        DataError: naming the file (and line), when it cannot be read, a line is not a
            JSON object, or it holds none.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"{path}: cannot read metrics file ({err.strerror or err})") from err
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err.msg})") from err
        if not isinstance(record, dict):
            raise DataError(f"{path}, line {number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no metrics (expected one JSON object per line)")
    return records
