"""`attack` and `explain` take shipped weights as `eval` and `export` do:
`--model NAME --pretrained [TAG] --data SPEC`."""
from __future__ import annotations

import json

from dynamicnets.cli.main import main


def test_attack_runs_on_shipped_weights(tmp_path, capsys, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "cifar-10-batches-py")
    out = tmp_path / "pgd.json"
    # 40 images, fewer than the 5,000 the weights were validated on: score them all
    assert main(["attack", "--model", "resnet20", "--pretrained", "cifar10", "--data", f"cifar10:{data}",
                 "--split", "all", "--kind", "pgd", "--eps", "8/255", "--steps", "1", "--samples", "4",
                 "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["meta"]["pretrained"] == "cifar10" and len(written["meta"]["sha256"]) == 64
    assert [r["attack"] for r in written["records"]] == ["none", "pgd"]
    assert "resnet20 on cifar10:" in capsys.readouterr().out


def test_explain_draws_shipped_weights_into_a_folder_named_after_them(tmp_path, monkeypatch, capsys, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "cifar-10-batches-py")
    monkeypatch.chdir(tmp_path)
    assert main(["explain", "--model", "dynconv_resnet20", "--pretrained", "cifar10", "--data", f"cifar10:{data}",
                 "--split", "all", "--num-images", "1"]) == 0
    assert (tmp_path / "spatial_maps" / "dynconv_resnet20_cifar10" / "image_000.png").is_file()


def test_shipped_weights_need_data_and_one_source(tmp_path, capsys):
    for command in (["explain"], ["attack", "--kind", "pgd", "--eps", "8/255", "--out", str(tmp_path / "a.json")]):
        assert main([*command, "--model", "resnet20", "--pretrained", "cifar10"]) == 2
        assert "--data: shipped weights carry no data path" in capsys.readouterr().err
        assert main([*command, "--checkpoint", "x.pt", "--model", "resnet20", "--pretrained"]) == 2
        assert "give one" in capsys.readouterr().err
        assert main(command) == 2
        assert "--checkpoint CK, or --model NAME --pretrained" in capsys.readouterr().err


def test_a_recorded_split_that_does_not_fit_the_data_names_both_and_the_way_out(tmp_path, capsys, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "cifar-10-batches-py")
    # the weights were validated on 5,000 of 50,000 images; 40 images cannot hold that split
    assert main(["eval", "--model", "resnet20", "--pretrained", "cifar10", "--data", f"cifar10:{data}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "val_size=5000, seed=0" in err and "out of 40" in err and "--split all" in err
