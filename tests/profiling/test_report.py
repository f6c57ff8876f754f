import datetime
import io
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamicnets.errors import ConfigError
from dynamicnets.profiling import (
    Measurement,
    format_flops,
    markdown_table,
    parse_flops,
    print_table,
    run_metadata,
    write_json,
)


def test_write_json_is_atomic_and_carries_metadata(tmp_path):
    target = tmp_path / "results" / "bench.json"
    records = [
        {"name": "static", "ms": np.float64(1.5), "flops": torch.tensor(3.0e6)},
        {"name": "dynamic", "measurement": Measurement(2.0, 0.1, 2.1, 5, 1, "dyn"), "shape": (2, 3)},
    ]
    returned = write_json(target, records, meta={"threads": 1, "command": "bench width"})
    assert returned == target
    assert [p.name for p in target.parent.iterdir()] == ["bench.json"]  # no temp leftovers

    data = json.loads(target.read_text())
    meta = data["meta"]
    assert meta["torch_version"] == torch.__version__
    assert meta["threads"] == 1  # caller's meta wins over the current thread count
    assert meta["command"] == "bench width"
    assert isinstance(meta["cpu_model"], str) and meta["cpu_model"]
    assert datetime.datetime.fromisoformat(meta["date"]).tzinfo is not None
    assert data["records"][0] == {"name": "static", "ms": 1.5, "flops": 3.0e6}
    assert data["records"][1]["measurement"]["median_ms"] == 2.0
    assert data["records"][1]["shape"] == [2, 3]


def test_write_json_overwrites_and_failure_keeps_old_file(tmp_path):
    target = tmp_path / "r.json"
    write_json(target, {"value": 1})
    write_json(target, {"value": 2})
    assert json.loads(target.read_text())["records"] == {"value": 2}

    with pytest.raises(ConfigError, match="r.json"):
        write_json(target, {"value": object()})
    assert json.loads(target.read_text())["records"] == {"value": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]

    with pytest.raises(ConfigError, match="list of dicts or a dict"):
        write_json(target, "oops")


def test_run_metadata_keys():
    meta = run_metadata()
    assert {"date", "torch_version", "python_version", "cpu_model", "threads"} <= set(meta)
    assert meta["threads"] == torch.get_num_threads()


def test_markdown_table_format():
    rows = [
        {"model": "resnet20", "flops": format_flops(81.3e6), "ms": 1.23456, "batch": 64},
        {"model": "a|b", "ms": 10.0, "batch": 8},
    ]
    expected = (
        "| model    | flops |    ms | batch |\n"
        "| -------- | ----- | ----: | ----: |\n"
        "| resnet20 | 81.3M | 1.235 |    64 |\n"
        "| a\\|b     |       |    10 |     8 |"
    )
    assert markdown_table(rows) == expected


def test_markdown_table_columns_and_floatfmt():
    rows = [{"a": 1.0, "b": 0.123456, "c": "x"}]
    table = markdown_table(rows, columns=["c", "b"], floatfmt={"b": ".2f"})
    assert table.splitlines() == ["| c   |    b |", "| --- | ---: |", "| x   | 0.12 |"]
    assert markdown_table([], columns=["a"]).splitlines() == ["| a   |", "| --- |"]
    with pytest.raises(ConfigError, match="floatfmt"):
        markdown_table(rows, floatfmt="%d")
    with pytest.raises(ConfigError, match="no columns"):
        markdown_table([])


def test_print_table_aligns_columns():
    out = io.StringIO()
    print_table([{"name": "a|b", "ms": 1.5}, {"name": "long name", "ms": 12.25}], file=out)
    assert out.getvalue().splitlines() == [
        "name          ms",
        "---------  -----",
        "a|b          1.5",
        "long name  12.25",
    ]


@pytest.mark.parametrize(
    "flops, text",
    [(0, "0"), (512, "512"), (1500, "1.5K"), (30e6, "30M"), (81.3e6, "81.3M"),
     (999.96e6, "1G"), (1.2e9, "1.2G"), (4.1e12, "4.1T")],
)
def test_format_flops(flops, text):
    assert format_flops(flops) == text
    assert parse_flops(text) == pytest.approx(flops, rel=5e-3)


@pytest.mark.parametrize(
    "text, value",
    [("30M", 30e6), ("1.2G", 1.2e9), ("5e6", 5e6), ("500k", 5e5), ("30 MFLOPs", 30e6),
     (" 2.5g ", 2.5e9), (".5M", 5e5), ("1e3K", 1e6), ("123", 123.0), (7, 7.0), (2.5e6, 2.5e6)],
)
def test_parse_flops_accepted_forms(text, value):
    assert parse_flops(text) == pytest.approx(value)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=1.0, max_value=1e17, allow_nan=False, allow_infinity=False))
def test_format_parse_round_trip(flops):
    text = format_flops(flops)
    assert parse_flops(text) == pytest.approx(flops, rel=5.01e-3)  # 3 significant figures
    assert format_flops(parse_flops(text)) == text


@pytest.mark.parametrize("bad", ["", "abc", "30X", "-5M", "1.2.3G", "M", "inf", True, None, float("nan"), -1.0])
def test_parse_flops_error_names_accepted_forms(bad):
    with pytest.raises(ConfigError) as info:
        parse_flops(bad, what="--budget")
    message = str(info.value)
    assert message.startswith("--budget")
    assert "30M" in message and "1.2G" in message and "5e6" in message


def test_format_flops_rejects_non_finite():
    with pytest.raises(ConfigError, match="finite"):
        format_flops(float("inf"))
