"""`train_execution`: dynamic models trained with compact execution, and the training FLOPs log."""
import json

import pytest
import torch

from dynamicnets import create_model
from dynamicnets.errors import ConfigError
from dynamicnets.data import load_data
from dynamicnets.training import TrainConfig, Trainer


def config(tmp_path, **overrides) -> TrainConfig:
    values = dict(name="run", model="convnet_aig_resnet", model_args={"depth": 14, "width": 4}, data="digits",
                  val_size=0.2, epochs=1, batch_size=32, lr=0.05, device="cpu", out_dir=str(tmp_path),
                  progress=False, max_steps_per_epoch=3, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def last_record(tmp_path, name: str) -> dict:
    return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.parametrize("model", ["convnet_aig_resnet", "blockdrop_resnet"])
def test_compact_training_runs_only_the_kept_blocks_and_logs_fewer_flops(tmp_path, model):
    seen = []
    for execution in ("masked", "compact"):
        trainer = Trainer(config(tmp_path, name=execution, model=model, train_execution=execution))
        original = trainer.model.forward

        def forward(x, _model=trainer.model, **kwargs):
            if _model.training:  # the validation pass calls forward too, without kwargs
                seen.append(kwargs.get("execution"))
            return original(x, **kwargs)

        trainer._train_model.forward = forward
        trainer.fit()
    assert seen == ["masked"] * 3 + ["compact"] * 3
    masked, compact = last_record(tmp_path, "masked"), last_record(tmp_path, "compact")
    assert masked["train_mean_flops"] > compact["train_mean_flops"] > 0  # the hard decisions skipped blocks
    assert torch.isfinite(torch.tensor([masked["train_loss"], compact["train_loss"]])).all()
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_compact_and_masked_training_take_the_same_step_for_the_same_decisions(tmp_path):
    """One optimizer step of BlockDrop on a fixed batch: the policy's sampled actions are the
    same (same seed), so compact and masked execution must give the same new weights. With
    BatchNorm in eval mode: in training mode a block run compact normalises with the
    statistics of the samples that run it, masked with those of the whole batch."""
    bundle = load_data("digits", val_size=0.2, seed=0)
    x = torch.stack([bundle.train[i][0] for i in range(16)])
    y = torch.tensor([int(bundle.train[i][1]) for i in range(16)])
    weights = {}
    for execution in ("masked", "compact"):
        torch.manual_seed(0)
        model = create_model("blockdrop_resnet", depth=14, width=4, in_chans=1, num_classes=10, policy_bias_init=0.0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        out = model(x, execution=execution, target=y, generator=torch.Generator().manual_seed(1))
        (torch.nn.functional.cross_entropy(out.logits, y) + out.aux_loss()).backward()
        optimizer.step()
        weights[execution] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert 0 < float(out.decisions["gates"].mean()) < 1  # some blocks skipped, some run
    for key, value in weights["masked"].items():
        torch.testing.assert_close(weights["compact"][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_train_execution_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="train_execution"):
        config(tmp_path, train_execution="sparse")
    with pytest.raises(ConfigError, match="no .compact. execution.*static"):
        Trainer(config(tmp_path, model="small_cnn", model_args={"width": 4}, train_execution="compact"))
    Trainer(config(tmp_path, name="static", model="small_cnn", model_args={"width": 4})).fit()
    record = last_record(tmp_path, "static")
    assert record["train_mean_flops"] > 0  # static models report their (constant) FLOPs too


def test_compact_training_is_refused_under_data_parallel(tmp_path, monkeypatch):
    import dynamicnets.training.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "init_distributed", lambda backend: (0, 2, 0))  # rank 0 of 2
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        Trainer(config(tmp_path, train_execution="compact"))
