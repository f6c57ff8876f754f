"""The training loop adds a model's `label_losses(out, y)` (losses that need the labels)."""
from __future__ import annotations

import json

import torch
import pytest

from dynamicnets.training import SupportsLabelLosses, TrainConfig, Trainer, dynamic_loss

from .tiny import TinyTwoExitNet, tiny_bundle


class LabelledTinyNet(TinyTwoExitNet):
    """The tiny net plus a loss on the first exit's logit of the true class."""

    def label_losses(self, out, target):
        picked = out.exit_logits[0].gather(1, target[:, None])
        return {"true_logit": 0.5 * picked.square().mean()}


def config(tmp_path, name: str) -> TrainConfig:
    return TrainConfig(name=name, model="tiny", data="synthetic", epochs=1, max_steps_per_epoch=1,
                       batch_size=16, lr=0.1, device="cpu", out_dir=str(tmp_path), progress=False,
                       augment=False)


def first_epoch(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])


def test_the_trainer_adds_label_losses_to_the_aux_loss(tmp_path):
    torch.manual_seed(0)
    labelled = LabelledTinyNet()
    plain = TinyTwoExitNet()
    plain.load_state_dict(labelled.state_dict())
    assert isinstance(labelled, SupportsLabelLosses) and not isinstance(plain, SupportsLabelLosses)

    probe = Trainer(config(tmp_path, "probe"), model=LabelledTinyNet(), bundle=tiny_bundle())
    x, y = next(iter(probe.train_loader))  # the batch every fresh run starts with
    with torch.no_grad():
        expected = float(labelled.label_losses(labelled(x), y)["true_logit"])
    assert expected > 0

    Trainer(config(tmp_path, "plain"), model=plain, bundle=tiny_bundle()).fit()
    Trainer(config(tmp_path, "labelled"), model=labelled, bundle=tiny_bundle()).fit()
    without, with_labels = first_epoch(tmp_path / "plain"), first_epoch(tmp_path / "labelled")
    assert with_labels["task_loss"] == pytest.approx(without["task_loss"])
    assert with_labels["aux_loss"] == pytest.approx(without["aux_loss"] + expected, rel=1e-5)


def test_label_losses_fit_dynamic_loss_from_your_own_loop():
    torch.manual_seed(0)
    model = LabelledTinyNet()
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8) % 3
    with torch.no_grad():
        out = model(x)
    extra = model.label_losses(out, y)
    total = dynamic_loss(out, y, aux_losses=extra)
    assert float(total) == pytest.approx(float(dynamic_loss(out, y)) + float(extra["true_logit"]), rel=1e-6)
