"""`benchmarks/spatial_cifar.py --quick` on checkpoints the trainer wrote: it loads them,
scores them and writes JSON records whose fields agree with each other, the Markdown
verdicts and the plot."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from dynamicnets.cli.main import main as cli

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "spatial_cifar.py"


def _train(tmp_path: Path, data: Path, name: str, model: str, model_args: str) -> Path:
    config = tmp_path / f"{name}.yaml"
    config.write_text(f"name: {name}\nmodel: {model}\nmodel_args: {model_args}\ndata: cifar10:{data}\n"
                      "val_size: 16\nepochs: 1\nbatch_size: 8\nmax_steps_per_epoch: 1\naugment: false\n"
                      f"progress: false\nchannels_last: true\nout_dir: {tmp_path / 'runs'}\n")
    assert cli(["train", "--config", str(config)]) == 0
    return tmp_path / "runs" / name


def _script():
    spec = importlib.util.spec_from_file_location("spatial_cifar_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_quick_run_on_trained_checkpoints_writes_consistent_records(tmp_path, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "cifar-10-batches-py")
    plain = _train(tmp_path, data, "plain", "resnet20", "{}")
    dynamic = _train(tmp_path, data, "dyn_b0.5", "dynconv_resnet20", "{budget: 0.5, gate_bias_init: 0.0}")
    out, md, png = tmp_path / "s.json", tmp_path / "s.md", tmp_path / "s.png"
    threads = torch.get_num_threads()
    try:
        code = _script().main(["--plain", str(plain), "--dynamic", str(dynamic / "last.pt"),
                               "--data", f"cifar10:{data}", "--batch-sizes", "1", "4", "--threads", "1",
                               "--quick", "--out", str(out), "--markdown", str(md), "--plot", str(png)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0

    records = json.loads(out.read_text())["records"]
    plain_row, rows = records[0], records[1:]
    assert plain_row["model"] == "resnet20" and plain_row["strategy"] == "static"
    assert plain_row["samples"] == 16 and plain_row["density"] == 1.0
    assert [(r["batch_size"], r["strategy"]) for r in rows] == [
        (b, s) for b in (1, 4) for s in ("positions", "tiles", "per_block")]
    for r in rows:
        assert r["model"] == "dynconv_resnet20" and r["run"] == "dyn_b0.5" and r["budget"] == 0.5
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["density"] <= 1.0
        assert r["mean_flops"] > 0 and r["time_ms"] > 0 and r["plain_time_ms"] > 0
        assert r["plain_flops"] == pytest.approx(plain_row["mean_flops"])
        assert r["speedup_flops"] == pytest.approx(r["plain_flops"] / r["flops"])
        assert r["speedup_measured"] == pytest.approx(r["plain_time_ms"] / r["time_ms"])
        assert r["realized"] == pytest.approx(r["speedup_measured"] / r["speedup_flops"])
        assert r["flops_saving_vs_plain"] == pytest.approx(1 - r["mean_flops"] / plain_row["mean_flops"])
        chosen = r["chosen_strategies"]
        if r["strategy"] == "per_block":
            assert len(chosen) == 7 and set(chosen) <= {"dense", "positions", "tiles"}  # 7 gated blocks
        else:
            assert chosen is None
    text = md.read_text()
    assert "| dyn_b0.5" in text and "b4 per_block" in text and "Target: at least 30%" in text
    assert "the target**" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
