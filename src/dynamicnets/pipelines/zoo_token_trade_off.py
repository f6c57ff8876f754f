"""The measured accuracy-FLOPs trade-off of shipped token-pruning transformers, for their card.

For a vision transformer whose forward takes a `TokenPolicy` (DynamicViT, EViT: any
`VisionTransformer` that is `TokenPruning`): the model's own default policy (the keep
ratio it was trained with) is the first point; then `TokenPolicy(keep_ratio=r)` for each
ratio `r` of `KEEP_RATIOS` (a ratio that gives the default policy again is left out).
Nothing is fitted: every point is scored on the evaluation half of the validation split
(`split_for_calibration`, the half the other zoo measurements score on) by compact
execution (only the kept tokens run the later blocks).

All points are timed in one run per batch size, at batch 1 (`BATCH1_SAMPLES` single
samples) and at batch 256, against a static network: the separately trained static ViT
when one is given, else the model itself keeping every token
(`TokenPolicy(keep_ratio=1.0)`, its scorers still run).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import nn
from torch.utils.data import Dataset

from ..inference.token_policy import TokenPolicy
from ..models.transformers.vit import VisionTransformer
from .early_exit import split_for_calibration
from .zoo_timing import Call, decreasing_fractions, score, scored_anchor, threads_text, timed_inputs, timed_speedups

KEEP_RATIOS = (0.9, 0.7, 0.5, 0.3)
"""The keep ratios on the curve, after the trained one."""


@runtime_checkable
class TokenPruning(Protocol):
    """A transformer that drops patch tokens at `num_stages` stages, as a `TokenPolicy` says:
    `default_policy()` is the policy of `policy=None` (a `TokenPolicy`), and its forward
    takes `policy=` and `execution=` and reports `decisions["kept.{s}"]` `(B, N)`, the patch
    tokens still present after stage `s`."""

    num_stages: int

    def default_policy(self) -> Any: ...


def check_keep_ratios(ratios: Sequence[float]) -> list[float]:
    """`ratios` checked: numbers in `(0, 1)`, strictly decreasing.

    Raises:
        ConfigError: naming `keep_ratios` and what was expected.
    """
    return decreasing_fractions(ratios, "keep_ratios", "keep ratios")


def token_points(model: nn.Module, ratios: Sequence[float]) -> list[tuple[float | None, TokenPolicy]] | None:
    """The curve's `(keep_ratio, policy)` points: `(None, model.default_policy())` first, then
    one per ratio of `ratios` whose policy differs from the default; `None` for a model
    that takes no `TokenPolicy`."""
    if not (isinstance(model, VisionTransformer) and isinstance(model, TokenPruning)):
        return None
    trained = model.default_policy()
    if not isinstance(trained, TokenPolicy):
        return None
    points: list[tuple[float | None, TokenPolicy]] = [(None, trained)]
    for ratio in check_keep_ratios(ratios):
        policy = TokenPolicy(keep_ratio=ratio)
        if policy != trained:
            points.append((ratio, policy))
    return points


def measure_token_trade_off(model: nn.Module, validation: Dataset, input_shape: tuple[int, ...], *, seed: int = 0,
                            threads: int | None = 1, min_run_time: float = 0.3, anchor: nn.Module | None = None,
                            anchor_name: str | None = None,
                            keep_ratios: Sequence[float] = KEEP_RATIOS) -> dict[str, Any] | None:
    """Accuracy, FLOPs, tokens kept and measured speedups of a token-pruning transformer's
    trained keep ratio and of other keep ratios.

    Args:
        model: a trained token-pruning `VisionTransformer` (`TokenPruning`).
        validation: the validation split, prepared as the model was trained.
        input_shape: one input's shape `(C, H, W)`, e.g. `(3, 32, 32)`.
        seed: seeds the two halves of `validation` (the second is scored and timed).
        threads: CPU threads for timing.
        min_run_time: seconds of timed calls per callable and round.
        anchor: the static ViT of the same size, trained with the same schedule, to time
            against and score on the evaluation half; `None`: the model keeping every
            token.
        anchor_name: how the card names the anchor (e.g. its run folder).
        keep_ratios: keep ratios after the trained one, strictly decreasing, in `(0, 1)`.

    Returns:
        `None` for a model that takes no `TokenPolicy`; else a dict with `kind`
        ("tokens"), `protocol` (in words), `evaluation_samples`, `stages` (pruning
        stages), `trained_policy` (the default policy's `keep_ratio`, one number or one
        per stage), `static_flops` (per-sample FLOPs of the same ViT without pruning),
        `static` (the model keeping every token: `accuracy`, `flops` as it reports
        them, scorers included), `anchor` (`name`, `accuracy`, `flops`, or `None`),
        `reference` (what the timings are against, in words) and `curve`: one row per
        point with `keep_ratio` (`None`: the trained policy), `accuracy`, `mean_flops`
        (mean `out.flops`), `tokens_kept` (the mean fraction of the patch tokens still
        run after the last stage), `speedup_flops` (`static_flops / mean_flops`) and,
        for each batch size `b` of `TIMED_BATCH_SIZES`, `speedup_measured_b{b}` (the
        reference's time over the point's) and `speedup_flops_b{b}` (the reference's
        FLOPs over the point's, on exactly the timed samples).

    Raises:
        ConfigError: bad `keep_ratios`.
    """
    points = token_points(model, keep_ratios)
    if points is None:
        return None
    model.eval()
    anchor = None if anchor is None else anchor.eval()
    static_flops = float(VisionTransformer.flops(model, tuple(input_shape)))
    _, evaluation = split_for_calibration(validation, seed)
    timed = timed_inputs(evaluation)
    last = f"kept.{model.num_stages - 1}"

    def run(policy: TokenPolicy) -> Call:
        return lambda x: model(x, policy=policy, execution="compact")

    runs = [run(policy) for _, policy in points]
    curve = []
    for (ratio, _), call in zip(points, runs):
        scored = score(call, evaluation, last)
        curve.append({"keep_ratio": ratio, "accuracy": scored["accuracy"], "mean_flops": scored["mean_flops"],
                      "tokens_kept": float(scored["decisions"].double().mean()),
                      "speedup_flops": static_flops / scored["mean_flops"]})
    every_token = run(TokenPolicy(keep_ratio=1.0))
    reference = anchor if anchor is not None else every_token
    for row, timing in zip(curve, timed_speedups(reference, runs, timed, threads=threads,
                                                 min_run_time=min_run_time)):
        row.update(timing)
    static = score(every_token, evaluation)
    against = (f"the static anchor `{anchor_name or 'given'}`" if anchor is not None
               else "the model keeping every token")
    trained = points[0][1].keep_ratio
    return {
        "kind": "tokens",
        "protocol": _protocol([r for r, _ in points[1:]], against, threads, len(timed[1]),
                              timed[256][0].shape[0]),
        "evaluation_samples": len(evaluation),
        "stages": int(model.num_stages),
        "trained_policy": {"keep_ratio": list(trained) if isinstance(trained, Sequence) else trained},
        "static_flops": static_flops,
        "static": {"accuracy": static["accuracy"], "flops": static["mean_flops"]},
        "anchor": scored_anchor(anchor, anchor_name, evaluation),
        "reference": against,
        "curve": curve,
    }


def _protocol(ratios: list[float], against: str, threads: int | None, singles: int, batch: int) -> str:
    shown = ", ".join(f"{r:g}" for r in ratios) or "none"
    return ("The model's trained keep ratio (its default `TokenPolicy`; first row), then `TokenPolicy(keep_ratio=r)` "
            f"for r = {shown} (every sample keeps the best-scored `ceil(r * n)` of the `n` tokens entering each "
            "pruning stage, class token aside), scored on one seeded half of the validation split (the half the exit "
            "and gate measurements score on; nothing is fitted) by compact execution (only the kept tokens run the "
            f"later blocks); speedups are the time of {against} over the point's, timed in the same run with "
            f"{threads_text(threads)}, on {singles} samples one at a time (batch 1) and on one batch of {batch}")
