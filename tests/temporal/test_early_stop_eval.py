"""`dynamicnets train` and `dynamicnets eval --budget` drive the early-stop LSTM unchanged."""
import pytest

from dynamicnets.pipelines.early_exit import EarlyExitRequest
from dynamicnets.pipelines.evaluate import EvalRequest, evaluate_checkpoint
from dynamicnets.training import TrainConfig, Trainer


@pytest.mark.slow  # a Trainer run and the eval pipeline (calibration, timing): seconds, more on a busy core
def test_trained_checkpoint_is_evaluated_at_a_budget_like_any_multi_exit_model(tmp_path):
    config = TrainConfig(name="es", model="early_stop_lstm_classifier",
                         model_args={"hidden": 16, "row_width": 8, "length": 8, "halting": True},
                         data="digits", val_size=0.2, epochs=1, batch_size=64, max_steps_per_epoch=3,
                         optimizer="adamw", lr=1e-2, seed=0, device="cpu", out_dir=str(tmp_path), progress=False)
    Trainer(config).fit()
    result = evaluate_checkpoint(EvalRequest(
        checkpoint=str(tmp_path / "es" / "last.pt"), batch_size=64, min_run_time=0.01, timed_samples=16,
        early_exit=EarlyExitRequest(budget_fraction=0.6)))
    assert result["model"] == "early_stop_lstm_classifier"
    assert len(result["exit_histogram"]) == 8  # one exit per row
    assert result["mean_flops"] <= result["full_flops"]
    assert result["speedup_flops"] > 1.2
