"""Smoke test of `benchmarks/spatial_mechanism.py`: its quick mode runs and writes records
with every field; a compact strategy that disagrees with masked execution stops it."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "spatial_mechanism.py"
FIELDS = {
    "block", "batch_size", "density", "executed_density", "strategy", "mask_kind", "flops",
    "speedup_flops", "time_ms", "speedup_measured", "efficiency", "torch_version", "threads",
    "cpu_model", "cross", "computed_density", "time_raw_ms", "copy_ms",
}


@pytest.fixture(scope="module")
def script():
    name = "spatial_mechanism_bench"
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


def test_quick_run_writes_records_with_all_fields(script, tmp_path):
    out, md = tmp_path / "sm.json", tmp_path / "sm.md"
    threads = torch.get_num_threads()
    assert script.main(["--quick", "--out", str(out), "--markdown", str(md)]) == 0
    assert torch.get_num_threads() == threads  # restored
    payload = json.loads(out.read_text())
    records = payload["records"]
    assert payload["meta"]["quick"] is True and payload["meta"]["threads"] == 1
    # 2 blocks x 2 batches x (dense + 2 densities x (masked, 4 compact, ideal))
    assert len(records) == 2 * 2 * (1 + 2 * 6)
    for record in records:
        assert FIELDS <= set(record), FIELDS - set(record)
        assert record["flops"] > 0 and record["speedup_flops"] > 0
        assert record["efficiency"] == pytest.approx(record["speedup_measured"] / record["speedup_flops"],
                                                     nan_ok=True)
        assert 0 < record["executed_density"] <= record["computed_density"] + 1e-9 <= 1 + 1e-9
    kinds = {(r["strategy"], r["mask_kind"], r["cross"]) for r in records}
    assert kinds == {("dense", "none", False), ("masked", "blob", False), ("ideal", "none", False),
                     ("positions", "blob", False), ("tiles", "tile", False),
                     ("positions", "tile", True), ("tiles", "blob", True)}
    dense = [r for r in records if r["strategy"] == "dense"]
    assert all(r["speedup_measured"] == 1.0 and r["speedup_flops"] == 1.0 for r in dense)
    text = md.read_text()
    assert text.count("| density |") == 4 and text.count("Fastest real strategy") == 4
    assert "positions on tile masks" in text and "tiles on blob masks" in text


def test_mismatch_with_masked_execution_aborts(script):
    spec = script.QUICK_BLOCKS[1]
    cases, _, branch, x0 = script.build_cases(spec, 2, (0.5,), seed=0)
    victim = next(c for c in cases if c.strategy == "tiles")
    run = victim.run
    victim.run = lambda: run() + 1.0
    with pytest.raises(SystemExit, match="strategy 'tiles' on .* masks differs from masked"):
        script.verify(spec, 2, cases, branch, x0)
