"""`Trainer`: fits a registered model on a data spec, with checkpoints, resume and DDP."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..attacks import InputSpace
from ..config import to_plain
from ..profiling.report import atomic_write
from ..data import load_data, make_loaders, set_epoch
from ..errors import CheckpointError, ConfigError, DataError, OutputError, TrainingError
from ..models import create_model
from ..writing import describe_os_error, ensure_dir, remove_stale_temp_files
from .checkpoint import (FORMAT, TRAINING_FIELDS, check_compatible, check_fields, first_non_finite,
                         load_checkpoint, save_checkpoint)
from .run_lock import RunLock
from .config import TrainConfig
from .distributed import all_reduce_sum, init_distributed, is_distributed, is_main
from .evaluate import autocast_context, evaluate, to_channels_last, to_device
from .initialise import execution_kwargs, load_initial_weights, temperature_schedule
from .adversarial import AdversarialTraining
from .distillation import exit_distillation_loss
from .teacher import TeacherDistillation
from .losses import multi_exit_loss, normalized_exit_weights
from .mixing import BatchMixing
from .protocols import SupportsBaselineUpdate, SupportsLabelLosses, SupportsTrainingProgress
from .rng import capture_rng_state, derived_seed, restore_rng_state, seed_everything
from .schedules import build_scheduler, lr_factor

# Files of a run folder (their crash leftovers `.<name>.*.tmp` are removed on resume).
_RUN_FILES = ("last.pt", "best.pt", "config.yaml", "metrics.jsonl")


def _replaced(name: str) -> str:
    """Where an overwritten run's checkpoint waits until the new run saves its first epoch."""
    return name.replace(".pt", ".replaced.pt")


# Config keys that may change between a run and its resumption without a note.
_RESUME_FREE_KEYS = {"resume", "progress", "epochs", "num_workers", "threads", "device", "out_dir",
                     "optimizer_impl"}


def time_left(history: list[dict[str, Any]], epochs_left: int, recent: int = 5) -> str:
    """`"  eta 1h52m"`: `epochs_left` times the median `epoch_seconds` of the last `recent`
    epochs of `history` (the speed now, whatever earlier sessions ran at); `""` when none is
    left or no epoch recorded its time."""
    seconds = sorted(r["epoch_seconds"] for r in history[-recent:]
                     if isinstance(r.get("epoch_seconds"), (int, float)))
    if epochs_left <= 0 or not seconds:
        return ""
    left = epochs_left * seconds[len(seconds) // 2]
    if left < 60:
        return f"  eta {max(1, math.ceil(left))}s"
    hours, minutes = divmod(math.ceil(left / 60), 60)
    return f"  eta {hours}h{minutes:02d}m" if hours else f"  eta {minutes}m"


def _stderr_is_terminal() -> bool:
    """Progress bars only on a terminal: in a log file their carriage-return updates are noise."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def resolve_device(device: str, local_rank: int = 0, what: str = "key 'device'") -> torch.device:
    """`auto` -> `cuda` when available, else `cpu`; CUDA runs use `cuda:local_rank`.

    Args:
        device: `auto`, `cpu`, `cuda` or `cuda:N` (`N` wins over `local_rank`).
        local_rank: the CUDA device of this process under data-parallel training.
        what: the config key or option that gave `device`, named in errors.

    Returns:
        the device.

    Raises:
        ConfigError: (naming `what`) an unknown device, or CUDA asked for but not available.
    """
    text = device.strip().lower() if isinstance(device, str) else device
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":") if isinstance(text, str) else ("", "", "")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"{what}: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if not torch.cuda.is_available():
        raise ConfigError(f"{what}: {device!r} requested, but this machine has no usable CUDA device "
                          f"(torch.cuda.is_available() is False); use cpu")
    ordinal = int(index) if index else local_rank
    if ordinal >= torch.cuda.device_count():
        raise ConfigError(f"{what}: {device!r} requested, but only {torch.cuda.device_count()} CUDA "
                          f"device(s) are visible")
    return torch.device("cuda", ordinal)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters; weight decay only on tensors of rank >= 2;
    `config.optimizer_impl` picks the loop, multi-tensor (`foreach`) or `fused` kernels."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"model {config.model!r} has no trainable parameters")
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [g for g in ({"params": decay, "weight_decay": config.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    impl = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}[config.optimizer_impl]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0, **impl)
    return torch.optim.AdamW(groups, lr=config.lr, **impl)


class Trainer:
    """Trains `config.model` on `config.data` and writes `<out_dir>/<name>/`.

    Files (written by rank 0 only): `config.yaml`; `metrics.jsonl`, one JSON line per
    finished epoch (`epoch, step, train_loss, task_loss, aux_loss, train_accuracy, train_mean_flops,
    val_loss, val_accuracy, val_exit_accuracy, val_mean_flops, lr, epoch_seconds,
    images_per_second`); `last.pt` after every epoch and `best.pt` on a new best
    validation accuracy, both written atomically, `last.pt` first (see `checkpoint.py` for
    contents): a crash between the two leaves a `last.pt` that knows the best epoch is its
    own, and resuming rebuilds `best.pt` from it. An epoch whose validation loss or weights
    are NaN/inf is never written. While `fit` runs, `.lock` holds the writer's pid: a second
    trainer on the same folder is refused, a lock left by a dead process is taken over.
    Files get the mode the user's umask gives.

    The loss is `multi_exit_loss(out, y, exit_weights, label_smoothing) + out.aux_loss()`
    (plus the model's `label_losses(out, y)` when it has them, `SupportsLabelLosses`, and
    the self-distillation and frozen-teacher terms when configured); with `mixup` or
    `cutmix` the batch is mixed first and the task loss is the share-weighted mix of the
    losses against both label sets (`training.mixing`). With
    `adversarial` set, part of every batch is first replaced by attacked inputs
    (`dynamicnets.training.adversarial`).
    Every epoch re-seeds the global random streams from `(seed, epoch, rank)`, so runs
    are reproducible (same seed -> same weights on CPU) and a resumed run continues
    exactly as the uninterrupted one would have (the loader's shuffle generator is
    checkpointed too).

    Data-parallel: launched under `torchrun --nproc-per-node N`, the Trainer joins the
    process group (gloo on CPU, nccl on CUDA; an existing group is reused, so several
    Trainers may run one after another in a process; the group is left at exit), wraps the model in
    `DistributedDataParallel` (no `find_unused_parameters`: every parameter must get a
    gradient), shards the data with `make_loaders(rank=, world_size=)` and all-reduces
    metrics. `batch_size` is per process, so the **effective global batch is
    `batch_size * world_size`** (one DDP step equals one single-process step on that
    global batch, for models without batch-norm); `lr` is not rescaled for you.
    BatchNorm statistics are per process during training; buffers are broadcast from
    rank 0 before evaluation and saving.

    Args:
        config: the run.
        model: a model returning `DynamicOutput`; built with `create_model(config.model,
            num_classes=, in_chans=, **config.model_args)` when None (seeded by `seed`).
        bundle: a `DataBundle`; loaded with `load_data(config.data, val_size=, seed=,
            augment=, cutout=)` when None.
    """

    def __init__(self, config: TrainConfig, model: nn.Module | None = None, bundle=None) -> None:
        self.config = config
        requested = resolve_device(config.device).type  # fails early on a bad `device`
        self.rank, self.world_size, self.local_rank = init_distributed(
            backend="nccl" if requested == "cuda" else "gloo"
        )
        if config.train_execution == "compact" and self.world_size > 1:
            raise ConfigError(
                "key 'train_execution': compact training under DistributedDataParallel would leave the "
                "parameters of a block no local sample runs without a gradient in that step; use 'masked'"
            )
        self.is_main = is_main(self.rank)
        self.device = resolve_device(config.device, self.local_rank)
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.run_dir = Path(config.out_dir) / config.name

        seed_everything(config.seed)
        self.bundle = bundle if bundle is not None else load_data(
            config.data, val_size=config.val_size, seed=config.seed, augment=config.augment, cutout=config.cutout
        )
        if model is None:
            seed_everything(config.seed)
            model = create_model(config.model, num_classes=self.bundle.num_classes,
                                 in_chans=self.bundle.input_shape[0], **config.model_args)
        self.channels_last = config.channels_last and len(self.bundle.input_shape) == 3
        model = model.to(self.device)
        if self.channels_last:
            model = to_channels_last(model)
        self.model = model
        if config.exit_weights is not None and isinstance(getattr(model, "num_exits", None), int):
            normalized_exit_weights(config.exit_weights, model.num_exits)  # a wrong count fails here, not at step 1
        if config.cutmix > 0 and len(self.bundle.input_shape) != 3:
            raise ConfigError(f"key 'cutmix': needs image data (C, H, W), {config.data!r} gives inputs of shape "
                              f"{tuple(self.bundle.input_shape)}")
        self.mixing = BatchMixing(config.mixup, config.cutmix)
        if self.mixing.enabled and isinstance(model, SupportsBaselineUpdate):
            raise ConfigError(f"keys 'mixup'/'cutmix': {config.model!r} trains with REINFORCE, whose reward needs one "
                              f"label per image; a mixed image has two. Set mixup and cutmix to 0")
        self.adversary = AdversarialTraining.from_config(config.adversarial)
        if self.adversary is not None:  # inputs attacked in the pixel space of the data
            self.adversary.check_model(model)
            self.input_space = InputSpace.from_preprocessing(getattr(self.bundle, "preprocessing", None), config.data)
        if self.world_size > 1:
            device_ids = [self.local_rank] if self.device.type == "cuda" else None
            self._train_model: nn.Module = DistributedDataParallel(model, device_ids=device_ids)
        else:
            self._train_model = model

        self.train_loader, self.val_loader = make_loaders(
            self.bundle, config.batch_size, num_workers=config.num_workers, seed=config.seed,
            rank=self.rank, world_size=self.world_size,
        )
        n_batches = len(self.train_loader)
        if n_batches == 0:
            raise DataError(f"data {config.data!r}: the training loader yields no batches "
                            f"(batch_size={config.batch_size} larger than the training set?)")
        self.steps_per_epoch = min(n_batches, config.max_steps_per_epoch or n_batches)
        self.temperature = (None if config.temperature_schedule is None
                            else temperature_schedule(config.temperature_schedule, self.steps_per_epoch, model))
        self.forward_kwargs = execution_kwargs(config.train_execution, model)
        self.teacher = TeacherDistillation.from_config(config, self.device, self.bundle.num_classes,
                                                       self.bundle.input_shape,
                                                       getattr(self.bundle, "preprocessing", None))
        self.optimizer = build_optimizer(model, config)
        self.scheduler = build_scheduler(
            self.optimizer, total_steps=config.epochs * self.steps_per_epoch,
            warmup_steps=config.warmup_epochs * self.steps_per_epoch, schedule=config.schedule,
        )
        self.epoch = 0  # finished epochs
        self.step = 0  # optimizer steps taken
        self.best_val_accuracy: float | None = None
        self.best_epoch: int | None = None
        self.history: list[dict[str, Any]] = []
        self._replacing = False  # checkpoints of a replaced run wait aside until this run saves an epoch

    # ------------------------------------------------------------------ public
    def fit(self) -> dict[str, Any]:
        """Train up to `config.epochs` (continuing `last.pt` when `resume`).

        Returns:
            the last epoch's metrics plus `best_val_accuracy`, `best_epoch`, `run_dir`
            and `already_finished` (True when a resumed run had nothing left to do).

        Only one process writes into a run folder at a time: rank 0 holds `<run>/.lock`
        (with its pid) while `fit` runs; a lock left by a dead process is taken over.

        Raises:
            TrainingError: the training loss, the validation loss or the weights became
                NaN/inf (the previous `last.pt` and `best.pt` stay intact).
            CheckpointError: `resume` with a `last.pt` of another model or unreadable.
            RunFolderBusy: another live process is writing into the run folder.
            OutputError: the run folder or a run file cannot be written (the last good
                checkpoint is kept).
        """
        lock = RunLock(self.run_dir) if self.is_main else None
        if lock is not None:
            lock.acquire()
            if lock.stale_owner is not None:
                self._say(f"{self.run_dir}: took over the lock of process {lock.stale_owner}, which is no "
                          f"longer running")
        try:
            return self._fit()
        finally:
            if lock is not None:
                lock.release()

    def _fit(self) -> dict[str, Any]:
        resumed = self.config.resume and self._resume()
        if not resumed:
            self._refuse_to_clobber()
            if self.config.init_from is not None:
                copied, total = load_initial_weights(self.model, self.config.init_from, self.config.init_prefix)
                self._say(f"initialised {copied} of {total} model tensors from {self.config.init_from}")
        if self.epoch >= self.config.epochs:
            self._say(f"{self.run_dir}: run already finished ({self.epoch}/{self.config.epochs} epochs); "
                      f"raise `epochs` to train further")
            return self._summary(already_finished=True)
        if self.is_main:
            self._write_run_files(fresh=not resumed)
        self._say_start()
        for epoch in range(self.epoch, self.config.epochs):
            record = self._run_epoch(epoch)
            self._finish_epoch(record)
        self._say_end()
        return self._summary(already_finished=False)

    def _say_start(self) -> None:
        """One banner line: model, size, data, epochs, where the run goes."""
        cfg = self.config
        params = sum(p.numel() for p in self.model.parameters())
        epochs = f"epochs {self.epoch + 1}..{cfg.epochs}" if self.epoch else f"{cfg.epochs} epochs"
        processes = f" x {self.world_size} processes" if self.world_size > 1 else ""
        self._say(f"training {cfg.model} ({params:,} parameters) on {cfg.data} "
                  f"({len(self.bundle.train)} train / {len(self.bundle.val)} val samples, input "
                  f"{tuple(self.bundle.input_shape)}), {epochs} x {self.steps_per_epoch} steps, batch "
                  f"{cfg.batch_size}{processes}, on {self.device}; run folder {self.run_dir}")

    def _say_end(self) -> None:
        """One summary line: best epoch and accuracy, and where the weights are."""
        self._say(f"finished {self.config.name}: best val accuracy {self.best_val_accuracy:.4f} at epoch "
                  f"{self.best_epoch}/{self.config.epochs}; best weights {self.run_dir / 'best.pt'}, "
                  f"last {self.run_dir / 'last.pt'}, metrics {self.run_dir / 'metrics.jsonl'}")

    # ----------------------------------------------------------------- epochs
    def _run_epoch(self, epoch: int) -> dict[str, Any]:
        seed_everything(derived_seed(self.config.seed, epoch, self.rank))
        set_epoch(self.train_loader, epoch)
        start = time.perf_counter()
        train = self._train_epoch(epoch)
        train_seconds = time.perf_counter() - start
        self._sync_buffers()
        val = evaluate(self.model, self.val_loader, self.device, bf16=self.config.bf16,
                       channels_last=self.channels_last)
        self._check_finite_epoch(epoch, val["loss"])
        return {
            "epoch": epoch + 1,
            "step": self.step,
            **train,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "val_exit_accuracy": val["exit_accuracy"],
            "val_mean_flops": val["mean_flops"],
            "val_block_execution_rate": val["block_execution_rate"],
            "epoch_seconds": time.perf_counter() - start,
            "images_per_second": train["train_samples"] / max(train_seconds, 1e-9),
        }

    def _train_epoch(self, epoch: int) -> dict[str, Any]:
        self._train_model.train()
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)  # loss, task, aux, correct, count, flops
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.config.epochs}", leave=False,
                   dynamic_ncols=True, disable=not (self.config.progress and self.is_main and _stderr_is_terminal()))
        try:
            for index, (x, y) in enumerate(self.train_loader):
                if index >= self.steps_per_epoch:
                    break
                lr = self.optimizer.param_groups[0]["lr"]
                step_sums, loss_value = self._train_step(x, y, epoch, index)
                sums += step_sums
                bar.update(1)
                if index % 10 == 0 or index + 1 == self.steps_per_epoch:
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}")
        finally:
            bar.close()
        loss, task, aux, correct, count, flops = all_reduce_sum(sums).tolist()
        return {"train_loss": loss / count, "task_loss": task / count, "aux_loss": aux / count,
                "train_accuracy": correct / count,
                "train_mean_flops": flops / count if math.isfinite(flops) else None,
                "lr": lr, "train_samples": int(count)}

    def _train_step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, index: int) -> tuple[torch.Tensor, float]:
        """One optimizer step on a batch `x: (B, *input_shape)`, `y: (B,)`.

        Returns:
            `(sums, loss)`: float64 `(6,)` batch sums of (loss, task loss, aux loss,
            correct, count, per-sample FLOPs of what ran -- NaN for a model that reports
            none) on the device, and the loss averaged over processes.
        """
        cfg = self.config
        x = to_device(x, self.device, self.channels_last)
        y = y.to(self.device, non_blocking=True)
        if self.adversary is not None:
            x = self.adversary.perturb(self.model, x, y, self.input_space)
        mixed = self.mixing(x, y)
        y = mixed.dominant
        kwargs = dict(self.forward_kwargs)
        if self.temperature is not None:
            kwargs["temperature"] = self.temperature(self.step)
        if isinstance(self.model, SupportsTrainingProgress) and self.model.uses_training_progress:
            kwargs["progress"] = min(1.0, self.step / max(1, self.config.epochs * self.steps_per_epoch))
        with autocast_context(self.device, cfg.bf16):
            out = self._train_model(mixed.x, **kwargs)
        task = multi_exit_loss(out, mixed.target_a, cfg.exit_weights, cfg.label_smoothing)
        if mixed.lam < 1.0:
            task = mixed.lam * task + (1.0 - mixed.lam) * multi_exit_loss(out, mixed.target_b, cfg.exit_weights,
                                                                             cfg.label_smoothing)
        aux = out.aux_loss().float()
        if isinstance(self.model, SupportsLabelLosses):
            for value in self.model.label_losses(out, y).values():
                aux = aux + value.float()
        if cfg.distill_weight > 0:
            aux = aux + exit_distillation_loss(out, cfg.distill_temperature, cfg.distill_weight)
        if self.teacher is not None:
            aux = aux + self.teacher.loss(mixed.x, out.logits)
        loss = task + aux
        loss_value = self._checked_loss(loss, epoch, index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        if isinstance(self.model, SupportsBaselineUpdate):  # REINFORCE: reward baseline, outside forward
            self.model.update_baseline(out, y)
        self.step += 1
        with torch.no_grad():
            n = y.shape[0]
            correct = (out.logits.detach().argmax(1) == y).sum()
            sums = torch.stack([loss.detach().double() * n, task.detach().double() * n,
                                aux.detach().double() * n, correct.double(),
                                torch.tensor(float(n), dtype=torch.float64, device=self.device),
                                out.flops.detach().double().sum() if out.flops is not None
                                else torch.tensor(math.nan, dtype=torch.float64, device=self.device)])
        return sums, loss_value

    def _kept_checkpoint(self) -> str:
        """What is on disk to fall back on, for error messages."""
        if self.epoch:
            return f"{self.run_dir / 'last.pt'} still holds epoch {self.epoch}, the last good one"
        return "no epoch had finished, so no checkpoint was written"

    def _check_finite_epoch(self, epoch: int, val_loss: float) -> None:
        """Refuse to record an epoch whose validation loss or weights are NaN/inf.

        Raises:
            TrainingError: naming the run, the epoch and what is kept on disk.
        """
        bad_weight = first_non_finite(self.model.state_dict())
        if bad_weight is not None:
            what = f"the weights became NaN/inf (first: {bad_weight!r})"
        elif val_loss is None or not math.isfinite(val_loss):
            what = f"the validation loss became {val_loss}"
        else:
            return
        raise TrainingError(
            f"run {self.config.name!r}: {what} after epoch {epoch + 1} (global step {self.step}); try a lower "
            f"lr (now lr={self.config.lr:g}), warmup_epochs or grad_clip. This epoch was not saved; "
            f"{self._kept_checkpoint()}."
        )

    def _checked_loss(self, loss: torch.Tensor, epoch: int, index: int) -> float:
        """The loss averaged over processes; raises TrainingError when it is NaN/inf.

        Under DDP the value is all-reduced *before* backward, so every rank stops at the
        same step instead of one rank waiting forever in the gradient all-reduce.
        """
        value = float(all_reduce_sum(loss.detach().double().reshape(1)).item()) / self.world_size
        if not math.isfinite(value):
            kept = self._kept_checkpoint()
            raise TrainingError(
                f"run {self.config.name!r}: loss became {value} at epoch {epoch + 1}, step {index + 1} "
                f"(global step {self.step + 1}); try a lower lr (now lr={self.config.lr:g}), warmup_epochs "
                f"or grad_clip. {kept}."
            )
        return value

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank."""
        if is_distributed():
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def _finish_epoch(self, record: dict[str, Any]) -> None:
        kept = self._kept_checkpoint()
        self.epoch = record["epoch"]
        self.history.append(record)
        is_best = self.best_val_accuracy is None or record["val_accuracy"] > self.best_val_accuracy
        if is_best:
            self.best_val_accuracy = record["val_accuracy"]
            self.best_epoch = self.epoch
        if self.is_main:
            try:
                self._save_epoch(record, is_best)
            except OutputError as err:
                raise OutputError(f"{err}; epoch {self.epoch} was not saved, {kept}") from err
            flops = record["val_mean_flops"]  # printed whatever `progress` says: it is the run's log
            self._say(f"epoch {self.epoch}/{self.config.epochs}  train loss {record['train_loss']:.4f} "
                      f"acc {record['train_accuracy']:.4f}  val loss {record['val_loss']:.4f} "
                      f"acc {record['val_accuracy']:.4f}"
                      + (f"  {flops / 1e6:.3g} MFLOPs" if flops is not None else "")
                      + f"  {record['images_per_second']:.0f} img/s  {record['epoch_seconds']:.1f}s"
                      + time_left(self.history, self.config.epochs - self.epoch))

    def _save_epoch(self, record: dict[str, Any], is_best: bool) -> None:
        """Append the epoch to `metrics.jsonl`, then write `last.pt`, then `best.pt`.

        `last.pt` records `best_epoch`; a crash between the two checkpoint writes leaves
        a `last.pt` whose `best_epoch` is its own epoch and an older `best.pt`, which
        `_repair_best` rebuilds from `last.pt` on resume (in every other crash window the
        two files already agree).
        """
        metrics = self.run_dir / "metrics.jsonl"
        try:
            with open(metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:
            raise OutputError(describe_os_error(metrics, err)) from err
        state = self._checkpoint_state()
        save_checkpoint(self.run_dir / "last.pt", state)
        if is_best:
            save_checkpoint(self.run_dir / "best.pt", state)
        self._drop_replaced_checkpoints()

    # -------------------------------------------------------------- checkpoint
    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "model_name": self.config.model,
            "model_args": to_plain(self.config.model_args),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_val_accuracy": self.best_val_accuracy,
            "best_epoch": self.best_epoch,
            "config": to_plain(self.config),
            "data": self.config.data,
            "num_classes": int(self.bundle.num_classes),
            "input_shape": [int(s) for s in self.bundle.input_shape],
            "preprocessing": self._preprocessing(),
            "rng": capture_rng_state(self.train_loader),
            "history": list(self.history),
        }

    def _preprocessing(self) -> dict[str, Any] | None:
        """How the training inputs were prepared (stored type, scale, mean, std, input
        shape), for evaluation to apply to any data source; `None` for a data set not read
        by `load_data` (evaluation then derives it from `data`)."""
        prep = getattr(self.bundle, "preprocessing", None)
        return None if prep is None else prep.to_dict()

    def _resume(self) -> bool:
        """Load `last.pt` into model, optimizer, scheduler and counters; False if absent."""
        path = self.run_dir / "last.pt"
        if os.path.lexists(path) and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise CheckpointError(f"{path}: is {kind}, expected the checkpoint to resume from; move it "
                                  f"away (or pass overwrite=true to start this run afresh)")
        if not path.is_file():
            self._say(f"{path}: no checkpoint yet; starting a fresh run")
            return False
        if self.is_main:
            for leftover in remove_stale_temp_files(self.run_dir, _RUN_FILES):
                self._say(f"removed {leftover}, left over by a crashed write")
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a dynamicnets training checkpoint (format {ckpt.get('format')!r})")
        check_fields(ckpt, TRAINING_FIELDS, source=str(path))
        check_compatible(ckpt, self.config.model, self.model, source=str(path))
        bad_weight = first_non_finite(ckpt["model"])
        if bad_weight is not None:
            raise CheckpointError(f"{path}: tensor {bad_weight!r} holds NaN or infinite values; a diverged "
                                  f"run cannot be resumed (pass overwrite=true to start afresh)")
        saved_config = ckpt["config"]
        if saved_config.get("optimizer", self.config.optimizer) != self.config.optimizer:
            raise CheckpointError(f"{path}: trained with optimizer {saved_config['optimizer']!r}, config asks "
                                  f"for {self.config.optimizer!r}; keep the optimizer or start a new run")
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.epoch = int(ckpt["epoch"])
            self.step = int(ckpt["step"])
            self.best_val_accuracy = ckpt["best_val_accuracy"]
            self.best_epoch = ckpt["best_epoch"]
            self.history = list(ckpt["history"])
            restore_rng_state(ckpt["rng"], self.train_loader)
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError) as e:
            what = f"key {e} is missing" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise CheckpointError(f"{path}: incomplete or inconsistent training checkpoint ({what})") from e
        self._apply_current_hyperparameters()
        if self.is_main:
            self._repair_best(ckpt)
        changed = sorted(k for k, v in saved_config.items()
                         if k not in _RESUME_FREE_KEYS and getattr(self.config, k, v) != v)
        note = (f"; config keys changed since the checkpoint (current values apply): {', '.join(changed)}"
                if changed else "")
        if saved_config.get("epochs", self.config.epochs) != self.config.epochs:
            note += f"; training to epoch {self.config.epochs} (the run was started for {saved_config['epochs']})"
        self._say(f"resuming {path} after epoch {self.epoch} (step {self.step}){note}")
        return True

    def _repair_best(self, last: dict[str, Any]) -> None:
        """Make `best.pt` hold the best epoch's weights again after a crash.

        `last.pt` is written before `best.pt`, so a `best.pt` that disagrees with
        `last.pt`'s `best_epoch` can only be left by a crash between the two writes of
        that epoch, when `best_epoch` is `last.pt`'s own epoch: `last.pt` then holds
        exactly the best weights and is copied to `best.pt`.
        """
        if last["best_epoch"] is None:
            return
        best_path = self.run_dir / "best.pt"
        try:
            best_epoch_on_disk = load_checkpoint(best_path).get("epoch")
        except CheckpointError:
            best_epoch_on_disk = None
        if best_epoch_on_disk == last["best_epoch"]:
            return
        if last["best_epoch"] == last["epoch"]:
            save_checkpoint(best_path, last)
            self._say(f"{best_path}: held epoch {best_epoch_on_disk}, rebuilt from last.pt (best epoch "
                      f"{last['best_epoch']}; a crash came between the two writes)")
        else:
            self._say(f"warning: {best_path} does not hold the best epoch {last['best_epoch']} "
                      f"(found epoch {best_epoch_on_disk}); it cannot be rebuilt from last.pt")

    def _refuse_to_clobber(self) -> None:
        aside = self.run_dir / _replaced("last.pt")
        if aside.exists() and not (self.run_dir / "last.pt").exists() and not self.config.overwrite:
            raise ConfigError(
                f"{self.run_dir}: holds {aside.name}, the checkpoint of a run an overwrite replaced and that overwrite "
                f"never saved an epoch; rename it to last.pt (and {_replaced('best.pt')} to best.pt) to resume that "
                f"run, or pass overwrite=true to start afresh"
            )
        previous = self.run_dir / "last.pt"
        if previous.exists() and not self.config.overwrite:
            raise ConfigError(
                f"{self.run_dir}: holds a previous run ({previous.name}); pass resume=true "
                f"(--resume) to continue it, overwrite=true to replace it, or another name"
            )

    def _apply_current_hyperparameters(self) -> None:
        """After loading optimizer/scheduler state: the checkpoint gives the position (step,
        momentum buffers), *this* config gives lr, schedule, weight decay and momentum."""
        fresh = build_optimizer(self.model, self.config).param_groups
        if len(fresh) != len(self.optimizer.param_groups):
            raise CheckpointError(f"{self.run_dir / 'last.pt'}: optimizer parameter groups do not match the model")
        factor = lr_factor(self.scheduler.last_epoch, self.config.epochs * self.steps_per_epoch,
                           self.config.warmup_epochs * self.steps_per_epoch, self.config.schedule)
        for group, new in zip(self.optimizer.param_groups, fresh):
            group.update({k: v for k, v in new.items() if k != "params"})
            group["initial_lr"] = self.config.lr
            group["lr"] = self.config.lr * factor
        self.scheduler.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)

    # ------------------------------------------------------------------ files
    def _write_run_files(self, fresh: bool) -> None:
        ensure_dir(self.run_dir, "run folder")
        replaced = fresh and (self.run_dir / "last.pt").exists()
        atomic_write(self.run_dir / "config.yaml", yaml.safe_dump(to_plain(self.config), sort_keys=False))
        # The checkpoint's history is the truth: finished epochs only, none twice.
        lines = "".join(json.dumps(r) + "\n" for r in ([] if fresh else self.history))
        atomic_write(self.run_dir / "metrics.jsonl", lines)
        if fresh:  # a later resume must not pick up the checkpoints of the run we replace,
            for name in ("last.pt", "best.pt"):  # kept aside until this run saves its first epoch
                moved = self._move(self.run_dir / name, self.run_dir / _replaced(name))
                # overwrite=true also replaces a run an earlier, failed overwrite had set aside
                self._replacing |= moved or (self.config.overwrite and (self.run_dir / _replaced(name)).exists())
        if replaced:
            self._say(f"{self.run_dir}: overwrite=true, replacing the previous run there (its checkpoints are "
                      f"kept as {_replaced('last.pt')} and {_replaced('best.pt')} until this run's first epoch "
                      f"is saved)")

    def _move(self, source: Path, target: Path) -> bool:
        """Move `source` to `target`; False when there is no `source`."""
        if source.is_dir():
            raise OutputError(f"{source}: is a folder; move it away to start this run")
        try:
            if not source.exists():
                return False
            source.replace(target)
            return True
        except OSError as err:
            raise OutputError(describe_os_error(source, err, "cannot move aside")) from err

    def _drop_replaced_checkpoints(self) -> None:
        """After this run's first saved epoch: the checkpoints it moved aside (only those)."""
        if not self._replacing:
            return
        self._replacing = False
        for name in ("last.pt", "best.pt"):
            try:
                (self.run_dir / _replaced(name)).unlink(missing_ok=True)
            except OSError:  # a leftover copy of the old run is harmless
                pass

    def _summary(self, already_finished: bool) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {**last, "best_val_accuracy": self.best_val_accuracy, "best_epoch": self.best_epoch,
                "run_dir": str(self.run_dir), "already_finished": already_finished}

    def _say(self, message: str) -> None:
        if self.is_main:
            tqdm.write(message)

