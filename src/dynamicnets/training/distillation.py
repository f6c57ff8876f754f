"""Self-distillation of a multi-exit network: every exit learns from the final one.

Each intermediate exit is pulled towards the softened prediction of the last exit
(the teacher, detached so the distillation term never changes the teacher), as in the
multi-exit training techniques the survey lists (Phuong & Lampert 2019; Li et al. 2019).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..outputs import DynamicOutput


def exit_distillation_loss(out: DynamicOutput, temperature: float = 3.0, weight: float = 1.0) -> Tensor:
    """Mean over the intermediate exits of `T**2 * KL(p_teacher^T || p_exit^T)`, times `weight`.

    `p^T = softmax(logits / T)`; the teacher is the last exit, detached. The `T**2`
    factor keeps the gradient scale independent of `T` (Hinton et al. 2015). The KL is
    summed over classes and averaged over the batch.

    Args:
        out: model output; `out.exit_logits` is `K` tensors `(B, C)`, last = teacher.
        temperature: `T > 0`.
        weight: factor on the whole term (`>= 0`).

    Returns:
        `()` float32 scalar; zero for a single-exit model or when every exit equals the last.
    """
    if not temperature > 0:
        raise ConfigError(f"key 'distill_temperature': expected a number > 0, got {temperature}")
    if not weight >= 0:
        raise ConfigError(f"key 'distill_weight': expected a number >= 0, got {weight}")
    students = out.exit_logits[:-1]
    teacher_logits = out.exit_logits[-1].detach().float()
    if not students:
        return teacher_logits.new_zeros(())
    teacher_log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    total = teacher_logits.new_zeros(())
    for logits in students:
        student_log_p = F.log_softmax(logits.float() / temperature, dim=-1)
        total = total + F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean")
    return weight * temperature**2 * total / len(students)
