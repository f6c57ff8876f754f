"""How far the mean cost of a calibrated policy can stray on data it was not fitted on.

A calibration fits thresholds so that the mean per-sample cost on `n` calibration samples
meets a budget. On a fresh batch of `m` samples from the same distribution the realised
mean differs for two reasons:

- the batch is a sample: for fixed thresholds its mean has standard deviation `s / sqrt(m)`,
  where `s` is the standard deviation of one sample's cost;
- the thresholds are estimated: they are quantiles of the calibration scores, so the
  expected cost they really give differs from the one measured on the calibration set by
  about `s / sqrt(n)` (the sampling error of an empirical quantile's coverage; the
  exit fractions at fitted thresholds vary like those of a multinomial sample of size `n`).

The two are independent, so the realised mean is approximately normal around the
calibration mean with standard deviation `s * sqrt(1/n + 1/m)`. With `z` the standard
normal quantile of `confidence`, `upper = mean + z * s * sqrt(1/n + 1/m)` is an upper
confidence bound: calibrating so that `upper <= budget` makes the fresh batch's mean cost
`<= budget` with probability about `confidence`, over the draw of both the calibration set
and the batch. Assumptions: calibration and deployment samples are i.i.d. from one
distribution; `n` and `m` large enough for the normal approximation (tens of samples per
distinct cost level, as a rule of thumb). `m = None` bounds the expected cost per sample
(an unlimited number of fresh samples): only the threshold-estimation term remains.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

from torch import Tensor

from ..errors import ConfigError


@dataclass(frozen=True)
class CostSpread:
    """The mean per-sample cost a calibrated policy is expected to spend on fresh data.

    Attributes:
        expected_mean: mean cost per sample on the calibration set (the estimate of the
            expected cost per sample).
        mean_std: standard deviation of the realised mean cost over `eval_size` fresh
            samples, threshold-estimation error included: `per_sample_std * sqrt(1/n + 1/m)`.
        per_sample_std: standard deviation of one sample's cost on the calibration set.
        calibration_size: `n`, calibration samples.
        eval_size: `m`, the size of the fresh batch the figures are for; `None`: the
            expected cost (an unlimited batch).
        confidence: level of `upper`; `None` when no confidence was asked for.
        upper: `expected_mean + z(confidence) * mean_std`; `None` without a confidence.
    """

    expected_mean: float
    mean_std: float
    per_sample_std: float
    calibration_size: int
    eval_size: int | None = None
    confidence: float | None = None
    upper: float | None = None

    def probability_within(self, budget: float) -> float:
        """Approximate probability that the fresh batch's mean cost is `<= budget`."""
        if self.mean_std == 0:
            return 1.0 if self.expected_mean <= budget else 0.0
        return NormalDist().cdf((budget - self.expected_mean) / self.mean_std)

    def describe(self, unit: str = "FLOPs") -> str:
        """One line, e.g. `1.2M ± 0.0712M FLOPs over 180 fresh samples (95% upper bound 1.32M)`."""
        from ..profiling.report import format_flops

        def fmt(value: float) -> str:
            return format_flops(value) if unit == "FLOPs" else f"{value:.4g}"

        batch = "per sample, expected" if self.eval_size is None else f"over {self.eval_size} fresh samples"
        text = f"{fmt(self.expected_mean)} ± {fmt(self.mean_std)} {unit} {batch}"
        if self.upper is not None:
            text += f" ({100 * self.confidence:.4g}% upper bound {fmt(self.upper)})"
        return text

    def to_dict(self) -> dict:
        """Plain data for JSON or a checkpoint."""
        return asdict(self)


def check_confidence(confidence: float | None, owner: str) -> float | None:
    """`confidence` as a float in `(0, 1)` (or `None`).

    Raises:
        ConfigError: naming `confidence` and `owner`, for anything else.
    """
    if confidence is None:
        return None
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.0 < confidence < 1.0:
        raise ConfigError(f"{owner}: confidence must be a probability strictly between 0 and 1 "
                          f"(e.g. 0.95), got {confidence!r}")
    return float(confidence)


def check_eval_size(eval_size: int | None, owner: str) -> int | None:
    """`eval_size` as a positive int (or `None`).

    Raises:
        ConfigError: naming `eval_size` and `owner`, for anything else.
    """
    if eval_size is None:
        return None
    if isinstance(eval_size, bool) or not isinstance(eval_size, int) or eval_size < 1:
        raise ConfigError(f"{owner}: eval_size must be a positive number of samples (or None for the expected "
                          f"cost), got {eval_size!r}")
    return eval_size


def cost_spread(per_sample: Tensor, *, eval_size: int | None = None, confidence: float | None = None) -> CostSpread:
    """The spread of the mean cost over `eval_size` fresh samples (module docstring).

    Args:
        per_sample: `(N,)` cost of every calibration sample under the fitted policy.
        eval_size: size of the fresh batch; `None`: the expected cost per sample.
        confidence: level of the upper bound in `(0, 1)`, or `None` for none.

    Returns:
        `CostSpread`.
    """
    costs = per_sample.detach().double().flatten()
    num = costs.shape[0]
    if num == 0:
        raise ConfigError("cost_spread: no calibration samples")
    mean = float(costs.mean())
    sd = float(costs.std()) if num > 1 else 0.0
    inverse = 1.0 / num + (0.0 if eval_size is None else 1.0 / eval_size)
    std = sd * math.sqrt(inverse)
    upper = None if confidence is None else mean + NormalDist().inv_cdf(confidence) * std
    return CostSpread(expected_mean=mean, mean_std=std, per_sample_std=sd, calibration_size=num,
                      eval_size=eval_size, confidence=confidence, upper=upper)


def within_budget(per_sample: Tensor, budget: float, *, eval_size: int | None, confidence: float | None) -> bool:
    """Whether a policy with these calibration costs meets `budget`: its mean when
    `confidence` is `None`, else its upper confidence bound."""
    if confidence is None:
        return float(per_sample.double().mean()) <= budget
    return cost_spread(per_sample, eval_size=eval_size, confidence=confidence).upper <= budget

