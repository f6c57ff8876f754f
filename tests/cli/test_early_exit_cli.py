"""`dynamicnets eval` on a multi-exit checkpoint: budgets, thresholds, policies, errors."""
import json

import pytest

from dynamicnets.cli.main import main

CONFIG = """\
name: exits
model: multi_exit_cnn
model_args: {width: 8}
data: digits
val_size: 0.2
epochs: 1
max_steps_per_epoch: 10
progress: false
"""
FAST = ["--min-run-time", "0.01"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("early_exit_cli")
    config = root / "exits.yaml"
    config.write_text(CONFIG + f"out_dir: {root / 'runs'}\n")
    assert main(["train", "--config", str(config)]) == 0
    return root / "runs" / "exits" / "last.pt"


def _eval(checkpoint, tmp_path, *args):
    out = tmp_path / "eval.json"
    code = main(["eval", "--checkpoint", str(checkpoint), "--json", str(out), "--batch-size", "64", *FAST, *args])
    return code, (json.loads(out.read_text())["records"] if code == 0 else None)


def test_budget_is_calibrated_and_reported_with_every_key(checkpoint, tmp_path, capsys):
    probe_code, probe = _eval(checkpoint, tmp_path, "--thresholds", "inf,inf")
    assert probe_code == 0
    costs = probe["exit_costs"]
    budget = (costs[0] + costs[-1]) / 2
    code, result = _eval(checkpoint, tmp_path, "--budget", str(budget), "--anytime")
    assert code == 0
    for key in ("accuracy", "mean_flops", "full_flops", "exit_histogram", "latency_ms_per_sample",
                "speedup_flops", "speedup_measured", "thresholds", "policy"):
        assert key in result, key
    assert result["calibration_mean_flops"] <= budget
    assert sum(result["exit_histogram"]) == result["samples"] == 180  # the other half of 359
    assert result["speedup_flops"] == pytest.approx(result["full_flops"] / result["mean_flops"])
    assert "exit" in capsys.readouterr().out  # the --anytime table


def test_thresholds_send_everyone_to_one_exit(checkpoint, tmp_path):
    _, last = _eval(checkpoint, tmp_path, "--thresholds", "inf,inf")
    assert last["exit_histogram"] == [0, 0, last["samples"]] and last["speedup_flops"] == 1.0
    _, first = _eval(checkpoint, tmp_path, "--thresholds", "0,0")
    assert first["exit_histogram"] == [first["samples"], 0, 0]
    assert first["mean_flops"] == first["exit_costs"][0]


def test_patience_policy(checkpoint, tmp_path):
    _, result = _eval(checkpoint, tmp_path, "--policy", "patience", "--thresholds", "1,1")
    assert result["exit_histogram"][0] == result["samples"]  # k = 1: the first exit always agrees with itself


def test_max_flops_caps_every_sample(checkpoint, tmp_path):
    _, probe = _eval(checkpoint, tmp_path, "--thresholds", "inf,inf")
    cap = probe["exit_costs"][1]
    _, capped = _eval(checkpoint, tmp_path, "--thresholds", "inf,inf", "--max-flops", str(cap))
    assert capped["exit_histogram"] == [0, capped["samples"], 0]


def _one_error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_budget_out_of_range_states_the_attainable_range(checkpoint, tmp_path, capsys):
    assert _eval(checkpoint, tmp_path, "--budget", "1k")[0] == 2
    assert "attainable range" in _one_error_line(capsys)
    assert _eval(checkpoint, tmp_path, "--budget-ms", "1e9")[0] == 2
    assert "attainable range" in _one_error_line(capsys)


def test_multi_exit_model_needs_an_exit_rule(checkpoint, tmp_path, capsys):
    assert _eval(checkpoint, tmp_path)[0] == 2
    assert "--budget" in _one_error_line(capsys)
    assert _eval(checkpoint, tmp_path, "--budget", "2M", "--thresholds", "1,1")[0] == 2
    assert "exactly one" in _one_error_line(capsys)
    assert _eval(checkpoint, tmp_path, "--policy", "vibes", "--budget", "2M")[0] == 2
    assert "maxprob" in _one_error_line(capsys)
    assert _eval(checkpoint, tmp_path, "--budget", "50%", "--gate-rate", "0.5")[0] == 2  # not silently dropped
    line = _one_error_line(capsys)
    assert "--gate-rate" in line and "no layer-skipping gates" in line


def test_budget_as_a_fraction_of_the_full_cost(checkpoint, tmp_path, capsys):
    _, by_fraction = _eval(checkpoint, tmp_path, "--budget", "60%")
    full = by_fraction["full_flops"]
    assert by_fraction["budget_fraction"] == 0.6 and by_fraction["budget_flops"] == pytest.approx(0.6 * full)
    _, by_flops = _eval(checkpoint, tmp_path, "--budget", str(0.6 * full))
    assert by_fraction["thresholds"] == by_flops["thresholds"]
    assert "60% of full_flops" in capsys.readouterr().out
    assert _eval(checkpoint, tmp_path, "--budget", "1%")[0] == 2
    assert "attainable range is [" in _one_error_line(capsys)
    assert _eval(checkpoint, tmp_path, "--budget", "half%")[0] == 2
    assert "--budget" in _one_error_line(capsys)


def test_anytime_alone_needs_no_budget_and_scores_the_whole_split(checkpoint, tmp_path, capsys):
    code, result = _eval(checkpoint, tmp_path, "--anytime")
    assert code == 0
    assert result["samples"] == 359 and len(result["anytime"]) == 3
    assert result["accuracy"] == result["anytime"][-1]["accuracy"]
    assert [row["flops"] for row in result["anytime"]] == result["exit_costs"]
    printed = capsys.readouterr().out
    assert "full_flops" in printed and "exit" in printed


def test_measured_and_flops_speedups_come_from_the_same_samples(checkpoint, tmp_path):
    _, result = _eval(checkpoint, tmp_path, "--thresholds", "0.5,0.5", "--timed-samples", "40")
    assert result["timed_samples"] == 40 and result["samples"] == 359  # given thresholds: nothing fitted
    timing = result["timing"]
    assert result["speedup_flops_timed"] == pytest.approx(result["full_flops"] / timing["mean_flops"])
    assert result["realized_fraction"] == pytest.approx(result["speedup_measured"] / result["speedup_flops_timed"])
    _, whole = _eval(checkpoint, tmp_path, "--thresholds", "0.5,0.5", "--timed-samples", "0")
    assert whole["timed_samples"] == whole["samples"]
    assert whole["speedup_flops_timed"] == pytest.approx(whole["speedup_flops"])


def test_a_time_budget_reports_how_far_the_clock_went_past_it(checkpoint, tmp_path, monkeypatch):
    import dynamicnets.pipelines.early_exit as early_exit
    # per-exit latencies fixed, so the fit is the same on a busy machine; the clock is real
    monkeypatch.setattr(early_exit, "exit_latencies_ms", lambda *args, **kwargs: [1e-6, 2e-6, 3e-6])
    code, result = _eval(checkpoint, tmp_path, "--budget-ms", "2e-6", "--timed-samples", "64")
    assert code == 0
    assert result["exit_latency_ms"] == [1e-6, 2e-6, 3e-6] and result["budget_ms"] == 2e-6
    assert result["budget_ms_overshoot"] == pytest.approx(result["latency_ms_per_sample"] / 2e-6 - 1)
    assert result["budget_ms_overshoot"] > 0  # no real model runs in 2 ns per sample


def test_a_time_budget_is_refitted_until_the_calibration_batches_meet_it(checkpoint, tmp_path, monkeypatch):
    import dynamicnets.pipelines.early_exit as early_exit
    from dynamicnets.profiling.latency import Measurement

    monkeypatch.setattr(early_exit, "exit_latencies_ms", lambda *args, **kwargs: [1.0, 2.0, 3.0])
    spent = iter([2.5, 1.9])  # ms per sample each fitted rule takes on the calibration batches

    def clock(fn, **kwargs):  # the rule really runs; only the reading is fixed
        fn()
        per_sample = next(spent)
        return Measurement(median_ms=per_sample * 64, iqr_ms=0.0, mean_ms=per_sample * 64, runs=1, threads=1)

    monkeypatch.setattr(early_exit, "measure", clock)
    code, result = _eval(checkpoint, tmp_path, "--budget-ms", "2", "--timed-samples", "64")
    assert code == 0 and result["budget_ms_fit_rounds"] == 2
    assert result["calibration_measured_ms_per_sample"] == 1.9
    # the second fit aimed at 2 * 2 / 2.5 = 1.6 ms on the latency model (first fit: at 2 ms)
    assert 1.0 <= result["calibration_ms_per_sample"] <= 1.6 + 1e-9
    # the spread it reports is in measured ms, not the latency model's
    assert result["cost_spread"]["expected_mean"] == pytest.approx(1.9)


@pytest.mark.parametrize("overshoot,noted", [(0.30, True), (0.01, False), (None, False)])
def test_the_overshoot_note_appears_only_past_timing_noise(monkeypatch, capsys, overshoot, noted):
    import dynamicnets.cli.evaluate as cli_evaluate
    result = {"model": "m", "budget_ms": 2.0, "latency_ms_per_sample": 2.0 * (1 + (overshoot or 0)),
              "budget_ms_overshoot": overshoot}
    monkeypatch.setattr(cli_evaluate, "evaluate_checkpoint", lambda request: result)
    assert main(["eval", "--checkpoint", "unused.pt", "--budget-ms", "2"]) == 0
    err = capsys.readouterr().err
    assert ("exceed --budget-ms 2 by 30%" in err) is noted and ("note:" in err) is noted
