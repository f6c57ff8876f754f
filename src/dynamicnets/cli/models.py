"""`dynamicnets models [PATTERN] [--family F] [--names] [--pretrained]`: the registered
models, one per row.

Columns: name, family, input (the default per-sample input shape), params, FLOPs (one
sample of that input through the eval forward; see `dynamicnets.models.model_info`)
and the one-line description. With `--pretrained`: the shipped weights instead, one per
row (model, tag, validation accuracy, params, FLOPs, CPU hours), read from their table
without building any model.
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
    return _aligned(header, rows, right={3, 4})  # numbers


def pretrained_table(names: list[str]) -> list[str]:
    """The table lines (header, rule, one row per shipped weight) of the models `names`."""
    from ..models.pretrained import list_pretrained

    rows = [(w.model, w.tag + (" (default)" if w.default else ""), f"{100 * w.val_accuracy:.2f}%",
             format_flops(w.params), format_flops(w.flops), "" if w.cpu_hours is None else f"{w.cpu_hours:.2f}",
             w.config) for w in list_pretrained() if w.model in names]
    header = ("model", "tag", "val acc", "params", "FLOPs", "CPU h", "config")
    return _aligned(header, rows, right={2, 3, 4, 5})


def _aligned(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def run_models(args: argparse.Namespace) -> int:
    """List the registered models (or, with `args.pretrained`, their shipped weights)
    matching `args.pattern` and `args.family`."""
    from ..models import FAMILIES, list_families, list_models

    known = sorted(set(FAMILIES) | set(list_families()))
    if args.family is not None and args.family not in known:
        raise ConfigError(f"--family: unknown family {args.family!r}; families: {', '.join(known)}")
    names = list_models(args.pattern, family=args.family)
    if getattr(args, "pretrained", False):
        lines = pretrained_table(names)
        if len(lines) == 2:
            print(f"no shipped pretrained weights for models matching {args.pattern!r}"
                  + (f" in family {args.family!r}" if args.family else ""), file=sys.stderr)
            return 0
        print("\n".join(lines))
        print("\nval acc: top-1 on the seeded validation split of the training data (see each model card). "
              "FLOPs: one sample through the whole network. CPU h: training cost in CPU-core hours. "
              "Load with create_model(NAME, pretrained=TAG).")
        return 0
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
