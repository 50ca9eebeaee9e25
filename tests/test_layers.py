"""The module map of docs/architecture.rst holds for the code: every module in one layer, imports only go
down (imports inside functions count), no import cycle, no module over 800 lines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.harness import ROOT

MAX_LINES = 800
PACKAGE = ROOT / "dsat"


def modules() -> dict[str, Path]:
    """Every module of dsat by its dotted name (a package by its own name, for its __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The dsat modules *name* imports, anywhere in it (functions and TYPE_CHECKING blocks included)."""
    out = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: None if is_package else -1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, *([base] if base else [])])
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                out.add(target)
    return out


def module_map() -> list[set[str]]:
    """The layers of the module map, top first: the module names in the Modules column of each row."""
    text = (ROOT / "docs" / "architecture.rst").read_text()
    table = text.split(".. _module-map:", 1)[1].split(".. list-table::", 1)[1]
    rows = re.split(r"^   \* - ", table, flags=re.M)[2:]  # [0] is the options, [1] the header row
    layers = []
    for row in rows:
        cells = re.split(r"^     - ", row, flags=re.M)
        if len(cells) < 3:
            break
        named = re.sub(r"\([^)]*\)", "", cells[1])  # a package's row lists its modules in brackets
        layers.append({f"dsat.{word}" for word in re.findall(r"``([\w.]+)``", named)})
    return layers


def layer_of(name: str, layers: list[set[str]]) -> int:
    """The index of *name*'s layer: its own row, or the row of the package it is in."""
    for index, layer in enumerate(layers):
        if any(name == entry or name.startswith(entry + ".") for entry in layer):
            return index
    raise LookupError(name)


def test_the_module_map_places_every_module_once() -> None:
    layers = module_map()
    assert len(layers) == 7, layers
    listed = [entry for layer in layers for entry in layer]
    assert len(listed) == len(set(listed)), "a module in two layers"
    missing = sorted(name for name in modules() if name != "dsat" and not _placed(name, layers))
    assert not missing, f"modules missing from the module map of docs/architecture.rst: {missing}"
    gone = sorted(entry for entry in listed if entry not in modules())
    assert not gone, f"the module map names modules that do not exist: {gone}"


def _placed(name: str, layers: list[set[str]]) -> bool:
    try:
        layer_of(name, layers)
    except LookupError:
        return False
    return True


def test_imports_only_go_down_the_layers() -> None:
    layers, found = module_map(), modules()
    upward = []
    for name, path in found.items():
        if name == "dsat":
            continue
        for target in imports(name, path, set(found)):
            if target != "dsat" and layer_of(target, layers) > layer_of(name, layers):
                upward.append(f"{name} (layer {layer_of(name, layers) + 1}) imports {target}")
    assert not upward, "\n".join(sorted(upward))


def test_there_is_no_import_cycle() -> None:
    found = modules()
    edges = {name: imports(name, path, set(found)) for name, path in found.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for target in sorted(edges[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(edges):
        visit(name, [])


def test_no_module_is_longer_than_the_bound() -> None:
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checks_catch_what_they_look_for() -> None:
    """The map parser finds the layers the page names, and the import reader sees an import in a function."""
    layers = module_map()
    assert layer_of("dsat.errors", layers) == 0 and layer_of("dsat.tools.cli", layers) == 6
    assert layer_of("dsat.topology.preflight", layers) == 2
    source = PACKAGE / "process.py"
    assert "dsat.orchester" in imports("dsat.process", source, set(modules()))
