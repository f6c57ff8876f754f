"""Checks of the arguments every attack takes, with errors that name the argument."""
from __future__ import annotations

import math
import numbers

from ..errors import ConfigError

NORMS = ("linf",)
"""Threat models implemented: the L-infinity ball."""


def parse_fraction(value, what: str) -> float:
    """A number given as a number, `"0.03"` or a fraction `"8/255"`.

    Args:
        value: a real number or its text.
        what: the argument or key being read, named in the error (e.g. `"--eps"`).

    Raises:
        ConfigError: naming `what`, when `value` is not a finite number or fraction.
    """
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        top, slash, bottom = value.strip().partition("/")
        try:
            number = float(top) / float(bottom) if slash else float(top)
        except (ValueError, ZeroDivisionError):
            number = math.nan
    else:
        number = math.nan
    if not math.isfinite(number):
        raise ConfigError(f"{what}: expected a number or a fraction such as 8/255, got {value!r}")
    return number


def check_attack(eps, steps, step_size=None, norm: str = "linf", *, prefix: str = "") -> tuple[float, int, float]:
    """`(eps, steps, step_size)` checked, the step size resolved.

    Args:
        eps: L-infinity radius in pixel units (>= 0; a number or `"8/255"`).
        steps: gradient steps (an integer >= 1).
        step_size: pixel change per step (> 0); `None`: `2.5 * eps / steps` (Madry et al.
            2018), so the iterates can cross the ball and come back.
        norm: one of `NORMS`.
        prefix: put before each argument's name in errors (`"adversarial."`); `"--"` names
            command-line options, so the step size is then spelled `--step-size`.

    Raises:
        ConfigError: naming the argument at fault and what was expected.
    """
    if norm not in NORMS:
        raise ConfigError(f"{prefix}norm: expected one of {', '.join(NORMS)}, got {norm!r}")
    eps = parse_fraction(eps, f"{prefix}eps")
    if eps < 0:
        raise ConfigError(f"{prefix}eps: expected a radius >= 0 (in pixel units, e.g. 8/255), got {eps:g}")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ConfigError(f"{prefix}steps: expected an integer >= 1, got {steps!r}")
    if step_size is None:
        step = 2.5 * eps / int(steps)
    else:
        what = "--step-size" if prefix == "--" else f"{prefix}step_size"
        step = parse_fraction(step_size, what)
        if step <= 0:
            raise ConfigError(f"{what}: expected a number > 0, got {step:g}")
    return eps, int(steps), step
