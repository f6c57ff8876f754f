import itertools
import statistics

import pytest
import torch

from dynamicnets.errors import ConfigError
from dynamicnets.profiling import (
    Measurement,
    compare,
    measure,
    per_sample_ms,
    ratio,
    samples_per_second,
)

FAST = dict(min_run_time=0.05, warmup=1)


def test_measure_returns_positive_statistics():
    a = torch.randn(64, 64)
    m = measure(torch.mm, a, a, label="mm64", **FAST)
    assert m.median_ms > 0 and m.mean_ms > 0 and m.iqr_ms >= 0
    assert m.runs >= len(m.times_ms) >= 1
    assert min(m.times_ms) <= m.median_ms <= max(m.times_ms)
    assert m.label == "mm64"
    assert m.threads == torch.get_num_threads()


def test_measure_fixes_threads_warms_up_and_uses_inference_mode():
    seen = []

    def probe():
        seen.append((torch.is_inference_mode_enabled(), torch.get_num_threads()))

    m = measure(probe, threads=1, min_run_time=0.02, warmup=5)
    assert m.threads == 1
    assert set(seen) == {(True, 1)}
    assert len(seen) >= 5 + m.runs  # warm-up calls come on top of the timed ones


def test_threads_are_restored_even_when_fn_raises():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    measure(lambda: None, threads=other, **FAST)
    assert torch.get_num_threads() == before

    def boom():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        measure(boom, threads=other, **FAST)
    assert torch.get_num_threads() == before
    assert not torch.is_inference_mode_enabled()


def test_compare_finds_heavier_matmul_slower():
    # 256^3 vs 32^3 multiply-adds: 512x the work, so a 1.5x ratio survives any noise.
    heavy, light = torch.randn(256, 256), torch.randn(32, 32)
    before = torch.get_num_threads()
    result = compare(
        {"heavy": lambda: heavy @ heavy, "light": lambda: light @ light},
        threads=1, rounds=3, **FAST,
    )
    assert list(result) == ["heavy", "light"]
    assert all(m.threads == 1 and m.label == name for name, m in result.items())
    assert ratio(result, "heavy", "light") > 1.5
    assert torch.get_num_threads() == before


def test_compare_interleaves_rounds_after_warm_up():
    log = []
    x = torch.ones(4)
    fns = {name: (lambda name=name: (log.append(name), x.sum())) for name in ("a", "b", "c")}
    compare(fns, rounds=3, min_run_time=0.01, warmup=2)
    blocks = [name for name, _ in itertools.groupby(log)]
    assert blocks == ["a", "b", "c"] * 4  # one warm-up pass, then three rounds


def test_compare_median_is_median_of_rounds():
    result = compare({"f": lambda: torch.ones(8).sum()}, rounds=3, **FAST)
    m = result["f"]
    assert m.runs > 0 and len(m.times_ms) >= 3
    assert min(m.times_ms) <= m.median_ms <= max(m.times_ms)


def test_ratio_per_sample_and_throughput():
    slow = Measurement(median_ms=8.0, iqr_ms=0.1, mean_ms=8.1, runs=10, threads=2, label="slow")
    fast = Measurement(median_ms=2.0, iqr_ms=0.1, mean_ms=2.1, runs=10, threads=2, label="fast")
    results = {"slow": slow, "fast": fast}
    assert ratio(results, "slow", "fast") == pytest.approx(4.0)
    assert per_sample_ms(slow, 16) == pytest.approx(0.5)
    assert samples_per_second(slow, 16) == pytest.approx(2000.0)
    with pytest.raises(ConfigError, match="available.*fast"):
        ratio(results, "slow", "missing")
    with pytest.raises(ConfigError, match="batch_size"):
        per_sample_ms(slow, 0)


def test_as_dict_leaves_out_times_unless_asked():
    m = Measurement(1.0, 0.1, 1.0, 3, 1, "x", (1.0, 0.9, 1.1))
    assert "times_ms" not in m.as_dict()
    assert m.as_dict(include_times=True)["times_ms"] == [1.0, 0.9, 1.1]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: measure(lambda: None, threads=0), "threads"),
        (lambda: measure(lambda: None, min_run_time=0), "min_run_time"),
        (lambda: measure(lambda: None, warmup=-1), "warmup"),
        (lambda: measure("not callable"), "callable"),
        (lambda: compare({}), "at least one"),
        (lambda: compare({"f": lambda: None}, rounds=0), "rounds"),
    ],
)
def test_bad_arguments_raise_config_error(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_compare_keeps_each_rounds_median_for_per_round_ratios():
    result = compare({"a": lambda: sum(range(200)), "b": lambda: sum(range(400))}, min_run_time=0.01, warmup=1,
                     rounds=3)
    for m in result.values():
        assert len(m.round_ms) == 3 and all(t > 0 for t in m.round_ms)
        assert m.median_ms == statistics.median(m.round_ms)
        assert "round_ms" not in m.as_dict() and m.as_dict(include_times=True)["round_ms"] == list(m.round_ms)
