"""Distillation from a frozen teacher: a trained static model whose predictions the student
(a dynamic model fine-tuned from it, as DynamicViT trains) learns to match.

The loss on the final logits is `weight * T^2 * KL(softmax(t / T) || softmax(s / T))`
(Hinton et al. 2015), with `t` the teacher's logits (no gradient) and `s` the student's;
the KL is summed over classes and averaged over the batch.

The teacher comes from a training checkpoint (`best.pt` / `last.pt`), rebuilt from the
model name and arguments it records, or from the weights shipped with the package
(`pretrained:MODEL:TAG`, sha256 checked); loaded with `weights_only=True`, frozen and kept
in eval mode on the student's device.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.preprocessing import Preprocessing, trained_preprocessing
from ..errors import CheckpointError, ConfigError, DataError
from ..execution import supported_executions
from ..models import create_model
from .checkpoint import MODEL_FIELDS, check_compatible, check_fields, check_finite, load_checkpoint
from .initialise import PRETRAINED_PREFIX, parse_pretrained_spec

_KEY = "key 'teacher_checkpoint'"


def teacher_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
                    weight: float = 1.0) -> Tensor:
    """`weight * T^2 * KL(p_teacher^T || p_student^T)`, averaged over the batch.

    Args:
        student_logits: `(B, C)`.
        teacher_logits: `(B, C)` (detached here).
        temperature: `T > 0`.
        weight: factor `>= 0`.

    Returns:
        `()` float32 scalar; zero when the two agree.

    Raises:
        ConfigError: logits of different shapes, `T <= 0` or `weight < 0`.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"{_KEY}: teacher logits {tuple(teacher_logits.shape)} do not match the student's "
                          f"{tuple(student_logits.shape)}")
    if not temperature > 0:
        raise ConfigError(f"key 'teacher_temperature': expected a number > 0, got {temperature}")
    if not weight >= 0:
        raise ConfigError(f"key 'teacher_weight': expected a number >= 0, got {weight}")
    teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return weight * temperature ** 2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")


def load_teacher(path: str | Path, device: str | torch.device = "cpu", *, num_classes: int | None = None,
                 input_shape: Sequence[int] | None = None,
                 preprocessing: Preprocessing | None = None) -> nn.Module:
    """The static model saved in the training checkpoint `path`, frozen, in eval mode.

    Args:
        path: a checkpoint written by the Trainer, or `pretrained:MODEL:TAG` for shipped
            weights (`create_model(MODEL, pretrained=TAG)`).
        device: where the teacher runs (the student's device).
        num_classes: the student's classes; the teacher must have as many.
        input_shape: the student's per-sample input shape; the teacher must take it.
        preprocessing: how the student's inputs are prepared; a teacher trained on the
            same kind of stored samples must have been trained on inputs prepared the
            same way (its logits on the student's inputs mean nothing otherwise). Not
            checked when either side's is unknown (a checkpoint that neither records it
            nor names a data set `load_data` reads) or the storages differ.

    Returns:
        the teacher; every parameter has `requires_grad=False`.

    Raises:
        ConfigError: naming `teacher_checkpoint`, when the file is missing or unreadable,
            holds no model (or NaN weights), holds a dynamic model (one with execution
            modes), or has other classes, another input shape or another preprocessing
            than the student.
    """
    try:
        if str(path).startswith(PRETRAINED_PREFIX):
            model, name, classes, shape, prep = _shipped_teacher(str(path))
        else:
            ckpt = load_checkpoint(path)
            check_fields(ckpt, MODEL_FIELDS, source=str(path))
            model = create_model(ckpt["model_name"], num_classes=ckpt["num_classes"],
                                 in_chans=ckpt["input_shape"][0], **ckpt["model_args"])
            check_compatible(ckpt, ckpt["model_name"], model, source=str(path))
            check_finite(ckpt["model"], source=str(path))
            model.load_state_dict(ckpt["model"])
            name, classes, shape = ckpt["model_name"], ckpt["num_classes"], ckpt["input_shape"]
            prep = _trained_preprocessing(ckpt, str(path))
    except (CheckpointError, ConfigError, TypeError, ValueError) as err:
        raise ConfigError(f"{_KEY}: {path}: cannot load the teacher: {err}") from err
    if supported_executions(model):
        raise ConfigError(f"{_KEY}: {path} holds {name!r}, a dynamic model (it executes per-input decisions); "
                          f"the teacher must be a static model such as vit_cifar")
    if num_classes is not None and classes != num_classes:
        raise ConfigError(f"{_KEY}: {path} holds a {classes}-class {name!r}, but the student "
                          f"classifies {num_classes} classes")
    if input_shape is not None and list(shape) != [int(s) for s in input_shape]:
        raise ConfigError(f"{_KEY}: {path} was trained on inputs {tuple(shape)}, but the student's "
                          f"are {tuple(int(s) for s in input_shape)}")
    if (preprocessing is not None and prep is not None and prep.storage == preprocessing.storage
            and not prep.same_transform(preprocessing)):
        raise ConfigError(f"{_KEY}: {path} was trained on inputs prepared as {prep.describe()}, but the "
                          f"student's are prepared as {preprocessing.describe()}; train both on the same "
                          f"data preprocessing")
    model.requires_grad_(False)
    return model.to(device).eval()


def _trained_preprocessing(ckpt: dict, source: str) -> Preprocessing | None:
    """The checkpoint's recorded preprocessing (an older one's derived from its data spec);
    `None` when neither tells (a data set `load_data` does not read)."""
    try:
        return trained_preprocessing(ckpt, source)[0]
    except DataError:
        return None


def _shipped_teacher(spec: str) -> tuple[nn.Module, str, int, tuple[int, ...], Preprocessing]:
    """The shipped model of `pretrained:MODEL:TAG`, its name, classes, input shape and
    preprocessing."""
    from ..models.pretrained import pretrained_weights

    name, tag = parse_pretrained_spec(spec, "teacher_checkpoint")
    row = pretrained_weights(name, tag)
    return create_model(name, pretrained=tag), name, row.num_classes, tuple(row.input_shape), row.preprocessing


class TeacherDistillation:
    """A frozen teacher and the weight and temperature of its loss (what the Trainer holds).

    Args:
        teacher: a static model in eval mode, returning `DynamicOutput`.
        weight: loss weight `>= 0`.
        temperature: `T > 0`.

    Shapes:
        `loss(x (B, *input_shape), student_logits (B, C)) -> ()`.
    """

    def __init__(self, teacher: nn.Module, weight: float, temperature: float) -> None:
        self.teacher = teacher
        self.weight = float(weight)
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, config, device: torch.device, num_classes: int, input_shape: Sequence[int],
                    preprocessing: Preprocessing | None = None) -> "TeacherDistillation | None":
        """The teacher of a `TrainConfig` (`teacher_checkpoint`, `teacher_weight`,
        `teacher_temperature`), checked against the student's classes, input shape and
        preprocessing; None when `teacher_weight` is 0 (nothing is loaded)."""
        if config.teacher_weight == 0 or config.teacher_checkpoint is None:
            return None
        teacher = load_teacher(config.teacher_checkpoint, device, num_classes=num_classes, input_shape=input_shape,
                               preprocessing=preprocessing)
        return cls(teacher, config.teacher_weight, config.teacher_temperature)

    def loss(self, x: Tensor, student_logits: Tensor) -> Tensor:
        """The distillation term for one batch (the teacher runs without gradients)."""
        self.teacher.eval()
        with torch.no_grad():
            teacher_logits = self.teacher(x).logits
        return teacher_kl_loss(student_logits, teacher_logits, self.temperature, self.weight)
