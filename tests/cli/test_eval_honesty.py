"""`dynamicnets eval` cannot silently lie: the trained preprocessing on any source, the split
it scored named, `--split all`, budgets as a fraction, `--anytime` alone, defaults in `--help`."""
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dynamicnets.cli.main import main
from dynamicnets.data import load_data, make_eval_loader
from dynamicnets.pipelines.checkpoints import load_trained_model
from dynamicnets.training.evaluate import evaluate

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]  # sorted


def _images(rng, labels):
    """32x32 RGB uint8 images whose colour says the class (learnable in a few steps), plus noise."""
    base = np.stack([np.linspace(20, 235, 10), np.linspace(235, 20, 10), (np.arange(10) % 3) * 100 + 20], 1)
    pixels = base[labels][:, :, None, None] + rng.normal(0, 20, (len(labels), 3, 32, 32))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _pickle(path, images, labels):
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), -1), b"labels": labels.tolist()}, f, protocol=2)


@pytest.fixture(scope="module")
def same_images(tmp_path_factory):
    """The same test images as CIFAR-10 pickles and as PNGs in class folders, and a small
    CNN trained for a few steps on the pickles."""
    root = tmp_path_factory.mktemp("honest_eval")
    rng = np.random.default_rng(0)
    pickles = root / "cifar-10-batches-py"
    pickles.mkdir()
    for i in range(1, 6):
        labels = rng.integers(0, 10, 40)
        _pickle(pickles / f"data_batch_{i}", _images(rng, labels), labels)
    test_labels = np.repeat(np.arange(10), 6)
    test_images = _images(rng, test_labels)
    _pickle(pickles / "test_batch", test_images, test_labels)
    folder = root / "pngs"
    for k, (image, label) in enumerate(zip(test_images, test_labels)):
        (folder / CLASSES[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / CLASSES[label] / f"{k}.png")
    config = root / "tiny.yaml"
    config.write_text(f"name: tiny\nmodel: small_cnn\nmodel_args: {{width: 8}}\ndata: cifar10:{pickles}\n"
                      f"val_size: 20\nepochs: 3\nbatch_size: 20\nlr: 0.1\naugment: false\nprogress: false\n"
                      f"out_dir: {root / 'runs'}\n")
    assert main(["train", "--config", str(config)]) == 0
    return {"root": root, "pickles": pickles, "folder": folder, "checkpoint": root / "runs" / "tiny" / "last.pt"}


def _eval(checkpoint, out, *args):
    code = main(["eval", "--checkpoint", str(checkpoint), "--min-run-time", "0.01", "--json", str(out), *args])
    assert code == 0
    return json.loads(out.read_text())["records"]


def test_pickles_and_pngs_of_the_same_images_score_the_same(same_images, tmp_path, capsys):
    ckpt = same_images["checkpoint"]
    pickles = _eval(ckpt, tmp_path / "p.json", "--data", f"cifar10:{same_images['pickles']}", "--split", "test")
    pngs = _eval(ckpt, tmp_path / "f.json", "--data", f"imagefolder:{same_images['folder']}", "--split", "all")
    assert pickles["samples"] == pngs["samples"] == 60
    assert pickles["accuracy"] == pngs["accuracy"]
    assert pickles["preprocessing_converted"] is None
    assert "converted" in pngs["preprocessing_converted"] and "0.4914" in pngs["preprocessing"]
    printed = capsys.readouterr().out
    assert "scored_on: all: every one of the 60 samples" in printed and "preprocessing_converted" in printed

    # The test is able to see the lie it guards against: the folder as it reads itself
    # (pixels / 255, no CIFAR mean/std) scores differently.
    model, _ = load_trained_model(ckpt)
    naive = load_data(f"imagefolder:{same_images['folder']}", val_size=1, augment=False).val.whole()
    naive_accuracy = evaluate(model, make_eval_loader(naive, 64), "cpu")["accuracy"]
    assert naive_accuracy != pytest.approx(pngs["accuracy"], abs=0.05)
    assert pngs["accuracy"] > 0.5  # the model learnt the colours: the equality above is not chance level


def test_a_checkpoint_without_a_recorded_preprocessing_derives_it_from_its_data_spec(same_images, tmp_path):
    ckpt = torch.load(same_images["checkpoint"], weights_only=True)
    assert ckpt["preprocessing"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    del ckpt["preprocessing"]  # as written before checkpoints recorded it
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    recorded = _eval(same_images["checkpoint"], tmp_path / "a.json", "--data", f"imagefolder:{same_images['folder']}",
                     "--split", "all")
    derived = _eval(old, tmp_path / "b.json", "--data", f"imagefolder:{same_images['folder']}", "--split", "all")
    assert derived["accuracy"] == recorded["accuracy"]
    assert "derived from its training data 'cifar10:" in derived["preprocessing"]
    assert "recorded in the checkpoint" in recorded["preprocessing"]


def test_a_source_that_cannot_be_converted_is_an_error(same_images, tmp_path, capsys):
    small = tmp_path / "small"
    for name in CLASSES:
        (small / name).mkdir(parents=True)
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(small / name / "0.png")
    code = main(["eval", "--checkpoint", str(same_images["checkpoint"]), "--data", f"imagefolder:{small}",
                 "--split", "all"])
    assert code == 2
    err = capsys.readouterr().err
    assert "(3, 16, 16)" in err and "(3, 32, 32)" in err and "Traceback" not in err


def test_val_split_is_named_and_all_scores_every_sample(same_images, tmp_path, capsys):
    ckpt = same_images["checkpoint"]
    val = _eval(ckpt, tmp_path / "v.json")
    assert val["split"] == "val" and val["samples"] == 20
    assert "val: 20 of the 200 samples of the training files" in val["scored_on"]
    everything = _eval(ckpt, tmp_path / "all.json", "--split", "all")
    assert everything["samples"] == 260  # 200 training + 60 test images
    assert "training and test files" in everything["scored_on"]
    assert "full_flops" in capsys.readouterr().out


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: val)" in text and "(default: 256)" in text and "50%" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "shipped config" in capsys.readouterr().out
