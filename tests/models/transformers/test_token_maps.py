"""Token decisions drawn as spatial maps: kept patches per stage, A-ViT's halting depth."""
import pytest
import torch

from dynamicnets import create_model
from dynamicnets.inference import TokenPolicy
from dynamicnets.profiling.spatial_maps import save_spatial_maps


@pytest.mark.parametrize("name", ["dynamic_vit_cifar", "evit_cifar"])
def test_kept_patches_are_spatial_masks_of_the_grid(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    out = model(torch.randn(3, 3, 32, 32), policy=TokenPolicy(keep_ratio=0.5))
    for s in range(3):
        mask = out.decisions[f"spatial_mask.{s}"]
        assert mask.shape == (3, 8, 8) and mask.dtype == torch.bool
        assert torch.equal(mask.flatten(1), out.decisions[f"kept.{s}"])
    kept = [int(out.decisions[f"spatial_mask.{s}"][0].sum()) for s in range(3)]
    if name == "dynamic_vit_cifar":  # keep 0.5 per stage: 32, 16, 8 of the 64 patches
        assert kept == [32, 16, 8]
    else:  # EViT's fused token competes for a place from the second stage on
        assert kept[0] == 32 and 16 <= kept[1] <= 17 and kept[2] <= kept[1]


def test_avit_halting_depth_is_a_ponder_map():
    torch.manual_seed(0)
    model = create_model("avit_cifar").eval()
    out = model(torch.randn(2, 3, 32, 32))
    depth_map = out.decisions["ponder_map.0"]
    assert depth_map.shape == (2, 8, 8)
    assert torch.equal(depth_map.flatten(1), (out.decisions["halting_depth"] + 1).float())
    assert ((depth_map >= 1) & (depth_map <= model.depth)).all()


def test_explain_pictures_draw_token_models(tmp_path):
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    model = create_model("dynamic_vit_cifar")
    maps = save_spatial_maps(model, torch.randn(2, 3, 32, 32), tmp_path, max_images=1)
    assert maps.blocks == list(model.prune_before)
    assert all(p.is_file() for p in maps.paths)
    torch.testing.assert_close(maps.mean_values, torch.tensor([45 / 64, 32 / 64, 23 / 64], dtype=torch.float64))
