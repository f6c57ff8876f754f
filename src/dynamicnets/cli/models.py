"""`dynamicnets models [PATTERN] [--family F] [--names]`: the registered models, one per row.

Columns: name, family, input (the default per-sample input shape), params, FLOPs (one
sample of that input through the eval forward; see `dynamicnets.models.model_info`)
and the one-line description.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from ..profiling.report import format_flops

DESCRIPTION_WIDTH = 72


def _shorten(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


def models_table(names: list[str]) -> list[str]:
    """The table lines (header, rule, one row per model) for the registered `names`."""
    from ..models import model_info

    header = ("name", "family", "input", "params", "FLOPs", "description")
    rows = []
    for name in names:
        info = model_info(name)
        shape = "x".join(str(s) for s in info.default_input_shape)
        rows.append((name, info.family, shape, format_flops(info.params), format_flops(info.flops),
                     _shorten(info.description)))
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    right = {3, 4}  # numbers

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def run_models(args: argparse.Namespace) -> int:
    """List the registered models matching `args.pattern` and `args.family`."""
    from ..models import FAMILIES, list_families, list_models

    known = sorted(set(FAMILIES) | set(list_families()))
    if args.family is not None and args.family not in known:
        raise ConfigError(f"--family: unknown family {args.family!r}; families: {', '.join(known)}")
    names = list_models(args.pattern, family=args.family)
    if not names:
        print(f"no registered model matches {args.pattern!r}"
              + (f" in family {args.family!r}" if args.family else ""), file=sys.stderr)
        return 0
    if args.names:
        print("\n".join(names))
        return 0
    print("\n".join(models_table(names)))
    print("\nparams: every parameter. FLOPs: one sample of the input through the eval forward "
          "(2 per multiply-add); for a dynamic model, what that one (zero) sample executed.")
    return 0
