"""`plot_grouped_bars`: a real PNG from grouped counts, clear errors for ill-shaped groups."""
import pytest
from PIL import Image

from dynamicnets.errors import ConfigError
from dynamicnets.profiling import plot_grouped_bars


def test_writes_a_drawn_png(tmp_path):
    path = tmp_path / "figs" / "hist.png"
    returned = plot_grouped_bars({"argmax": [100, 900, 1500], "budget 0.3": [2000, 400, 100]},
                                 ["16 px", "24 px", "32 px"], path, title="chosen resolution",
                                 ylabel="fraction", normalize=True)
    assert returned == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 200
        low, high = image.convert("L").getextrema()
        assert high - low > 100
    assert [p.name for p in path.parent.iterdir()] == ["hist.png"]


@pytest.mark.parametrize("groups, categories, match", [
    ({}, ["a"], "at least one group"),
    ({"g": [1.0]}, [], "at least one group"),
    ({"g": [1.0, 2.0]}, ["a"], r"groups\['g'\] must hold 1"),
    ({"g": [-1.0]}, ["a"], r"groups\['g'\]"),
    ({"g": [float("nan")]}, ["a"], r"groups\['g'\]"),
])
def test_bad_groups_are_config_errors(tmp_path, groups, categories, match):
    with pytest.raises(ConfigError, match=match):
        plot_grouped_bars(groups, categories, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
