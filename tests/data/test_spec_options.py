"""Spec options shared by the generated data sets: one DataError naming the option at fault."""
import pytest

from dynamicnets.data.spec_options import int_option, split_options
from dynamicnets.errors import DataError


def test_split_options_lowercases_keys_and_strips_values():
    assert split_options("demo", " Length = 8 &&seed=1", ("length", "seed")) == {"length": "8", "seed": "1"}
    assert split_options("demo", "", ("length",)) == {}


@pytest.mark.parametrize("query, item", [("width=3", "width=3"), ("seed", "seed"), ("seed=1&x", "x")])
def test_split_options_names_the_bad_item_and_the_known_keys(query, item):
    with pytest.raises(DataError, match=f"demo option '{item}': expected KEY=VALUE with KEY in length, seed"):
        split_options("demo", query, ("length", "seed"))


def test_int_option_bounds():
    assert int_option("demo", "size", "5", 2) == 5
    assert int_option("demo", "size", "4", 2, 4) == 4
    with pytest.raises(DataError, match=r"demo option 'size=1': expected an integer >= 2"):
        int_option("demo", "size", "1", 2)
    with pytest.raises(DataError, match=r"demo option 'size=5': expected an integer in \[2, 4\]"):
        int_option("demo", "size", "5", 2, 4)
    with pytest.raises(DataError, match="demo option 'size=two'"):
        int_option("demo", "size", "two", 2)
