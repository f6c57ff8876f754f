"""Ship a finished training run as pretrained weights: weight file, registry row, model card.

`export_run` takes a run folder written by the Trainer and:

1. picks its `best.pt` (else `last.pt`), rebuilds the model and refuses a run that has
   not finished its epochs;
2. writes `<model>_<tag>.pt`, the state_dict only (float32, contiguous), atomically, into
   the weights folder, and its sha256;
3. reads the shipped epoch's validation accuracy and the CPU hours from `metrics.jsonl`
   (`robust_epoch_seconds`: an epoch that took over `outlier_factor` times the median,
   a paused process, counts as the median), parameters and FLOPs from the model;
4. with a data spec, loads the shipped file back through `create_model(pretrained=...)`,
   re-scores it on the validation split it was trained with, and for a dynamic model
   measures its accuracy-FLOPs trade-off: multi-exit models (`zoo_trade_off`), gated
   layer-skipping ResNets (`zoo_gate_trade_off`), spatially gated ResNets such as DynConv
   (`zoo_spatial_trade_off`), token-pruning transformers such as DynamicViT and EViT
   (`zoo_token_trade_off`), slimmable networks and DS-Net (`zoo_width_trade_off`), and,
   given a static anchor run, dynamic-parameter models against it
   (`zoo_anchor_comparison`); other dynamic models' cards say they are not measured yet;
5. replaces the model's row for that tag in `registry.json`, regenerates the model card
   (with a plot of validation accuracy per epoch) and the zoo table
   (`model_zoo.json` + `.md`).
"""
from __future__ import annotations

import hashlib
import io
import json
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data import make_eval_loader
from ..data.preprocessing import trained_preprocessing
from ..errors import ConfigError, DataError
from ..execution import supported_executions
from ..models import create_model, registered_model
from ..models._zero_sample import zero_sample_output
from ..models.pretrained import FORMAT, REGISTRY_FILE, PretrainedWeights, read_registry
from ..profiling.allocator import allocator_setting
from ..profiling.plots import plot_training_curves, read_metrics_jsonl
from ..profiling.report import atomic_write, markdown_table, write_json
from ..protocols import MultiExit
from ..training.checkpoint import load_checkpoint
from ..training.evaluate import evaluate
from .checkpoint_data import load_checkpoint_data
from .checkpoints import load_trained_model, run_checkpoint
from .evaluate import full_flops_per_sample
from .model_card import card_figures, render_model_card
from .zoo_anchor_comparison import measure_anchor_comparison
from .zoo_gate_trade_off import measure_gate_trade_off
from .zoo_spatial_trade_off import DENSITY_CAPS, measure_spatial_trade_off
from .zoo_token_trade_off import KEEP_RATIOS, measure_token_trade_off
from .zoo_trade_off import measure_trade_off
from .zoo_width_trade_off import measure_width_trade_off

RECIPE_KEYS = ("init_from", "init_prefix", "model_args", "epochs", "batch_size", "optimizer", "lr", "momentum",
               "nesterov", "weight_decay", "schedule", "warmup_epochs", "label_smoothing", "exit_weights",
               "distill_weight", "teacher_checkpoint", "teacher_weight", "teacher_temperature", "grad_clip",
               "augment", "cutout", "mixup", "cutmix", "channels_last", "bf16", "threads", "seed", "val_size")
"""Training config keys the model card shows as the recipe."""

DATA_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "mnist",
                "imagefolder": "images"}
"""The folder name written in commands for data sets read from a folder."""

DATA_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "mnist": "MNIST", "digits": "scikit-learn digits",
               "mnist1d": "MNIST-1D", "imagefolder": "an image folder"}


@dataclass
class ZooPaths:
    """Where an export writes.

    Attributes:
        weights_dir: the weights folder (`registry.json` and the `.pt` files).
        cards_dir: the model cards' folder (Markdown + PNG).
        zoo_table: the zoo's JSON table (a Markdown table is written beside it).
        repo_root: the repository; configs are looked up in `configs/` there and paths in
            the card are written relative to it.
    """

    weights_dir: Path
    cards_dir: Path
    zoo_table: Path
    repo_root: Path


@dataclass
class ZooExport:
    """What `export_run` ships.

    Attributes:
        run: a finished run folder (or one of its checkpoint files).
        tag: the weights' tag, e.g. `cifar10`.
        paths: where to write.
        data: a data spec of the data the run trained on: re-score the shipped file on its
            validation split and, for a dynamic model, measure its trade-off. `None`:
            neither (the card says so).
        default: make this tag the model's default (`pretrained=True`).
        outlier_factor: an epoch slower than this times the median counts as the median
            in the CPU hours.
        budgets: points on a dynamic model's accuracy-FLOPs curve.
        threads: CPU threads for timing a dynamic model.
        min_run_time: seconds of timed calls per callable and round when timing it.
        anchor: a finished run (folder or checkpoint) of the static anchor trained with the
            same schedule: a layer-skipping or width model's speedups are timed against it,
            and a dynamic-parameter model is compared with it; its accuracy is scored on
            the same samples. `None`: the model's own backbone or widest width (a
            dynamic-parameter model is then not measured).
        density_caps: the `max_density` caps a spatially gated model's curve adds to its
            trained rule (decreasing, in `(0, 1)`).
        keep_ratios: the keep ratios a token-pruning transformer's curve adds to its
            trained one (decreasing, in `(0, 1)`).
    """

    run: str | Path
    tag: str
    paths: ZooPaths
    data: str | None = None
    default: bool = False
    outlier_factor: float = 2.0
    budgets: int = 8
    threads: int = 1
    min_run_time: float = 0.3
    anchor: str | Path | None = None
    density_caps: tuple[float, ...] = DENSITY_CAPS
    keep_ratios: tuple[float, ...] = KEEP_RATIOS

    def __post_init__(self) -> None:
        if not isinstance(self.tag, str) or not self.tag.isidentifier():
            raise ConfigError(f"--tag: expected a short name such as 'cifar10' (letters, digits, _), got {self.tag!r}")
        if not self.outlier_factor > 1:
            raise ConfigError(f"outlier_factor: expected a number above 1, got {self.outlier_factor!r}")


def robust_epoch_seconds(history: list[dict[str, Any]], outlier_factor: float = 2.0) -> dict[str, Any]:
    """Training time of a run with stalled epochs (a paused process) counted at the median.

    Args:
        history: one metrics dict per epoch with `epoch` and `epoch_seconds`.
        outlier_factor: an epoch whose time exceeds this times the median is replaced by
            the median.

    Returns:
        dict with `seconds` (the robust total), `recorded_seconds` (the plain sum),
        `median_epoch_seconds` and `replaced_epochs` (the epochs counted at the median).

    Raises:
        DataError: an epoch has no positive `epoch_seconds`.
    """
    seconds = [r.get("epoch_seconds") for r in history]
    if not seconds or any(not isinstance(s, (int, float)) or isinstance(s, bool) or not s > 0 for s in seconds):
        raise DataError("metrics: every epoch needs a positive 'epoch_seconds' to count the training time")
    median = statistics.median(seconds)
    replaced = [r["epoch"] for r, s in zip(history, seconds) if s > outlier_factor * median]
    robust = sum(median if s > outlier_factor * median else s for s in seconds)
    return {"seconds": robust, "recorded_seconds": sum(seconds), "median_epoch_seconds": median,
            "replaced_epochs": replaced}


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """The bytes of a weight file: `state` with floating tensors as contiguous float32."""
    clean = {k: (v.detach().to(torch.float32) if v.is_floating_point() else v.detach()).contiguous().clone()
             for k, v in state.items()}
    buffer = io.BytesIO()
    torch.save(clean, buffer)
    return buffer.getvalue()


def write_registry(weights_dir: Path, rows: list[PretrainedWeights]) -> Path:
    """Write `rows` (sorted by model and tag) as `weights_dir/registry.json`, atomically."""
    rows = sorted(rows, key=lambda w: (w.model, w.tag))
    table = {"format": FORMAT, "weights": [w.to_dict() for w in rows]}
    return atomic_write(Path(weights_dir) / REGISTRY_FILE, json.dumps(table, indent=2) + "\n")


def zoo_records(rows: list[PretrainedWeights]) -> list[dict[str, Any]]:
    """One record per shipped weight for the zoo table: `model`, `pretrained` (the tag),
    `val_accuracy`, `params`, `flops`, `cpu_hours`, `config`, `file`, `sha256`."""
    return [{"model": w.model, "pretrained": w.tag, "val_accuracy": w.val_accuracy, "params": w.params,
             "flops": w.flops, "cpu_hours": w.cpu_hours, "config": w.config, "file": w.file, "sha256": w.sha256}
            for w in rows]


def write_zoo_table(rows: list[PretrainedWeights], path: Path) -> Path:
    """Write the zoo table as JSON at `path` and as Markdown beside it (`.md`)."""
    records = zoo_records(rows)
    write_json(path, records, meta={"what": "shipped pretrained weights (dynamicnets.models.pretrained)"})
    shown = [{**r, "val_accuracy": 100 * r["val_accuracy"], "params": f"{r['params'] / 1e6:.3f}M",
              "flops": f"{r['flops'] / 1e6:.1f}M", "sha256": r["sha256"][:12]} for r in records]
    table = markdown_table(shown, ["model", "pretrained", "val_accuracy", "params", "flops", "cpu_hours", "config",
                                   "sha256"], floatfmt={"val_accuracy": ".2f", "cpu_hours": ".2f"})
    return atomic_write(Path(path).with_suffix(".md"), table + "\n\nval_accuracy in %, on the seeded validation "
                        "split each model was trained with; flops per sample (2 per multiply-add).\n")


def export_run(request: ZooExport) -> PretrainedWeights:
    """Ship `request.run` as pretrained weights (see the module docstring).

    Returns:
        the registry row written.

    Raises:
        CheckpointError: the run has no readable checkpoint.
        ConfigError: the run has not finished its epochs, or a request value is bad.
        DataError: its metrics lack the shipped epoch or its times; `request.data`
            cannot be read.
        OutputError: a file cannot be written.
    """
    paths = request.paths
    checkpoint, ckpt, model, history = _finished_run(request.run)
    name = ckpt["model_name"]
    payload = state_dict_bytes(ckpt["model"])
    table = read_registry(paths.weights_dir)
    previous = next((w for w in table if (w.model, w.tag) == (name, request.tag)), None)
    default = request.default or (previous is not None and previous.default)
    others = [replace(w, default=False) if default and w.model == name else w
              for w in table if w is not previous]
    row = _row(request, checkpoint, ckpt, model, history, hashlib.sha256(payload).hexdigest(), len(payload),
               default)
    atomic_write(paths.weights_dir / row.file, payload)
    write_registry(paths.weights_dir, [*others, row])
    if request.data is not None:
        row = _with_measured_strategies(replace(row, details={**row.details, **_measure(row, request)}))
        write_registry(paths.weights_dir, [*others, row])
    _plot_curve(history, card_figures(row, paths.cards_dir)["curve"],
                f"{name} / {request.tag}: validation accuracy per epoch")
    write_cards([row], paths)
    write_zoo_table(read_registry(paths.weights_dir), paths.zoo_table)
    return row


def _with_measured_strategies(row: PretrainedWeights) -> PretrainedWeights:
    """A spatially gated model's row whose constructor default `strategy` is, per gated
    block, the execution its trained rule ran fastest with at batch 256 in the export's
    timing (so `create_model(..., pretrained=TAG)` runs it rather than the architecture's
    default); other rows unchanged. The card names it, and that another machine re-tunes
    with `fastest_block_strategies`."""
    trade_off = row.details.get("trade_off") or {}
    chosen = trade_off.get("curve", [{}])[0].get("strategies_b256") if trade_off.get("kind") == "spatial" else None
    if not chosen:
        return row
    trade_off = {**trade_off, "default_strategy": list(chosen)}
    return replace(row, model_args={**row.model_args, "strategy": list(chosen)},
                   details={**row.details, "trade_off": trade_off})


def _finished_run(run: str | Path) -> tuple[Path, dict[str, Any], torch.nn.Module, list[dict[str, Any]]]:
    """`(checkpoint path, checkpoint, model, per-epoch metrics up to its epoch)` of a
    finished run; refuses a run short of its configured epochs."""
    checkpoint = run_checkpoint(run)
    model, ckpt = load_trained_model(checkpoint)
    epochs = ckpt.get("config", {}).get("epochs")
    last = checkpoint.parent / "last.pt"
    done = load_checkpoint(last).get("epoch", 0) if checkpoint.name != "last.pt" and last.is_file() else ckpt["epoch"]
    if epochs is not None and done < epochs:
        raise ConfigError(f"--run {checkpoint.parent}: its last checkpoint holds epoch {done} of {epochs}; only "
                          "finished runs are shipped (still training?)")
    metrics = checkpoint.parent / "metrics.jsonl"
    history = read_metrics_jsonl(metrics) if metrics.is_file() else list(ckpt.get("history", []))
    history = [r for r in history if r.get("epoch", 0) <= ckpt["epoch"]]
    shipped = next((r for r in history if r.get("epoch") == ckpt["epoch"]), {})
    if not isinstance(shipped.get("val_accuracy"), (int, float)):
        raise DataError(f"{checkpoint.parent}: its metrics have no val_accuracy for epoch {ckpt['epoch']}, the "
                        "epoch shipped")
    return checkpoint, ckpt, model, history


def _row(request: ZooExport, checkpoint: Path, ckpt: dict[str, Any], model: torch.nn.Module,
         history: list[dict[str, Any]], sha256: str, size: int, default: bool) -> PretrainedWeights:
    """The registry row of the weights exported from `checkpoint`."""
    paths, name, config = request.paths, ckpt["model_name"], ckpt.get("config", {})
    shipped = next(r for r in history if r.get("epoch") == ckpt["epoch"])
    times = robust_epoch_seconds(history, request.outlier_factor)
    threads = config.get("threads")
    speeds = [r["images_per_second"] for r in history if isinstance(r.get("images_per_second"), (int, float))]
    data_name = str(ckpt.get("data", "")).partition(":")[0]
    return PretrainedWeights(
        model=name, tag=request.tag, file=f"{name}_{request.tag}.pt", sha256=sha256,
        model_args={"num_classes": ckpt["num_classes"], "in_chans": ckpt["input_shape"][0], **ckpt["model_args"]},
        input_shape=tuple(ckpt["input_shape"]),
        preprocessing_dict=trained_preprocessing(ckpt, str(checkpoint))[0].to_dict(),
        data=_data_fields(data_name, config, shipped), val_accuracy=float(shipped["val_accuracy"]),
        params=sum(p.numel() for p in model.parameters()),
        flops=full_flops_per_sample(model, tuple(ckpt["input_shape"])),
        cpu_hours=times["seconds"] * (threads or 1) / 3600, config=str(config.get("name", checkpoint.parent.name)),
        default=default,
        details={
            "family": registered_model(name).family,
            "dynamic": _is_dynamic(model, registered_model(name).family, tuple(ckpt["input_shape"])),
            "multi_exit": isinstance(model, MultiExit),
            "bytes": size,
            "training_command": _training_command(config, data_name, paths.repo_root),
            "recipe": _recipe(config),
            "provenance": {
                "run": _relative(checkpoint.parent, paths.repo_root), "checkpoint": checkpoint.name,
                "epoch": ckpt["epoch"], "best_epoch": ckpt.get("best_epoch"),
                "best_val_accuracy": ckpt.get("best_val_accuracy"), "threads": threads,
                "median_epoch_seconds": times["median_epoch_seconds"],
                "median_images_per_second": statistics.median(speeds) if speeds else None,
                "recorded_hours": times["recorded_seconds"] / 3600, "replaced_epochs": times["replaced_epochs"],
                "outlier_factor": request.outlier_factor,
            },
            "card": _relative(paths.cards_dir / f"{name}_{request.tag}.md", paths.repo_root),
        },
    )


def write_cards(rows: list[PretrainedWeights], paths: ZooPaths) -> list[Path]:
    """Write the model card of each row (and a dynamic model's trade-off plot) into
    `paths.cards_dir`; returns the cards written."""
    written = []
    for row in rows:
        figures = card_figures(row, paths.cards_dir)
        if "trade_off" in figures:
            _plot_trade_off(row, row.details["trade_off"], figures["trade_off"])
        card = render_model_card(row, {k: v.name for k, v in figures.items()})
        written.append(atomic_write(paths.cards_dir / f"{row.model}_{row.tag}.md", card))
    return written


def _plot_trade_off(row: PretrainedWeights, trade_off: dict[str, Any], png: Path) -> Path:
    """The curve of `trade_off`; for gates, spatial gates, token pruning and widths, the
    static networks as stars."""
    from ..profiling.plots import plot_accuracy_vs_flops

    kind = trade_off.get("kind", "exits")
    static = {}
    if kind in ("gates", "spatial", "tokens", "widths"):
        full = {"gates": "backbone, every block", "spatial": "every position, dense",
                "tokens": "every token kept"}.get(kind, "widest width")
        own = trade_off["static"]
        static[full] = (own.get("flops", trade_off["static_flops"]), own["accuracy"])
        anchor = trade_off.get("anchor")
        if anchor:
            static["static anchor"] = (anchor.get("flops", trade_off["static_flops"]), anchor["accuracy"])
    label = {"gates": "calibrated gates", "exits": "calibrated exits", "spatial": "trained rule, density caps",
             "tokens": "trained ratio, keep ratios"}.get(
        kind, "gate: trained rule, budgets, width caps" if trade_off.get("method") == "dsnet" else "one width each")
    series: dict[str, list[tuple[float, float]]] = {}
    for p in trade_off["curve"]:
        name = f"{row.model} (width cascades, fitted budgets)" if "cascade" in p else f"{row.model} ({label})"
        series.setdefault(name, []).append((p["mean_flops"], p["accuracy"]))
    return plot_accuracy_vs_flops(series, png,
                                  title=f"{row.model} / {row.tag}: accuracy vs. FLOPs", static_points=static or None,
                                  dpi=100)


def _plot_curve(history: list[dict[str, Any]], png: Path, title: str) -> Path:
    """Validation accuracy per epoch of `history`, as a small PNG."""

    with tempfile.TemporaryDirectory() as scratch:
        metrics = Path(scratch) / "metrics.jsonl"
        metrics.write_text("".join(json.dumps({"epoch": r["epoch"], "val_accuracy": r["val_accuracy"]}) + "\n"
                                   for r in history if "val_accuracy" in r))
        return plot_training_curves(metrics, png, title=title, metrics=["val_accuracy"], size=(4.8, 3.2), dpi=100)


def _data_fields(name: str, config: dict[str, Any], shipped: dict[str, Any]) -> dict[str, Any]:
    val_size, seed = config.get("val_size", 0.1), config.get("seed", 0)
    train = shipped.get("train_samples")
    augment = " with random crop and flip" if config.get("augment", True) else ""
    text = (f"{DATA_TITLES.get(name, name)}, training files only: a seeded validation split (val_size={val_size}, "
            f"seed={seed}) was held out and never trained on; the model trained on the other "
            f"{train if train else 'samples'}{augment}. The test files were used neither for training nor for "
            "choosing the epoch.")
    return {"name": name, "title": DATA_TITLES.get(name, name), "val_size": val_size, "seed": seed,
            "train_samples": train, "description": text}


def _training_command(config: dict[str, Any], data_name: str, repo_root: Path) -> str:
    name = config.get("name", "")
    path = Path("configs") / f"{name}.yaml"
    command = f"dynamicnets train --config {path.as_posix() if (repo_root / path).is_file() else name}"
    if data_name in DATA_FOLDERS:
        command += f" data={data_name}:path/to/{DATA_FOLDERS[data_name]}"
    return command


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _measure(row: PretrainedWeights, request: ZooExport) -> dict[str, Any]:
    """The shipped file loaded back and re-scored on its validation split; a dynamic
    model's trade-off measured there."""
    model = create_model(row.model, pretrained=row.tag, pretrained_dir=request.paths.weights_dir).eval()
    fields = row.checkpoint_fields()
    prepared = load_checkpoint_data(fields, f"{row.model}/{row.tag}", request.data, "val")
    metrics = evaluate(model, make_eval_loader(prepared.dataset, 256), "cpu")
    found = {"rescored": {"val_accuracy": metrics["accuracy"], "samples": metrics["samples"]}}
    trade_off = _trade_off(model, prepared.dataset, row, request)
    if trade_off is not None:
        found["trade_off"] = {**trade_off, "allocator": allocator_setting()}
    return found


def _trade_off(model: torch.nn.Module, validation: Dataset, row: PretrainedWeights,
               request: ZooExport) -> dict[str, Any] | None:
    """The first measurement that applies to `model`: exits, gates, spatial gates, token
    pruning, widths, then (family `parameters`, with an anchor) the comparison with the
    anchor; `None` when none does."""
    timing = {"seed": row.data["seed"], "threads": request.threads, "min_run_time": request.min_run_time}
    trade_off = measure_trade_off(model, validation, row.input_shape, budgets=request.budgets, **timing)
    if trade_off is not None:
        return trade_off
    anchor, anchor_name = _anchor(row, request)
    timing.update(anchor=anchor, anchor_name=anchor_name)
    trade_off = measure_gate_trade_off(model, validation, row.input_shape, budgets=request.budgets, **timing)
    if trade_off is None:
        trade_off = measure_spatial_trade_off(model, validation, row.input_shape, caps=request.density_caps,
                                              **timing)
    if trade_off is None:
        trade_off = measure_token_trade_off(model, validation, row.input_shape, keep_ratios=request.keep_ratios,
                                            **timing)
    if trade_off is None:
        trade_off = measure_width_trade_off(model, validation, row.input_shape, **timing)
    if trade_off is None and row.details.get("family") == "parameters":
        trade_off = measure_anchor_comparison(model, validation, **timing)
    return trade_off


def _recipe(config: dict[str, Any]) -> dict[str, Any]:
    """The `RECIPE_KEYS` a run's config sets (unset keys and a teacher's settings without a
    teacher left out)."""
    teacher = config.get("teacher_checkpoint") not in (None, "")
    return {k: config[k] for k in RECIPE_KEYS if k in config and config[k] not in (None, "", {})
            and (teacher or not k.startswith("teacher_"))}


def _is_dynamic(model: torch.nn.Module, family: str, input_shape: tuple[int, ...]) -> bool:
    """Whether the card needs a trade-off section: the model lists execution modes, or its
    output for one sample carries decisions or several exits, or it computes its weights per
    input (the dynamic-parameter family, which may record no decision). A static backbone
    registered with its family (`vit_cifar` among the transformers) is not dynamic."""
    if supported_executions(model) or family == "parameters":
        return True
    out = zero_sample_output(model, input_shape)
    return bool(out.decisions) or len(out.exit_logits or ()) > 1


def _anchor(row: PretrainedWeights, request: ZooExport) -> tuple[torch.nn.Module | None, str | None]:
    """`(model in eval mode, name)` of `request.anchor`, or `(None, None)`.

    Raises:
        ConfigError: the anchor was trained for other inputs or classes than `row`.
    """
    if request.anchor is None:
        return None, None
    checkpoint = run_checkpoint(request.anchor)
    anchor, ckpt = load_trained_model(checkpoint)
    if (tuple(ckpt["input_shape"]), ckpt["num_classes"]) != (tuple(row.input_shape), row.num_classes):
        raise ConfigError(f"--anchor {checkpoint}: trained for inputs {tuple(ckpt['input_shape'])} and "
                          f"{ckpt['num_classes']} classes; {row.model}/{row.tag} expects {tuple(row.input_shape)} "
                          f"and {row.num_classes}")
    return anchor.eval(), _relative(checkpoint, request.paths.repo_root)
