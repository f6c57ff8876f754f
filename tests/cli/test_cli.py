"""The command line: thin wrappers that print one clear line on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynamicnets.cli.main import main

CONFIG = """\
name: tiny
model: small_cnn
model_args: {width: 8}
data: digits
val_size: 0.2
epochs: 1
batch_size: 64
progress: false
"""


@pytest.fixture()
def config_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG + f"out_dir: {tmp_path / 'runs'}\n")
    return path


@pytest.fixture()
def trained(config_file, tmp_path):
    assert main(["train", "--config", str(config_file), "max_steps_per_epoch=5"]) == 0
    return tmp_path / "runs" / "tiny"


def test_models_lists_registered_names(capsys):
    assert main(["models", "resnet*", "--names"]) == 0
    printed = capsys.readouterr().out.split()
    assert {"resnet20", "resnet32", "resnet56", "resnet110"} <= set(printed)
    assert all(name.startswith("resnet") for name in printed)


def test_train_writes_run_files_and_eval_reads_them(trained, tmp_path, capsys):
    for name in ("last.pt", "best.pt", "metrics.jsonl", "config.yaml"):
        assert (trained / name).is_file(), name
    out_json = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(trained / "best.pt"), "--json", str(out_json),
                 "--batch-size", "32"]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "latency_ms_per_sample" in printed
    record = json.loads(out_json.read_text())["records"]
    assert record["model"] == "small_cnn" and 0.0 <= record["accuracy"] <= 1.0
    assert record["samples"] == 359  # 20% of 1797 digits, rounded
    assert record["full_flops"] == pytest.approx(record["mean_flops"]) and record["speedup_flops"] == 1.0
    # the run folder scores its best.pt
    assert main(["eval", "--checkpoint", str(trained), "--json", str(out_json), "--batch-size", "32"]) == 0
    from_folder = json.loads(out_json.read_text())["records"]
    assert from_folder["checkpoint"] == str(trained / "best.pt")
    assert from_folder["accuracy"] == record["accuracy"]


def test_overrides_reach_the_config(config_file, tmp_path):
    assert main(["train", "--config", str(config_file), "name=other", "max_steps_per_epoch=2"]) == 0
    lines = (tmp_path / "runs" / "other" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1


def _error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_typo_in_config_key_names_it(config_file, capsys):
    assert main(["train", "--config", str(config_file), "epocs=3"]) == 2
    line = _error_line(capsys)
    assert "'epocs'" in line and "epochs" in line and "valid keys" in line


def test_wrong_type_names_key(config_file, capsys):
    assert main(["train", "--config", str(config_file), "epochs=many"]) == 2
    assert "'epochs'" in _error_line(capsys)


def test_missing_data_directory_is_one_line(config_file, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert main(["train", "--config", str(config_file), f"data=cifar10:{missing}"]) == 2
    assert str(missing) in _error_line(capsys)


def test_checkpoint_of_another_model_is_refused(trained, tmp_path, capsys):
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    ckpt["model_name"] = "resnet20"
    torch.save(ckpt, tmp_path / "other.pt")
    assert main(["eval", "--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert "other.pt" in _error_line(capsys)


def test_corrupt_checkpoint_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", "--checkpoint", str(bad)]) == 2
    assert "bad.pt" in _error_line(capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="no such checkpoint file"):
        main(["--debug", "eval", "--checkpoint", str(tmp_path / "missing.pt")])


def test_bench_prints_same_run_ratios(capsys, tmp_path):
    out_json = tmp_path / "bench.json"
    assert main(["bench", "small_cnn", "mnist1d_cnn", "--batch-sizes", "2", "--min-run-time", "0.02",
                 "--json", str(out_json)]) == 0
    rows = json.loads(out_json.read_text())["records"]
    assert [r["model"] for r in rows] == ["small_cnn", "mnist1d_cnn"]
    assert rows[0]["time_vs_small_cnn"] == 1.0 and rows[1]["median_ms"] > 0


def test_bench_prints_short_flops_and_writes_exact_ones(capsys, tmp_path):
    from dynamicnets.profiling.report import format_flops

    out_json = tmp_path / "bench.json"
    assert main(["bench", "small_cnn", "--batch-sizes", "1", "--min-run-time", "0.02", "--json", str(out_json)]) == 0
    flops = json.loads(out_json.read_text())["records"][0]["flops"]
    row = capsys.readouterr().out.splitlines()[2].split()
    assert isinstance(flops, int) and flops >= 1000
    assert row[:4] == ["small_cnn", "1", "1x8x8", format_flops(flops)]


def test_bench_refuses_an_unwritable_json_before_benchmarking(capsys, monkeypatch):
    import dynamicnets.cli.bench as bench

    def never(request):
        raise AssertionError("benchmarked before checking --json")

    monkeypatch.setattr(bench, "bench_models", never)
    assert main(["bench", "small_cnn", "--batch-sizes", "1", "--json", "/proc/x.json"]) == 2
    line = _error_line(capsys)
    assert "--json" in line and "/proc/x.json" in line


def test_bench_rejects_bad_batch_sizes(capsys):
    assert main(["bench", "small_cnn", "--batch-sizes", "a,b"]) == 2
    assert "--batch-sizes" in _error_line(capsys)


def test_console_script_exit_code_and_message(tmp_path):
    """The installed entry point (as a user runs it): exit code 2, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "dynamicnets", "eval", "--checkpoint",
                           str(tmp_path / "missing.pt")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing.pt" in proc.stderr


@pytest.mark.parametrize("value", ["-1", "0", "nan"])
def test_demo_refuses_a_bad_min_run_time_before_training(tmp_path, capsys, monkeypatch, value):
    import dynamicnets.pipelines.demo as demo

    def never(config, width):
        raise AssertionError("trained before checking --min-run-time")

    monkeypatch.setattr(demo, "_train", never)
    assert main(["demo", "--out-dir", str(tmp_path / "demo"), "--min-run-time", value]) == 2
    line = _error_line(capsys)
    assert "--min-run-time" in line and "> 0" in line and value in line
    assert not (tmp_path / "demo").exists()


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(out), "--epochs", "1", "--no-progress",
                 "--min-run-time", "0.02"]) == 0
    saved = json.loads((out / "demo.json").read_text())
    rows = saved["records"]
    static = [r for r in rows if "static" in r["model"]]
    dynamic = [r for r in rows if r["model"].startswith("cascade")]
    assert len(static) == 4 and len(dynamic) == 5
    assert [r["mean_flops"] for r in static] == sorted(r["mean_flops"] for r in static)
    fractions = [r["second_member_fraction"] for r in dynamic]
    assert fractions == sorted(fractions)  # larger budgets send more samples on to the second member
    first, second = static[1]["mean_flops"], static[3]["mean_flops"]  # the cascade is w16 -> w64
    for r in dynamic:
        assert r["mean_flops"] == pytest.approx(first + r["second_member_fraction"] * second)
        assert r["speedup_measured_b256"] > 0 and r["speedup_measured_b1"] > 0
        assert isinstance(r["beats_static_at_mean_flops"], bool)
    printed = capsys.readouterr().out
    assert printed.count("verdict: ") == 3 and len(saved["meta"]["verdicts"]) == 3
    png = (out / "accuracy_vs_flops.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(out / "mnist1d_cnn_w64" / "curves.png").is_file()


def test_second_train_in_same_run_folder_asks_for_resume_or_overwrite(trained, config_file, capsys):
    before = (trained / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--config", str(config_file), "max_steps_per_epoch=5"]) == 2
    assert "--resume" in _error_line(capsys)
    assert (trained / "last.pt").read_bytes() == before
    assert main(["train", "--config", str(config_file), "--resume", "epochs=2", "max_steps_per_epoch=5"]) == 0
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 2


def test_eval_of_a_gated_model_prints_the_per_block_execution_rate(tmp_path, capsys):
    config = tmp_path / "gated.yaml"
    config.write_text(CONFIG.replace("model: small_cnn", "model: convnet_aig_resnet").replace(
        "model_args: {width: 8}", "model_args: {depth: 14, width: 4}") + f"out_dir: {tmp_path / 'runs'}\n")
    assert main(["train", "--config", str(config), "name=gated", "max_steps_per_epoch=2"]) == 0
    metrics = json.loads((tmp_path / "runs" / "gated" / "metrics.jsonl").read_text().splitlines()[0])
    assert len(metrics["val_block_execution_rate"]) == 3  # depth 14: 2 blocks per stage, the first always runs
    out_json = tmp_path / "gated.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "runs" / "gated" / "last.pt"), "--json", str(out_json),
                 "--min-run-time", "0.01"]) == 0
    assert "block_execution_rate" in capsys.readouterr().out
    rates = json.loads(out_json.read_text())["records"]["block_execution_rate"]
    assert len(rates) == 3 and all(0.0 <= r <= 1.0 for r in rates)


def test_eval_gate_rate_fits_thresholds_on_one_half_and_scores_the_other(tmp_path, capsys):
    config = tmp_path / "gated.yaml"
    config.write_text(CONFIG.replace("model: small_cnn", "model: skipnet_resnet").replace(
        "model_args: {width: 8}", "model_args: {depth: 14, width: 4}") + f"out_dir: {tmp_path / 'runs'}\n")
    assert main(["train", "--config", str(config), "name=gated", "max_steps_per_epoch=2"]) == 0
    checkpoint = tmp_path / "runs" / "gated" / "last.pt"
    before = checkpoint.read_bytes()
    out_json = tmp_path / "rate.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--gate-rate", "0.5", "--json", str(out_json),
                 "--min-run-time", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "gate thresholds fitted on one seeded half" in printed and "gate_rate" in printed
    record = json.loads(out_json.read_text())["records"]
    # the 359-sample validation split in two disjoint halves: 179 fit the thresholds, 180 are scored
    assert (record["gate_calibration_samples"], record["samples"]) == (179, 180)
    assert all(abs(r - 0.5) < 0.15 for r in record["block_execution_rate"])
    assert checkpoint.read_bytes() == before  # the checkpoint is not rewritten
    cap = 0.95 * record["mean_flops"]  # --max-flops caps every sample under the fitted rule
    capped_json = tmp_path / "capped.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--gate-rate", "0.5", "--max-flops", f"{cap:.0f}",
                 "--json", str(capped_json), "--min-run-time", "0.01"]) == 0
    capped = json.loads(capped_json.read_text())["records"]
    assert "max_flops" in capsys.readouterr().out and capped["max_flops"] == pytest.approx(cap, abs=1)
    assert capped["mean_flops"] <= cap < record["mean_flops"]


def test_eval_gate_rate_refuses_ungated_models_and_rates_outside_0_1(trained, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--gate-rate", "0.5"]) == 2
    line = _error_line(capsys)
    assert "--gate-rate" in line and "no layer-skipping gates" in line
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--gate-rate", "1.5"]) == 2
    line = _error_line(capsys)
    assert "--gate-rate" in line and "(0, 1]" in line
    assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--max-flops", "1M"]) == 2
    line = _error_line(capsys)
    assert "--max-flops" in line and "no layer-skipping gates" in line


@pytest.mark.parametrize("name", ["skipnet_resnet", "convnet_aig_resnet", "blockdrop_resnet", "act_resnet",
                                  "sact_resnet", "skip_lstm_classifier"])
def test_full_flops_of_skipping_models_count_every_block_whatever_the_gates_decide(name):
    from dynamicnets import create_model
    from dynamicnets.pipelines.evaluate import full_flops_per_sample
    from dynamicnets.flops import counted_flops

    torch.manual_seed(0)
    kwargs = {"length": 12} if name == "skip_lstm_classifier" else {"depth": 14, "width": 4}
    model = create_model(name, **kwargs).eval()
    shape = (1, 12) if name == "skip_lstm_classifier" else (3, 16, 16)
    x = torch.zeros(1, *shape)
    everything = counted_flops(model, x, execution="masked")  # the masked path runs every block / step
    assert full_flops_per_sample(model, shape) == pytest.approx(everything)
