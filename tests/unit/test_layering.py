"""The layering of docs/ARCHITECTURE.md, checked on the source: who may import whom."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_packages(path: Path) -> set[str]:
    """Top-level package names that a module imports (absolute imports only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def modules(package: str, exclude: str | None = None) -> list[Path]:
    found = sorted((ROOT / package).rglob("*.py"))
    return [p for p in found if exclude is None or exclude not in p.relative_to(ROOT).parts]


@pytest.mark.parametrize("package, forbidden", [("producer", "applier"), ("applier", "producer")])
def test_producer_and_applier_never_import_each_other(package: str, forbidden: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in modules(package) if forbidden in imported_packages(p)]
    assert offenders == [], f"{package} must not import {forbidden}: {offenders}"


def test_the_core_imports_neither_side() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in modules("funnel", exclude="cli")
                 if imported_packages(p) & {"producer", "applier"}]
    assert offenders == [], f"funnel/ outside cli/ must import neither producer nor applier: {offenders}"


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    # The rules above pass vacuously if the parser misses imports: prove it finds them.
    module = tmp_path / "m.py"
    module.write_text("import applier.applier\nfrom producer.capture import Capture\nfrom . import x\n")
    assert imported_packages(module) == {"applier", "producer"}


CLI_MAX_LINES = 250  # the CLI parses, calls the library and renders: more means library logic crept in


def test_no_cli_module_holds_library_logic_by_size() -> None:
    assert len(modules("funnel/cli")) > 10  # the rule must not pass vacuously
    too_long = {str(p.relative_to(ROOT)): n for p in modules("funnel/cli")
                if (n := len(p.read_text().splitlines())) > CLI_MAX_LINES}
    assert too_long == {}, f"CLI modules over {CLI_MAX_LINES} lines (move the logic into the library): {too_long}"


SOURCE_MAX_LINES = 600  # a module longer than this holds more than one concept: split it along its seams


def test_no_source_module_exceeds_the_size_of_one_concept() -> None:
    sources = [p for package in ("producer", "funnel", "applier", "schemas") for p in modules(package)]
    assert len(sources) > 50  # the rule must not pass vacuously
    too_long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > SOURCE_MAX_LINES}
    assert too_long == {}, f"source modules over {SOURCE_MAX_LINES} lines: {too_long}"
