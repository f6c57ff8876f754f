"""Latency: wall-clock timing on `torch.utils.benchmark`, with the protocol fixed.

Every timing here runs with a fixed thread count (`torch.set_num_threads`, restored
afterwards), under `torch.inference_mode()`, after warm-up calls, and is measured with
`Timer(...).blocked_autorange`. The timer synchronizes the accelerator around each
block, so callables working on CUDA tensors are timed correctly; nothing here moves
tensors to a device.

Timing first calls `allocator.keep_freed_memory()` (once per process): with glibc's
defaults a batch's buffers page-fault back in or not depending on the sizes freed before
it, a noise of up to 2x per call at batch 256.

Absolute milliseconds drift on shared machines (other jobs, frequency scaling, thermal
state). The figure to quote is a **ratio measured in the same run** (`compare` +
`ratio`): e.g. sliced width ÷ static network of the same size, or realized speedup ÷
the speedup FLOPs promise.
"""
from __future__ import annotations

import contextlib
import statistics
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import numpy as np
import torch

from ..errors import ConfigError
from .allocator import keep_freed_memory

if TYPE_CHECKING:
    from torch.utils.benchmark import Measurement as _TorchMeasurement


@dataclass(frozen=True)
class Measurement:
    """Timing summary of one callable (all times per call, in milliseconds).

    Attributes:
        median_ms: median time per call (over timed blocks; for `compare`, the median
            of the per-round medians).
        iqr_ms: interquartile range of the per-block times per call.
        mean_ms: total timed time divided by `runs`.
        runs: number of timed calls (warm-up and calibration calls not included).
        threads: `torch.get_num_threads()` in force while timing.
        label: free-form name of what was timed.
        times_ms: per-call time of each timed block, in the order they ran.
        round_ms: for `compare`, the median per-call time of each round, in order (per-round
            ratios between callables show the noise); for `measure`, one value.
    """

    median_ms: float
    iqr_ms: float
    mean_ms: float
    runs: int
    threads: int
    label: str = ""
    times_ms: tuple[float, ...] = ()
    round_ms: tuple[float, ...] = ()

    def as_dict(self, include_times: bool = False) -> dict[str, Any]:
        """A JSON-ready record; `times_ms` and `round_ms` are left out unless `include_times`."""
        record = asdict(self)
        for key in ("times_ms", "round_ms"):
            if include_times:
                record[key] = list(record[key])
            else:
                del record[key]
        return record


def measure(
    fn: Callable[..., Any],
    *args: Any,
    threads: int | None = None,
    min_run_time: float = 0.5,
    warmup: int = 3,
    label: str = "",
) -> Measurement:
    """Time `fn(*args)` under the fixed protocol of this module.

    Args:
        fn: the callable to time; its return value is discarded.
        *args: positional arguments passed to every call (e.g. a `(B, C, H, W)` batch).
        threads: torch intra-op threads while warming up and timing; `None` keeps the
            current `torch.get_num_threads()`. The previous value is restored afterwards.
        min_run_time: seconds of timed calls to collect, at least.
        warmup: untimed calls made first (caches, allocator, lazy init).
        label: stored in the result.

    Returns:
        A `Measurement` with per-call statistics in milliseconds.
    """
    _check_protocol(fn=fn, min_run_time=min_run_time, warmup=warmup)
    num_threads = _resolve_threads(threads)
    keep_freed_memory()
    with _fixed_threads(num_threads), torch.inference_mode():
        _warm_up(fn, args, warmup)
        raw = _time_once(fn, args, num_threads, min_run_time, label)
    return _summarize([raw], num_threads, label)


def compare(
    named_fns: Mapping[str, Callable[[], Any]],
    *,
    threads: int | None = None,
    min_run_time: float = 0.5,
    warmup: int = 3,
    rounds: int = 3,
) -> dict[str, Measurement]:
    """Time several zero-argument callables in the same run, interleaved in rounds.

    All callables are warmed up first; then each round times every callable once, in
    the order given (A, B, C, A, B, C, ...), so slow drift of the machine affects them
    alike. Each result's `median_ms` is the median over rounds of the per-round medians.
    Quote `ratio(result, a, b)` between entries of one result, not absolute ms.

    Args:
        named_fns: name -> callable taking no arguments (bind inputs with a lambda or
            `functools.partial`).
        threads: torch intra-op threads for the whole comparison; `None` keeps the
            current value. Restored afterwards.
        min_run_time: seconds of timed calls per callable *per round*, at least.
        warmup: untimed calls of each callable before the first round.
        rounds: number of interleaved rounds.

    Returns:
        name -> `Measurement` (label = name), in the order of `named_fns`.
    """
    if not named_fns:
        raise ConfigError("compare needs at least one callable in named_fns, got none")
    for name, fn in named_fns.items():
        _check_protocol(fn=fn, min_run_time=min_run_time, warmup=warmup, name=name)
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"compare: rounds must be an integer >= 1, got {rounds!r}")
    num_threads = _resolve_threads(threads)
    keep_freed_memory()
    per_round: dict[str, list["_TorchMeasurement"]] = {name: [] for name in named_fns}
    with _fixed_threads(num_threads), torch.inference_mode():
        for fn in named_fns.values():
            _warm_up(fn, (), warmup)
        for _ in range(rounds):
            for name, fn in named_fns.items():
                per_round[name].append(_time_once(fn, (), num_threads, min_run_time, name))
    return {name: _summarize(raws, num_threads, name) for name, raws in per_round.items()}


def ratio(measurements: Mapping[str, Measurement], num: str, den: str) -> float:
    """`median_ms` of `measurements[num]` divided by that of `measurements[den]`.

    With `compare` results, `ratio(r, "dynamic", "static")` > 1 means "dynamic" is
    slower. Only ratios between entries timed in the same run are meaningful.
    """
    for key in (num, den):
        if key not in measurements:
            raise ConfigError(
                f"ratio: no measurement named {key!r}; available: {sorted(measurements)}"
            )
    return measurements[num].median_ms / measurements[den].median_ms


def per_sample_ms(measurement: Measurement, batch_size: int) -> float:
    """Median milliseconds per sample of a measurement taken on batches of `batch_size`."""
    _check_batch_size(batch_size)
    return measurement.median_ms / batch_size


def samples_per_second(measurement: Measurement, batch_size: int) -> float:
    """Throughput (samples/s) from the median time of batches of `batch_size`."""
    _check_batch_size(batch_size)
    return batch_size * 1e3 / measurement.median_ms


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def _check_protocol(*, fn: Any, min_run_time: float, warmup: int, name: str = "fn") -> None:
    if not callable(fn):
        raise ConfigError(f"{name} must be callable, got {type(fn).__name__}")
    if not isinstance(min_run_time, (int, float)) or not min_run_time > 0:
        raise ConfigError(f"min_run_time must be a positive number of seconds, got {min_run_time!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")


def _resolve_threads(threads: int | None) -> int:
    if threads is None:
        return torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
    return threads


@contextlib.contextmanager
def _fixed_threads(num_threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _warm_up(fn: Callable[..., Any], args: tuple, calls: int) -> None:
    for _ in range(calls):
        fn(*args)


def _time_once(
    fn: Callable[..., Any], args: tuple, num_threads: int, min_run_time: float, label: str
) -> "_TorchMeasurement":
    # Imported here: `dynamicnets.models` imports this package, and the benchmark
    # module costs ~0.15 s of import time that only timing needs.
    from torch.utils.benchmark import Timer

    # Timer's default num_threads is 1, so the thread count must be passed explicitly.
    timer = Timer(
        stmt="fn(*args)",
        globals={"fn": fn, "args": args},
        num_threads=num_threads,
        label=label or None,
    )
    return timer.blocked_autorange(min_run_time=min_run_time)


def _summarize(raws: "list[_TorchMeasurement]", num_threads: int, label: str) -> Measurement:
    times_ms = tuple(
        t / raw.number_per_run * 1e3 for raw in raws for t in raw.raw_times
    )
    runs = sum(raw.number_per_run * len(raw.raw_times) for raw in raws)
    total_ms = sum(t for raw in raws for t in raw.raw_times) * 1e3
    q25, q75 = np.percentile(np.asarray(times_ms), [25.0, 75.0])
    return Measurement(
        median_ms=statistics.median(raw.median * 1e3 for raw in raws),
        iqr_ms=float(q75 - q25),
        mean_ms=total_ms / runs,
        runs=runs,
        threads=num_threads,
        label=label,
        times_ms=times_ms,
        round_ms=tuple(raw.median * 1e3 for raw in raws),
    )
