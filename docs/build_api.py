"""Build the API reference of `dynamicnets` from its docstrings with pdoc.

`make docs` runs `python docs/build_api.py build/docs`; open `build/docs/index.html`.
Every public module (no part of its dotted name starts with `_`) gets a page; docstrings
are read as Google style (`Args:`, `Returns:`, `Raises:`, `Attributes:`).
"""
from __future__ import annotations

import argparse
import pkgutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

PACKAGE = "dynamicnets"


def public_modules(package: str = PACKAGE) -> list[str]:
    """Dotted names of the package and every public module below it, sorted."""
    root = __import__(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(root.__path__, f"{package}.")]
    return sorted(n for n in names if not any(part.startswith("_") for part in n.split(".")))


def build(output_dir: str | Path, modules: Sequence[str] | None = None, *, search: bool = True) -> list[Path]:
    """Write the HTML pages of `modules` (default: every public module) to `output_dir`.

    Args:
        output_dir: folder for the pages; created when missing.
        modules: dotted module names; each also documents the public submodules it lists.
        search: also write the search index (`search.js`; the slowest part).

    Returns:
        The HTML files written, sorted.
    """
    import pdoc
    import pdoc.render

    out = Path(output_dir)
    pdoc.render.configure(docformat="google", search=search, show_source=False,
                          footer_text=f"{PACKAGE} API reference")
    with warnings.catch_warnings():
        # Several specs reach the same submodule (a package and its module both listed): one page each.
        warnings.filterwarnings("ignore", message=".*has already been added.*")
        pdoc.pdoc(*(modules or public_modules()), output_directory=out)
    return sorted(out.rglob("*.html"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", nargs="?", default="build/docs", help="where the pages go")
    args = parser.parse_args(argv)
    pages = build(args.output_dir)
    print(f"wrote {len(pages)} pages to {args.output_dir} (open {Path(args.output_dir) / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
