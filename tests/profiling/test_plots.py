import json

import pytest
from PIL import Image

from dynamicnets.errors import ConfigError, DataError
from dynamicnets.profiling import plot_accuracy_vs_flops, plot_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 5_000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 200
        low, high = image.convert("L").getextrema()
        assert high - low > 100  # something was drawn, not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp leftovers


def test_accuracy_vs_flops_from_mapping(tmp_path):
    path = tmp_path / "plots" / "tradeoff.png"
    returned = plot_accuracy_vs_flops(
        {
            "msdnet": [(30e6, 0.88), (12e6, 0.80), (55e6, 0.91)],
            "skipnet": [(40e6, 0.86), (60e6, 0.90)],
        },
        path,
        title="CIFAR-10",
        static_points={"resnet20": (81.3e6, 0.915), "resnet8": (20e6, 0.85)},
    )
    assert returned == path
    assert_real_png(path)


def test_accuracy_vs_flops_from_records_in_percent(tmp_path):
    records = [
        {"model": "msdnet", "flops": 10e6, "accuracy": 80.0},
        {"model": "msdnet", "flops": 20e6, "accuracy": 86.5},
        {"model": "ranet", "flops": 15e6, "accuracy": 84.0},
    ]
    path = plot_accuracy_vs_flops(records, tmp_path / "p.png", group_key="model")
    assert_real_png(path)


def test_accuracy_vs_flops_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="missing key.*accuracy"):
        plot_accuracy_vs_flops([{"name": "a", "flops": 1e6}], tmp_path / "p.png")
    with pytest.raises(ConfigError, match="no points"):
        plot_accuracy_vs_flops({}, tmp_path / "p.png")
    with pytest.raises(ConfigError, match=r"series\['a'\]\[0\]"):
        plot_accuracy_vs_flops({"a": [(1e6,)]}, tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_training_curves(tmp_path):
    records = []
    for epoch in range(1, 6):
        records += [{"epoch": epoch, "step": s, "train_loss": 2.0 / (epoch + s)} for s in range(3)]
        records.append({"epoch": epoch, "val_loss": 1.5 / epoch, "val_accuracy": 0.5 + 0.08 * epoch,
                        "val_exit_accuracy": [0.4, 0.5], "lr": 0.1})  # lists are skipped
    records.append({"test_accuracy": 0.9})  # no epoch: left out of the curves
    metrics = write_jsonl(tmp_path / "metrics.jsonl", records)
    out = tmp_path / "fig" / "curves.png"
    assert plot_training_curves(metrics, out) == out
    assert_real_png(out)


def test_training_curves_loss_only_without_epochs(tmp_path):
    metrics = write_jsonl(tmp_path / "m.jsonl", [{"loss": 1.0 / (i + 1)} for i in range(10)])
    out = tmp_path / "out" / "curves.png"
    plot_training_curves(metrics, out)
    assert_real_png(out)


def test_training_curves_bad_files(tmp_path):
    with pytest.raises(DataError, match="missing.jsonl"):
        plot_training_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"epoch": 1, "train_loss": 1.0}\n{not json\n')
    with pytest.raises(DataError, match="line 2"):
        plot_training_curves(bad, tmp_path / "x.png")
    no_metrics = write_jsonl(tmp_path / "nometrics.jsonl", [{"epoch": 1, "lr": 0.1}])
    with pytest.raises(DataError, match="'loss' or 'acc'.*lr"):
        plot_training_curves(no_metrics, tmp_path / "x.png")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no metrics"):
        plot_training_curves(empty, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
