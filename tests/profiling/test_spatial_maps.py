"""`save_spatial_maps` and `dynamicnets explain`: one PNG per image plus a summary, the drawn
densities are the model's own, and a model without spatial decisions is a clear error."""

import pytest
import torch
from matplotlib.image import imread
from torch import nn

import dynamicnets as dn
from dynamicnets.cli.main import main
from dynamicnets.errors import ConfigError
from dynamicnets.outputs import DynamicOutput
from dynamicnets.profiling.spatial_maps import save_spatial_maps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    assert path.is_file() and path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.05  # something was drawn


@pytest.fixture(scope="module")
def dynconv():
    torch.manual_seed(0)
    return dn.create_model("dynconv_resnet20", gate_bias_init=0.0)  # logits around 0: mixed masks


def test_one_png_per_image_plus_summary_with_the_models_densities(dynconv, tmp_path):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    dynconv.train()
    maps = save_spatial_maps(dynconv, images, tmp_path / "maps", max_images=2,
                             mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))

    assert dynconv.training  # put back in the mode it came in
    assert [p.name for p in maps.paths] == ["image_000.png", "image_001.png", "summary.png"]
    assert maps.paths == [*maps.image_paths, maps.summary_path]
    for path in maps.paths:
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == ["image_000.png", "image_001.png",
                                                                     "summary.png"]  # no temp leftovers

    dynconv.eval()
    with torch.no_grad():
        decisions = dynconv(images).decisions
    assert maps.names == [f"spatial_mask.{i}" for i in range(dynconv.num_gated_blocks)]
    assert maps.blocks == list(dynconv.gated_index)
    assert maps.values.shape == (3, dynconv.num_gated_blocks)  # the whole batch, not only the drawn images
    torch.testing.assert_close(maps.values.float(), decisions["block_density"], atol=1e-6, rtol=0)
    torch.testing.assert_close(maps.mean_values, maps.values.mean(0))
    assert ((maps.values > 0) & (maps.values < 1)).any()  # mixed masks, not all-on or all-off


def test_a_model_without_spatial_decisions_is_a_config_error_naming_it(tmp_path):
    model = dn.create_model("resnet20")
    with pytest.raises(ConfigError, match=r"resnet20.*no spatial decisions"):
        save_spatial_maps(model, torch.randn(1, 3, 32, 32), tmp_path / "maps")
    assert not (tmp_path / "maps").exists()


class _PonderNet(nn.Module):
    """`(B, 1, 8, 8) -> DynamicOutput` with a `ponder_map.0` `(B, 4, 4)` of known values."""

    name = "ponder_net"

    def forward(self, x):
        ponder = 1.0 + x[:, 0, ::2, ::2].abs()
        return DynamicOutput(logits=x.flatten(1)[:, :2], decisions={"ponder_map.0": ponder})


def test_ponder_maps_are_drawn_with_their_mean(tmp_path):
    x = torch.rand(2, 1, 8, 8)
    maps = save_spatial_maps(_PonderNet(), x, tmp_path, max_images=1, denormalise=lambda t: t)
    assert [p.name for p in maps.paths] == ["image_000.png", "summary.png"]
    _assert_png(maps.paths[0])
    expected = (1.0 + x[:, 0, ::2, ::2].abs()).double().flatten(1).mean(1)
    torch.testing.assert_close(maps.values[:, 0], expected)


@pytest.mark.parametrize("kwargs, message", [
    ({"mean": (0.5,)}, "mean and std go together"),
    ({"mean": (0.5,), "std": (0.2,), "denormalise": lambda t: t}, "not both"),
    ({"mean": (0.5, 0.5), "std": (0.2, 0.2)}, "1 or 3 values"),
    ({"max_images": 0}, "max_images"),
])
def test_bad_arguments_are_named(kwargs, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        save_spatial_maps(_PonderNet(), torch.rand(1, 3, 8, 8), tmp_path, **kwargs)
    with pytest.raises(ConfigError, match=r"\(B, C, H, W\)"):
        save_spatial_maps(_PonderNet(), torch.rand(3, 8, 8), tmp_path)


def test_explain_cli_on_a_checkpoint_the_trainer_wrote(tmp_path, capsys, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "cifar-10-batches-py")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"name: tiny\nmodel: dynconv_resnet20\nmodel_args: {{gate_bias_init: 0.0}}\n"
                      f"data: cifar10:{data}\nval_size: 10\nepochs: 1\nbatch_size: 8\nmax_steps_per_epoch: 1\n"
                      f"augment: false\nprogress: false\nout_dir: {tmp_path / 'runs'}\n")
    assert main(["train", "--config", str(config)]) == 0
    checkpoint = tmp_path / "runs" / "tiny" / "last.pt"
    capsys.readouterr()

    out = tmp_path / "explained"
    assert main(["explain", "--checkpoint", str(checkpoint), "--num-images", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    paths = [out / "image_000.png", out / "image_001.png", out / "summary.png"]
    assert printed[-3:] == [str(p) for p in paths]
    assert "dynconv_resnet20" in printed[0] and "val: 10 of the 40 samples" in printed[0]
    for path in paths:
        _assert_png(path)
    # the run folder works as in eval: its best.pt, maps beside it by default
    assert main(["explain", "--checkpoint", str(checkpoint.parent), "--num-images", "1"]) == 0
    _assert_png(checkpoint.parent / "spatial_maps" / "image_000.png")


def test_explain_cli_names_a_static_checkpoint(tmp_path, capsys, tiny_cifar10):
    data = tiny_cifar10(tmp_path / "cifar-10-batches-py", per_batch=4)
    config = tmp_path / "static.yaml"
    config.write_text(f"name: static\nmodel: resnet20\ndata: cifar10:{data}\nval_size: 4\nepochs: 1\n"
                      f"batch_size: 8\nmax_steps_per_epoch: 1\naugment: false\nprogress: false\n"
                      f"out_dir: {tmp_path / 'runs'}\n")
    assert main(["train", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["explain", "--checkpoint", str(tmp_path / "runs" / "static" / "last.pt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "'resnet20'" in err and "no spatial decisions" in err
