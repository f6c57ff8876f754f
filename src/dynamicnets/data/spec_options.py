"""Options of a generated data set's spec, the ``KEY=VALUE&...`` after its ``?``
(``jump_task?length=64&vocab=16``, ``cluttered_mnist?canvas=60&variant=cluttered``).

- `split_options(dataset, query, keys)`: the query as a ``{key: text}`` dict, each key
  known and given once with a value;
- `int_option(dataset, key, text, minimum, maximum)`: one value as an int within bounds.

Both raise one `DataError` naming the data set and the option at fault.
"""
from __future__ import annotations

from collections.abc import Sequence

from ..errors import DataError


def split_options(dataset: str, query: str, keys: Sequence[str]) -> dict[str, str]:
    """``key=value&key=value`` -> ``{key: value}`` (keys lower-cased, both sides stripped).

    Args:
        dataset: the data set's name, for errors.
        query: the text after the spec's ``?`` (may be empty).
        keys: the keys the data set knows.

    Returns:
        the given options, as text.

    Raises:
        DataError: an item without ``=`` or with an unknown key, naming it and the known keys.
    """
    values: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key not in keys or not eq:
            raise DataError(f"{dataset} option '{item}': expected KEY=VALUE with KEY in {', '.join(keys)}")
        values[key] = value.strip()
    return values


def int_option(dataset: str, key: str, text: str, minimum: int, maximum: int | None = None) -> int:
    """`text` as an int in ``[minimum, maximum]`` (no upper bound when `maximum` is None).

    Raises:
        DataError: not an integer or out of bounds, naming ``key=text`` and the bounds.
    """
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise DataError(f"{dataset} option '{key}={text}': expected an integer {bound}")
    return value
