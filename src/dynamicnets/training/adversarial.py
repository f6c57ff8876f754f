"""Adversarial training: part of every batch replaced by attacked inputs before the step.

Two defences, chosen by the `adversarial` key of `TrainConfig`:

- `kind: pgd`: PGD adversarial training (Madry et al., ICLR 2018): the inputs are
  replaced by untargeted L-infinity PGD examples on the final logits' cross-entropy.
- `kind: slowdown`: training on slowdown examples, DeepSloth's defence (Hong et al., ICLR
  2021): the inputs are replaced by DeepSloth examples (every internal exit pushed toward
  the uniform distribution) with their true labels, so the exits learn to be confident
  on them again.

The training loss is unchanged (every exit's cross-entropy on the batch, now part
adversarial). `fraction` of each batch (its first rows; the loader shuffles) is
attacked, the rest stays clean: 1.0 is Madry's pure adversarial training, 0.5 an even
clean/adversarial mix. Examples are crafted with the model in eval mode (batch-norm
running statistics, not updated by the attack) and masked execution; budgets are in
pixel units of the data's [0, 1] range (`dynamicnets.attacks.InputSpace`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..attacks import KINDS, InputSpace, check_attack, check_kind, craft, parse_fraction
from ..errors import ConfigError
from ..protocols import CalibratableGates, MultiExit

KEYS = ("kind", "eps", "steps", "fraction", "step_size")
"""Keys of the `adversarial` mapping; `kind`, `eps` and `steps` are required."""


@dataclass(frozen=True)
class AdversarialTraining:
    """Which attack replaces which part of each training batch.

    Attributes:
        kind: `pgd` or `slowdown`.
        eps: L-infinity radius in pixel units (e.g. 8/255).
        steps: attack steps per batch.
        fraction: share of each batch replaced, in (0, 1].
        step_size: pixel change per attack step; `None`: `2.5 * eps / steps`.
    """

    kind: str
    eps: float
    steps: int
    fraction: float = 1.0
    step_size: float | None = None

    @classmethod
    def from_config(cls, spec: Mapping | None) -> AdversarialTraining | None:
        """The `adversarial` key of a training config, checked; `None` stays `None`.

        Raises:
            ConfigError: naming `adversarial` or `adversarial.<key>` and what was expected.
        """
        if spec is None:
            return None
        expected = ("a mapping {kind: pgd|slowdown, eps: radius (e.g. 8/255), steps: int >= 1, "
                    "fraction: (0, 1] (default 1), step_size: number > 0 (default 2.5 eps / steps)}")
        if not isinstance(spec, Mapping) or not {"kind", "eps", "steps"} <= set(spec) or set(spec) - set(KEYS):
            raise ConfigError(f"TrainConfig: key 'adversarial': expected {expected}, got {spec!r}")
        try:
            kind = check_kind(spec["kind"], "adversarial.kind")
            step_size = spec.get("step_size")
            eps, steps, step = check_attack(spec["eps"], spec["steps"], step_size, prefix="adversarial.")
            fraction = parse_fraction(spec.get("fraction", 1.0), "adversarial.fraction")
            if not 0.0 < fraction <= 1.0:
                raise ConfigError(f"adversarial.fraction: expected a share in (0, 1], got {fraction:g}")
        except ConfigError as err:
            raise ConfigError(f"TrainConfig: key {err}") from None
        return cls(kind, eps, steps, fraction, None if step_size is None else step)

    def check_model(self, model: nn.Module) -> None:
        """Raise `ConfigError` (naming `adversarial.kind`) when a slowdown defence is asked
        for a model without early exits or skipping gates."""
        if self.kind == "slowdown" and not isinstance(model, (MultiExit, CalibratableGates)):
            raise ConfigError(
                f"TrainConfig: key 'adversarial.kind': 'slowdown' needs a model with early exits or skipping "
                f"gates, {type(model).__name__} has neither; use one of {', '.join(KINDS)} that fits"
            )

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor, space: InputSpace,
                generator: torch.Generator | None = None) -> Tensor:
        """`x` with its first `round(fraction * B)` rows (at least one) attacked.

        Args:
            model: the model being trained (not a DDP wrapper); its modes are restored.
            x: `(B, *input_shape)` model inputs; y: `(B,)` labels.
            space: the pixel space of `x`.

        Returns:
            `(B, *input_shape)`, the same memory format as `x`.
        """
        n = max(1, round(self.fraction * x.shape[0]))
        attacked = craft(self.kind, model, x[:n], y[:n], eps=self.eps, steps=self.steps,
                         step_size=self.step_size, space=space, generator=generator)
        if n == x.shape[0]:
            return attacked.contiguous(memory_format=_format_of(x))
        return torch.cat([attacked, x[n:]]).contiguous(memory_format=_format_of(x))


def _format_of(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
