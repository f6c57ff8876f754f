"""Trainer on a tiny two-exit MLP and synthetic clusters (each run well under a second)."""
import json

import pytest
import torch
import yaml

from dynamicnets.errors import ConfigError, CheckpointError, TrainingError
from dynamicnets.training import TrainConfig, Trainer, load_checkpoint

from .tiny import tiny_bundle, tiny_model

METRIC_KEYS = {"epoch", "step", "train_loss", "task_loss", "aux_loss", "train_accuracy", "val_loss",
               "val_accuracy", "val_exit_accuracy", "val_mean_flops", "lr", "epoch_seconds",
               "images_per_second"}


def make_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(name="tiny_run", model="tiny", data="synthetic", epochs=3, batch_size=16, lr=0.1,
                  device="cpu", out_dir=str(tmp_path), progress=False, augment=False)
    values.update(overrides)
    return TrainConfig(**values)


def make_trainer(config: TrainConfig, hidden: int = 12, dropout: float = 0.0) -> Trainer:
    return Trainer(config, model=tiny_model(seed=config.seed, hidden=hidden, dropout=dropout), bundle=tiny_bundle())


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fit_learns_and_writes_metrics_config_and_checkpoints(tmp_path, capsys):
    trainer = make_trainer(make_config(tmp_path, exit_weights=[1.0, 2.0], grad_clip=5.0, warmup_epochs=1,
                                       progress=True))
    result = trainer.fit()
    assert "epoch 3/3  train loss" in capsys.readouterr().out
    run_dir = tmp_path / "tiny_run"
    lines = read_metrics(run_dir)
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert [r["step"] for r in lines] == [6, 12, 18]  # 96 samples / 16 per batch
    for record in lines:
        assert METRIC_KEYS <= record.keys()
        assert len(record["val_exit_accuracy"]) == 2
        assert record["val_mean_flops"] == trainer.model.flops_total
        assert record["aux_loss"] > 0 and record["train_loss"] == pytest.approx(
            record["task_loss"] + record["aux_loss"])
    assert lines[-1]["val_accuracy"] > 0.9 and lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert result["val_accuracy"] == lines[-1]["val_accuracy"] and not result["already_finished"]
    assert result["best_val_accuracy"] == max(r["val_accuracy"] for r in lines)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["exit_weights"] == [1.0, 2.0]
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 3 and last["step"] == 18 and last["model_name"] == "tiny"
    assert last["num_classes"] == 3 and last["input_shape"] == [1, 4, 4] and len(last["history"]) == 3
    assert_same_weights(last["model"], trainer.model.state_dict())
    best = load_checkpoint(run_dir / "best.pt")
    assert best["epoch"] == result["best_epoch"]
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = make_trainer(make_config(tmp_path, name="a"))
    b = make_trainer(make_config(tmp_path, name="b"))
    a.fit(), b.fit()
    assert_same_weights(a.model.state_dict(), b.model.state_dict())
    c = Trainer(make_config(tmp_path, name="c", seed=1), model=tiny_model(seed=0), bundle=tiny_bundle())
    c.fit()
    assert not torch.equal(a.model.exit2.weight, c.model.exit2.weight)  # shuffle order depends on seed


class SimulatedKill(Exception):
    pass


def kill_at(trainer: Trainer, epoch: int, index: int) -> None:
    """Make the trainer die inside step `index` of 0-based `epoch` (as a SIGKILL would)."""
    real_step = trainer._train_step

    def step(x, y, e, i):
        if (e, i) == (epoch, index):
            raise SimulatedKill(f"killed in epoch {e + 1}, step {i + 1}")
        return real_step(x, y, e, i)

    trainer._train_step = step


@pytest.mark.parametrize("index", [0, 3], ids=["after-epoch-1", "mid-epoch-2"])
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path, index):
    # dropout: the global random stream matters too, not only the loader's shuffle
    reference = make_trainer(make_config(tmp_path, name="ref"), dropout=0.2)
    reference.fit()

    killed = make_trainer(make_config(tmp_path, name="k"), dropout=0.2)
    kill_at(killed, epoch=1, index=index)
    with pytest.raises(SimulatedKill):
        killed.fit()
    run_dir = tmp_path / "k"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert len(read_metrics(run_dir)) == 1

    resumed = make_trainer(make_config(tmp_path, name="k", resume=True), dropout=0.2)
    result = resumed.fit()
    assert result["epoch"] == 3 and result["step"] == 18
    assert_same_weights(resumed.model.state_dict(), reference.model.state_dict())
    assert_same_weights(resumed.optimizer.state_dict()["state"][0], reference.optimizer.state_dict()["state"][0])
    got, want = read_metrics(run_dir), read_metrics(tmp_path / "ref")
    assert [r["epoch"] for r in got] == [1, 2, 3]
    for g, w in zip(got, want):
        assert g["train_loss"] == w["train_loss"] and g["val_accuracy"] == w["val_accuracy"]


def test_extending_epochs_on_resume_matches_a_longer_run_with_constant_lr(tmp_path):
    long = make_trainer(make_config(tmp_path, name="long", epochs=2, schedule="constant"))
    long.fit()
    make_trainer(make_config(tmp_path, name="short", epochs=1, schedule="constant")).fit()
    extended = make_trainer(make_config(tmp_path, name="short", epochs=2, schedule="constant", resume=True))
    extended.fit()
    assert_same_weights(extended.model.state_dict(), long.model.state_dict())


def test_resumed_run_follows_the_current_config_schedule_and_hyperparameters(tmp_path, capsys):
    make_trainer(make_config(tmp_path, epochs=1)).fit()
    extended = make_trainer(make_config(tmp_path, epochs=2, lr=0.2, weight_decay=1e-3, resume=True))
    assert extended._resume()
    # 6 of 12 steps done: the new cosine is half-way, lr = 0.2 * 0.5
    groups = extended.optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([0.1, 0.1])
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0]  # biases are not decayed
    assert extended.step == 6 and extended.scheduler.last_epoch == 6
    assert extended.optimizer.state_dict()["state"]  # momentum buffers came back
    printed = capsys.readouterr().out
    assert "changed since the checkpoint (current values apply): lr, weight_decay" in printed
    assert "training to epoch 2 (the run was started for 1)" in printed


def test_resuming_a_finished_run_says_so_and_trains_nothing(tmp_path, capsys):
    first = make_trainer(make_config(tmp_path, epochs=2))
    first.fit()
    again = make_trainer(make_config(tmp_path, epochs=2, resume=True))
    result = again.fit()
    assert result["already_finished"] and result["epoch"] == 2 and again.step == 12
    assert "already finished" in capsys.readouterr().out
    assert_same_weights(again.model.state_dict(), first.model.state_dict())
    assert len(read_metrics(tmp_path / "tiny_run")) == 2


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    result = make_trainer(make_config(tmp_path, epochs=1, resume=True)).fit()
    assert result["epoch"] == 1 and "starting a fresh run" in capsys.readouterr().out


def test_fresh_run_refuses_to_clobber_a_previous_run_unless_told(tmp_path):
    make_trainer(make_config(tmp_path, epochs=2)).fit()
    run_dir = tmp_path / "tiny_run"
    before = (run_dir / "last.pt").read_bytes()
    with pytest.raises(ConfigError, match=r"tiny_run: holds a previous run.*resume=true.*overwrite=true"):
        make_trainer(make_config(tmp_path, epochs=1)).fit()
    assert (run_dir / "last.pt").read_bytes() == before
    make_trainer(make_config(tmp_path, epochs=1, overwrite=True)).fit()
    assert len(read_metrics(run_dir)) == 1 and load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]


def test_an_overwrite_that_fails_before_its_first_epoch_keeps_the_old_checkpoints_aside(tmp_path):
    make_trainer(make_config(tmp_path, epochs=2)).fit()
    run_dir = tmp_path / "tiny_run"
    old_last, old_best = (run_dir / "last.pt").read_bytes(), (run_dir / "best.pt").read_bytes()
    failing = make_trainer(make_config(tmp_path, epochs=1, overwrite=True))

    def broken_forward(x):
        raise RuntimeError("fails in the first step")

    failing.model.forward = broken_forward
    with pytest.raises(RuntimeError, match="first step"):
        failing.fit()
    assert not (run_dir / "last.pt").exists()  # a resume cannot pick up the replaced run
    assert (run_dir / "last.replaced.pt").read_bytes() == old_last
    assert (run_dir / "best.replaced.pt").read_bytes() == old_best
    # a resume finds no last.pt: it must not start afresh over the replaced run unasked
    with pytest.raises(ConfigError, match="last.replaced.pt.*rename it to last.pt.*overwrite=true"):
        make_trainer(make_config(tmp_path, epochs=1, resume=True)).fit()
    assert (run_dir / "last.replaced.pt").read_bytes() == old_last
    make_trainer(make_config(tmp_path, epochs=1, overwrite=True)).fit()  # told to: the new run replaces it
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]


def test_resume_with_another_model_is_refused(tmp_path):
    make_trainer(make_config(tmp_path, epochs=1)).fit()
    with pytest.raises(CheckpointError, match=r"last.pt.*'tiny'.*expected 'other'"):
        make_trainer(make_config(tmp_path, model="other", epochs=2, resume=True)).fit()
    with pytest.raises(CheckpointError, match=r"last.pt: key 'body1.weight' has shape"):
        make_trainer(make_config(tmp_path, epochs=2, resume=True), hidden=8).fit()
    with pytest.raises(CheckpointError, match="optimizer 'sgd'"):
        make_trainer(make_config(tmp_path, epochs=2, resume=True, optimizer="adamw")).fit()


def test_nan_loss_raises_training_error_and_keeps_last_checkpoint(tmp_path):
    trainer = make_trainer(make_config(tmp_path, epochs=3))
    forward = trainer.model.forward
    training_calls = []

    def forward_turning_nan_at_epoch_2_step_3(x):
        out = forward(x)
        if trainer.model.training:  # evaluation forwards run in eval mode and are not counted
            training_calls.append(1)
            if len(training_calls) == 6 + 3:  # 6 steps per epoch
                out.logits = out.logits * float("nan")
                out.exit_logits = [e * float("nan") for e in out.exit_logits]
        return out

    trainer.model.forward = forward_turning_nan_at_epoch_2_step_3
    with pytest.raises(TrainingError, match=r"epoch 2, step 3.*lower lr") as err:
        trainer.fit()
    assert "last.pt" in str(err.value)
    run_dir = tmp_path / "tiny_run"
    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert len(read_metrics(run_dir)) == 1


def test_adamw_with_bf16_autocast_trains_and_resumes(tmp_path):
    values = dict(optimizer="adamw", lr=3e-2, bf16=True, label_smoothing=0.1)
    result = make_trainer(make_config(tmp_path, epochs=3, **values)).fit()
    assert result["val_accuracy"] > 0.8
    resumed = make_trainer(make_config(tmp_path, epochs=4, resume=True, **values))
    assert resumed.fit()["step"] == 24
    assert int(resumed.optimizer.state_dict()["state"][0]["step"]) == 24  # Adam moments continued


def test_max_steps_per_epoch_caps_steps(tmp_path):
    trainer = make_trainer(make_config(tmp_path, epochs=2, max_steps_per_epoch=2))
    result = trainer.fit()
    assert result["step"] == 4 and result["train_samples"] == 32


def test_distillation_switch_adds_the_exit_distillation_term(tmp_path):
    from dynamicnets.training import exit_distillation_loss

    one_step = dict(epochs=1, max_steps_per_epoch=1)
    probe = make_trainer(make_config(tmp_path, name="probe", **one_step))
    x, _ = next(iter(probe.train_loader))  # the batch every fresh run starts with
    with torch.no_grad():
        expected = float(exit_distillation_loss(probe.model(x), 4.0, 2.0))
    assert expected > 0

    make_trainer(make_config(tmp_path, name="plain", **one_step)).fit()
    make_trainer(make_config(tmp_path, name="distilled", distill_weight=2.0, distill_temperature=4.0,
                             **one_step)).fit()
    plain = read_metrics(tmp_path / "plain")[0]
    distilled = read_metrics(tmp_path / "distilled")[0]
    assert distilled["task_loss"] == pytest.approx(plain["task_loss"])
    assert distilled["aux_loss"] == pytest.approx(plain["aux_loss"] + expected, rel=1e-5)


def test_distillation_keys_are_validated(tmp_path):
    with pytest.raises(ConfigError, match="distill_temperature"):
        make_config(tmp_path, distill_temperature=0.0)
    with pytest.raises(ConfigError, match="distill_weight"):
        make_config(tmp_path, distill_weight=-1.0)


def test_the_epoch_line_says_the_time_left_at_the_recent_speed():
    from dynamicnets.training.trainer import time_left

    history = [{"epoch_seconds": 600.0}] * 3 + [{"epoch_seconds": s} for s in (100.0, 110.0, 90.0, 100.0, 120.0)]
    assert time_left(history, 30) == "  eta 50m"  # 30 x the median of the last five (100 s)
    assert time_left(history, 45) == "  eta 1h15m"
    assert time_left(history, 0) == "" and time_left([], 10) == "" and time_left([{"epoch": 1}], 10) == ""
    assert time_left([{"epoch_seconds": 1.0}], 1) == "  eta 1s"  # under a minute: seconds
    assert time_left([{"epoch_seconds": 20.0}], 2) == "  eta 40s" and time_left([{"epoch_seconds": 30.5}], 2) == "  eta 2m"
    assert time_left([{"epoch_seconds": 3590.0}], 2) == "  eta 2h00m"  # 119.7 minutes round up to 2 h


def test_exit_weights_of_the_wrong_count_fail_before_the_run_folder_is_touched(tmp_path):
    config = TrainConfig(name="exits", model="multi_exit_cnn", model_args={"width": 4}, data="digits", epochs=1,
                         exit_weights=[1.0] * 7, out_dir=str(tmp_path), progress=False, device="cpu")
    with pytest.raises(ConfigError, match="exit_weights"):
        Trainer(config)
    assert not (tmp_path / "exits").exists()


def test_a_checkpoint_with_a_damaged_rng_state_is_one_checkpoint_error(tmp_path):
    make_trainer(make_config(tmp_path, epochs=1)).fit()
    path = tmp_path / "tiny_run" / "last.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["rng"]["torch"] = "x"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"last.pt: incomplete or inconsistent training checkpoint \(\w+Error"):
        make_trainer(make_config(tmp_path, epochs=2, resume=True)).fit()
    del ckpt["rng"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"last.pt: not a dynamicnets training checkpoint \(no rng\)"):
        make_trainer(make_config(tmp_path, epochs=2, resume=True)).fit()
