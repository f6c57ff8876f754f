"""`dynamicnets export` on a digits checkpoint: the folder runs like eager inference."""
import json

import pytest
import torch

from dynamicnets.cli.main import main
from dynamicnets.deploy import DeployedModel
from dynamicnets.inference import ExitPolicy, run_early_exit
from dynamicnets.pipelines.checkpoints import load_trained_model

CONFIG = """\
name: exits
model: multi_exit_cnn
model_args: {{width: 4}}
data: digits
val_size: 0.2
epochs: 1
max_steps_per_epoch: 10
progress: false
out_dir: {out}
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_cli")
    (root / "exits.yaml").write_text(CONFIG.format(out=root / "runs"))
    assert main(["train", "--config", str(root / "exits.yaml")]) == 0
    return root / "runs" / "exits" / "last.pt"


def test_export_writes_a_checked_folder_with_policy_and_preprocessing(checkpoint, tmp_path, capsys):
    out = tmp_path / "deployed"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--thresholds", "0.6,0.5",
                 "--max-flops", "1e12"]) == 0
    printed = capsys.readouterr().out
    assert "check_decisions_equal: True" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "early_exit" and manifest["policy"]["thresholds"] == [0.6, 0.5]
    assert manifest["metadata"]["preprocessing"]["input_shape"] == [1, 8, 8]
    model, _ = load_trained_model(checkpoint)
    x = torch.rand(20, 1, 8, 8)
    policy = ExitPolicy("maxprob", [0.6, 0.5], 1e12)
    ours, ref = DeployedModel.load(out)(x), run_early_exit(model, x, policy)
    assert torch.equal(ours.decisions["exit_index"], ref.exit_index)
    torch.testing.assert_close(ours.logits, ref.logits)


def test_export_refuses_a_wrong_policy_and_format(checkpoint, tmp_path, capsys):
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x"),
                 "--thresholds", "0.5"]) == 2
    assert "thresholds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "y"), "--format", "tflite"])
