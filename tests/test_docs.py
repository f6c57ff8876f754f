"""The API reference builds from the docstrings (`make docs`), and docstrings keep one style."""
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dynamicnets"


def _builder():
    spec = importlib.util.spec_from_file_location("build_api", ROOT / "docs" / "build_api.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_module_imports_and_gets_a_page():
    modules = _builder().public_modules()
    expected = {"dynamicnets", "dynamicnets.data.preprocessing", "dynamicnets.cli.main", "dynamicnets.configs"}
    assert expected <= set(modules)
    assert not [m for m in modules if "._" in m]
    for name in modules:
        importlib.import_module(name)


def test_api_reference_of_key_packages_builds(tmp_path):
    builder = _builder()
    wanted = [m for m in builder.public_modules() if m.startswith(("dynamicnets.data", "dynamicnets.configs",
                                                                   "dynamicnets.pipelines"))]
    pages = builder.build(tmp_path, wanted, search=False)
    names = {p.relative_to(tmp_path).as_posix() for p in pages}
    assert {"dynamicnets/data.html", "dynamicnets/data/preprocessing.html", "dynamicnets/configs.html",
            "dynamicnets/pipelines/evaluate.html"} <= names
    specs = (tmp_path / "dynamicnets" / "data" / "specs.html").read_text()
    assert 'id="load_data"' in specs
    # Google sections are recognised (rendered as headed sections, not as plain text).
    assert re.search(r"<h6[^>]*>Raises:?</h6>", specs) and re.search(r"<h6[^>]*>Returns:?</h6>", specs)
    assert "<strong>DataError:</strong>" in specs


@pytest.mark.slow
def test_whole_api_reference_builds(tmp_path):
    pages = _builder().build(tmp_path)
    assert (tmp_path / "index.html").is_file() and (tmp_path / "search.js").is_file()
    assert len(pages) >= 100


def _python_files():
    """Every module of the package: its docstrings are Google style throughout."""
    return sorted(SRC.rglob("*.py"))


def test_docstrings_use_google_sections():
    old_style = r"\*\*(Arguments|Args|Returns|Raises|Fields|Attributes|Shapes):\*\*|^\s*Arguments:\s*$"
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _python_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(old_style, line)]
    assert not offenders, "use Args:/Returns:/Raises:/Attributes:/Shapes: in " + ", ".join(offenders)


def test_no_reference_to_files_outside_the_repository():
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _python_files()
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(r"DESIGN|SURVEY|\.\./shared", line)]
    for doc in ("README.md", "BENCHMARKS.md"):
        offenders += [f"{doc}:{i}" for i, line in enumerate((ROOT / doc).read_text().splitlines(), 1)
                      if re.search(r"DESIGN\.md|SURVEY\.md", line)]
    assert not offenders, offenders


def test_code_and_docs_name_no_tracker_issues():
    pattern = re.compile(r"\bissues? ?#?\d+\b|\(issue:", re.IGNORECASE)
    files = (list(_python_files()) + sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "configs").glob("*.yaml"))
             + [ROOT / "README.md", ROOT / "BENCHMARKS.md"])
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in files
                 for i, line in enumerate(p.read_text().splitlines(), 1)
                 if pattern.search(line) and "github.com" not in line]
    assert not offenders, offenders
