"""`TrainConfig`: every knob of a training run, as one typed dataclass.

Plain typed fields, so `dynamicnets.config.from_mapping(TrainConfig, yaml_dict)` can
check keys and types; `__post_init__` then checks ranges and names the key at fault.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, get_args, get_origin, get_type_hints

from ..errors import ConfigError
from .adversarial import AdversarialTraining


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        name: run name; files go to `<out_dir>/<name>/`.
        model: registered model name (`dynamicnets.list_models()`).
        model_args: extra keyword arguments of the model constructor.
        data: data spec for `dynamicnets.data.load_data` (`digits`, `cifar10:DIR`, ...).
        val_size: validation split, a fraction of the training set (float) or a count (int).
        epochs: total number of epochs of the run (a resumed run continues up to it).
        batch_size: batch size *per process*; under data-parallel training the
            effective global batch is `batch_size * world_size`.
        optimizer: `sgd` (with `momentum`, `nesterov`) or `adamw`.
        lr: peak learning rate.
        momentum: SGD momentum (0 disables it, and Nesterov with it).
        nesterov: Nesterov momentum for SGD.
        optimizer_impl: how the optimizer updates the parameters: `default` (PyTorch's
            choice: a loop over the tensors on CPU), `foreach` (multi-tensor kernels, the
            same result) or `fused` (one kernel for all parameters; the result differs from
            the loop's by float rounding only). On one CPU thread `fused` takes ResNet-20's
            SGD step from about 6 ms to 0.2 ms -- a small share of a training step.
        weight_decay: decoupled (AdamW) or L2 (SGD) decay on weights of rank >= 2
            (biases and normalisation parameters are not decayed).
        schedule: `cosine` (per step, down to 0 at the last step) or `constant`.
        warmup_epochs: linear warm-up from ~0 to `lr` over this many epochs.
        exit_weights: weight of each exit's cross-entropy (normalised); None = equal.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        distill_weight: weight of self-distillation of every exit from the final one
            (`exit_distillation_loss`, logged within `aux_loss`); 0 = off.
        distill_temperature: softening temperature of that distillation.
        teacher_checkpoint: a training checkpoint of a static model (DynamicViT's frozen
            teacher, e.g. the static ViT a dynamic model is fine-tuned from); its model is
            rebuilt from the recorded name and arguments, frozen, in eval mode. Or
            `pretrained:MODEL:TAG`: the weights shipped with the package.
        teacher_weight: weight of `T^2 KL(softmax(teacher / T) || softmax(student / T))` on
            the final logits (`dynamicnets.training.teacher`, logged within `aux_loss`);
            0 = off (the teacher is not loaded). Needs `teacher_checkpoint`.
        teacher_temperature: `T` of that distillation.
        grad_clip: max global gradient norm; None = no clipping.
        seed: seed of model initialisation, data split/shuffle and augmentation.
        device: `auto` (cuda when available), `cpu` or `cuda`.
        bf16: run forward passes under bfloat16 autocast.
        channels_last: channels-last memory format for 4-D (image) inputs.
        num_workers: DataLoader worker processes.
        augment: training-set augmentation (when the data set defines one).
        cutout: side in pixels of the square Cutout (DeVries & Taylor 2017) removes from
            every training image after that augmentation, filled with the data set's mean
            (16 on CIFAR-10 in the paper); 0 = off. Image data only.
        mixup: Beta alpha of Mixup (Zhang et al. 2018), mixing each training batch with a
            permutation of itself; 0 = off (0.8 in DeiT). See `training.mixing`.
        cutmix: Beta alpha of CutMix (Yun et al. 2019), pasting a box from the permuted
            batch; 0 = off (1.0 in DeiT). With both on, each batch uses one, CutMix with
            probability one half. Image data only.
        threads: `torch.set_num_threads` for this process; None = leave it.
        out_dir: parent folder of run folders.
        resume: continue from `<out_dir>/<name>/last.pt` when it exists.
        overwrite: start afresh in a run folder that already holds checkpoints, replacing
            them (without it, and without `resume`, such a folder is an error: nothing
            trained is thrown away by accident).
        max_steps_per_epoch: cap on optimizer steps per epoch (smoke runs, tests).
        init_from: a training checkpoint (`last.pt`/`best.pt`) whose model weights
            initialise a fresh run (fine-tuning, e.g. a gated ResNet from a plain one);
            ignored when the run resumes. Every checkpoint tensor must find a tensor of
            the same shape in the model; model tensors it lacks (gates) stay initialised.
        init_prefix: prefix put before every checkpoint key to find the model's key
            (`backbone.` maps `resnet32` weights into `skipnet_resnet`).
        temperature_schedule: anneal the `temperature` forward argument of the model
            during training (DY-Conv: about 30 -> 1 over the first epoch), a mapping
            `{kind: exponential|linear|cosine, start: float, end: float, epochs: float}`;
            the value at each optimizer step is passed as `model(x, temperature=...)`.
        train_execution: how dynamic models execute in training: `default` (the model's
            own choice, masked for most), `masked` or `compact` (passed as
            `model(x, execution=...)`; compact training runs only what the hard decisions
            keep -- BlockDrop, ConvNet-AIG, SkipNet with RL gates, MoE layers -- so the
            training FLOPs, logged as `train_mean_flops`, drop too). Compact is not masked
            with fewer FLOPs: a block's BatchNorm then normalises with the statistics of
            the samples that run it (what it sees at inference), masked with the batch's.
        progress: tqdm progress bars, drawn only when stderr is a terminal (the start
            banner, one summary line per epoch and the final summary are always printed).
        adversarial: adversarial training, a mapping `{kind: pgd|slowdown, eps, steps,
            fraction, step_size}` (`dynamicnets.training.adversarial`): `fraction` (default
            1) of every batch is replaced by PGD examples (Madry et al.) or DeepSloth
            slowdown examples, `eps` and `step_size` in pixel units (`8/255` accepted);
            None = off.
    """

    name: str = "run"
    model: str = "small_cnn"
    model_args: dict = field(default_factory=dict)
    data: str = "digits"
    val_size: int | float = 0.1
    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    optimizer_impl: Literal["default", "foreach", "fused"] = "default"
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: int = 0
    exit_weights: list[float] | None = None
    label_smoothing: float = 0.0
    distill_weight: float = 0.0
    distill_temperature: float = 3.0
    teacher_checkpoint: str | None = None
    teacher_weight: float = 0.0
    teacher_temperature: float = 1.0
    grad_clip: float | None = None
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = False
    channels_last: bool = False
    num_workers: int = 0
    augment: bool = True
    cutout: int = 0
    mixup: float = 0.0
    cutmix: float = 0.0
    threads: int | None = None
    out_dir: str = "runs"
    resume: bool = False
    overwrite: bool = False
    max_steps_per_epoch: int | None = None
    init_from: str | None = None
    init_prefix: str = ""
    temperature_schedule: dict | None = None
    train_execution: Literal["default", "masked", "compact"] = "default"
    progress: bool = True
    adversarial: dict | None = None

    def __post_init__(self) -> None:
        _check_literals(self)
        _require(bool(self.name) and "/" not in self.name and "\\" not in self.name
                 and self.name not in (".", ".."),
                 "name", "a non-empty run name without path separators", self.name)
        _require(bool(self.model), "model", "a registered model name", self.model)
        _require(isinstance(self.model_args, dict), "model_args", "a mapping", self.model_args)
        _require(not {"num_classes", "in_chans"} & set(self.model_args), "model_args",
                 "no num_classes or in_chans (the trainer takes both from the data)", self.model_args)
        _require(bool(self.data), "data", "a data spec such as 'digits'", self.data)
        if isinstance(self.val_size, bool) or not isinstance(self.val_size, (int, float)):
            _fail("val_size", "a fraction in (0, 1) or a count >= 1", self.val_size)
        if isinstance(self.val_size, int):
            _require(self.val_size >= 1, "val_size", "a count >= 1 (int) or a fraction in (0, 1)", self.val_size)
        else:
            _require(0.0 < self.val_size < 1.0, "val_size", "a fraction in (0, 1) or a count >= 1 (int)",
                     self.val_size)
        _require(self.epochs >= 1, "epochs", "an integer >= 1", self.epochs)
        _require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)
        _require(_finite(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        _require(_finite(self.momentum) and 0.0 <= self.momentum < 1.0, "momentum", "a number in [0, 1)",
                 self.momentum)
        _require(_finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0",
                 self.weight_decay)
        _require(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs",
                 f"an integer in [0, epochs={self.epochs}]", self.warmup_epochs)
        if self.exit_weights is not None:
            _require(len(self.exit_weights) >= 1 and all(_finite(w) and w >= 0 for w in self.exit_weights)
                     and sum(self.exit_weights) > 0,
                     "exit_weights", "a non-empty list of numbers >= 0 with a positive sum", self.exit_weights)
        _require(_finite(self.distill_weight) and self.distill_weight >= 0, "distill_weight",
                 "a number >= 0", self.distill_weight)
        _require(_finite(self.distill_temperature) and self.distill_temperature > 0, "distill_temperature",
                 "a number > 0", self.distill_temperature)
        _require(_finite(self.teacher_weight) and self.teacher_weight >= 0, "teacher_weight", "a number >= 0",
                 self.teacher_weight)
        _require(_finite(self.teacher_temperature) and self.teacher_temperature > 0, "teacher_temperature",
                 "a number > 0", self.teacher_temperature)
        if self.teacher_checkpoint is not None:
            _require(bool(self.teacher_checkpoint), "teacher_checkpoint", "a checkpoint path or null",
                     self.teacher_checkpoint)
        _require(self.teacher_weight == 0 or self.teacher_checkpoint is not None, "teacher_checkpoint",
                 f"a checkpoint path when teacher_weight > 0 (teacher_weight={self.teacher_weight})",
                 self.teacher_checkpoint)
        _require(_finite(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0, "label_smoothing",
                 "a number in [0, 1)", self.label_smoothing)
        if self.grad_clip is not None:
            _require(_finite(self.grad_clip) and self.grad_clip > 0, "grad_clip", "a number > 0 or null",
                     self.grad_clip)
        _require(isinstance(self.cutout, int) and not isinstance(self.cutout, bool) and self.cutout >= 0,
                 "cutout", "an integer >= 0 (pixels; 0 = off)", self.cutout)
        _require(self.cutout == 0 or self.augment, "cutout", "0 when augment is false", self.cutout)
        for key in ("mixup", "cutmix"):
            value = getattr(self, key)
            _require(_finite(value) and value >= 0, key, "a number >= 0 (the Beta alpha; 0 = off)", value)
        _require(self.num_workers >= 0, "num_workers", "an integer >= 0", self.num_workers)
        if self.threads is not None:
            _require(self.threads >= 1, "threads", "an integer >= 1 or null", self.threads)
        _require(bool(self.out_dir), "out_dir", "a folder path", self.out_dir)
        if self.max_steps_per_epoch is not None:
            _require(self.max_steps_per_epoch >= 1, "max_steps_per_epoch", "an integer >= 1 or null",
                     self.max_steps_per_epoch)
        if self.init_from is not None:
            _require(bool(self.init_from), "init_from", "a checkpoint path or null", self.init_from)
        if self.temperature_schedule is not None:
            _check_temperature_schedule(self.temperature_schedule)
        AdversarialTraining.from_config(self.adversarial)


TEMPERATURE_SCHEDULE_KEYS = {"kind", "start", "end", "epochs"}


def _check_temperature_schedule(spec) -> None:
    expected = ("a mapping {kind: exponential|linear|cosine, start: number > 0, end: number > 0, "
                "epochs: number > 0}")
    if not isinstance(spec, dict) or set(spec) != TEMPERATURE_SCHEDULE_KEYS:
        _fail("temperature_schedule", expected, spec)
    numbers_ok = all(_finite(spec[k]) and spec[k] > 0 for k in ("start", "end", "epochs"))
    _require(spec["kind"] in ("exponential", "linear", "cosine") and numbers_ok,
             "temperature_schedule", expected, spec)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _fail(key: str, expected: str, got) -> None:
    raise ConfigError(f"TrainConfig: key {key!r}: expected {expected}, got {got!r}")


def _require(ok: bool, key: str, expected: str, got) -> None:
    if not ok:
        _fail(key, expected, got)


def _check_literals(cfg: TrainConfig) -> None:
    """Literal-typed keys are checked here too, for configs built in Python directly."""
    for key, tp in get_type_hints(type(cfg)).items():
        choices = get_args(tp)
        if get_origin(tp) is Literal and getattr(cfg, key) not in choices:
            _fail(key, f"one of {list(choices)}", getattr(cfg, key))
