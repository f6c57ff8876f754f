"""Smoke test of `benchmarks/token_batching.py`: its quick mode runs and writes records with
every field; its decisions vary within the batch (or not, for the reference rows); a strategy
that disagrees with the per-sample reference stops it."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "token_batching.py"
FIELDS = {"model", "strategy", "keep_ratio", "batch_size", "speedup_flops", "speedup_measured", "ms",
          "static_ms", "efficiency", "flops", "executed_flops", "static_flops", "tokens", "decisions",
          "distinct_lengths", "torch_version", "threads", "cpu_model"}


@pytest.fixture(scope="module")
def script():
    name = "token_batching_bench"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.mark.slow
def test_quick_run_writes_records_with_all_fields(script, tmp_path):
    out, md = tmp_path / "tb.json", tmp_path / "tb.md"
    threads = torch.get_num_threads()
    assert script.main(["--quick", "--out", str(out), "--markdown", str(md)]) == 0
    assert torch.get_num_threads() == threads  # restored
    payload = json.loads(out.read_text())
    assert payload["meta"]["quick"] is True and payload["meta"]["threads"] == 1
    model = [r for r in payload["records"] if r["table"] == "model"]
    # 2 batches x (static + 2 ratios x (3 strategies x 2 decision kinds + ideal))
    assert len(model) == 2 * (1 + 2 * 7)
    for record in model:
        assert FIELDS <= set(record), FIELDS - set(record)
        assert record["efficiency"] == pytest.approx(record["speedup_measured"] / record["speedup_flops"])
        assert record["executed_flops"] >= record["flops"] > 0
        if record["strategy"] == "static":
            assert record["speedup_flops"] == 1.0 and record["speedup_measured"] == 1.0
        else:
            assert record["speedup_flops"] > 1.0
        if record["strategy"] != "pad" or record["decisions"] != "varying" or record["batch_size"] == 1:
            assert record["executed_flops"] == record["flops"]
    varying = [r for r in model if r["decisions"] == "varying" and r["batch_size"] == 4]
    assert all(max(r["distinct_lengths"][1:]) > 1 for r in varying)
    assert all(r["executed_flops"] > r["flops"] for r in varying if r["strategy"] == "pad")
    assert all(r["distinct_lengths"] == [1, 1, 1, 1] for r in model if r["decisions"] in ("equal", "ideal"))
    attention = [r for r in payload["records"] if r["table"] == "attention"]
    assert {r["variant"] for r in attention} == set(script.ATTENTION_VARIANTS)
    text = md.read_text()
    assert text.count("## batch") == 2 and "attention alone" in text and "target >= 0.9" in text


def test_decisions_are_nested_and_follow_the_policy(script):
    varying, equal, ideal = script.draw_decisions(8, 196, 0.7, 3, seed=0)
    assert equal.counts()[1:] == [[139] * 8, [98] * 8, [69] * 8]  # 138/97/68 patches + the class token
    counts = varying.counts()
    assert len(set(counts[1])) > 1
    for decisions in (varying, equal, ideal):
        previous = torch.ones(8, 196, dtype=torch.bool)
        for mask, rows in zip(decisions.masks, decisions.rows()):
            assert bool((mask <= previous).all())
            assert rows.shape == (int(previous.sum()) + 8,)
            previous = mask
    for s in range(1, 4):
        assert all(c[0] == round(sum(counts[s]) / 8) for c in [ideal.counts()[s]])
        ratios = [n / p for n, p in zip(counts[s], counts[s - 1])]
        assert all(0.5 < r < 0.9 for r in ratios)  # uniform in 0.7 +- 0.15, ceil'd, class token included


def test_mismatch_with_the_reference_aborts(script):
    model = script.quick_model().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), pytest.raises(SystemExit, match="differs from the per-sample reference"):
        script.check("pack_varying_0.7", 2, lambda: model.head(model.norm(model.embed(x)[:, 0])),
                     torch.zeros(2, 10), 0)
