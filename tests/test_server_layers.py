"""The embedded server's folder is layered as ``ktcluster/server/__init__.py`` says: every
import inside ``ktcluster.server`` (those inside functions and under ``TYPE_CHECKING``
too) goes to the module's own layer or an earlier one, no import circle is left, and
each module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import ktcluster.server

PACKAGE = "ktcluster.server"
ROOT = Path(ktcluster.server.__file__).parent

#: the layers, first to last (a module's layer is the first prefix it starts with)
LAYERS = [
    ["db."],
    ["config", "log"],
    ["state"],
    ["netio", "thserv", "session"],
    ["frontends.", "scripting."],
    ["server", "__main__"],
]


def _modules() -> dict[str, Path]:
    """Every module of the package, by its name relative to it (``db.storage``)."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """The ids of the nodes under ``if TYPE_CHECKING:`` (imports for annotations only)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return skipped


def _imports(name: str, path: Path, runtime: bool) -> set[str]:
    """The modules of the package that ``name`` imports (relative to the package); with
    ``runtime``, those under ``TYPE_CHECKING`` left out.  ``from . import x`` imports the
    module ``x`` (the enclosing packages are always imported first: no edge to them)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree) if runtime else set()
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(package):   # above ktcluster.server: not ours
                    continue
                base = package[:len(package) - (node.level - 1)]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith(PACKAGE + "."):
                target = node.module[len(PACKAGE) + 1:]
            else:
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}" if target else alias.name
                found.add(submodule if submodule in MODULES else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name[len(PACKAGE) + 1:] for alias in node.names
                         if alias.name.startswith(PACKAGE + "."))
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    return {target for target in found if target in MODULES and target != name and target not in ancestors}


#: every import (annotations included), and the ones run when the module is imported
GRAPH = {name: _imports(name, path, runtime=False) for name, path in MODULES.items()}
RUNTIME = {name: _imports(name, path, runtime=True) for name, path in MODULES.items()}


def _layer(name: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p) if p.endswith(".") else name == p for p in prefixes):
            return index
    if name in ("db", "frontends", "scripting"):   # the subpackages' __init__
        return {"db": 0, "frontends": 4, "scripting": 4}[name]
    raise AssertionError(f"{PACKAGE}.{name} is in no layer: add it to LAYERS and to the package docstring")


def test_the_import_graph_is_read():
    """The parser sees the imports that matter (or the tests below could not fail)."""
    assert "state" in GRAPH["frontends.rpc"] and "session" in GRAPH["frontends.rpc"]
    assert {"frontends.rpc", "frontends.rest", "frontends.binary", "state", "session"} <= GRAPH["server"]
    assert "scripting" in GRAPH["server"] and "frontends.slave" in GRAPH["server"]
    assert "db.storage" in GRAPH["state"] and "scripting.lib" in GRAPH["scripting.kt"]
    assert "db.stores" in GRAPH["db.cursors"] and "db.stores" not in RUNTIME["db.cursors"]
    assert "frontends.slave" in RUNTIME["server"]   # imported inside a method: counted


def test_every_module_is_in_a_layer_and_imports_no_later_one():
    wrong = [f"{name} ({_layer(name)}) imports {target} ({_layer(target)})"
             for name, targets in GRAPH.items() for target in targets if _layer(target) > _layer(name)]
    assert wrong == []


def test_no_front_end_imports_the_process():
    for name, targets in GRAPH.items():
        if name.startswith(("frontends", "scripting")):
            assert not targets & {"server", "__main__"}, name


def test_no_import_circle():
    """No circle among the imports a module runs (a cursor and its store name each
    other's types under ``TYPE_CHECKING``, which is no circle)."""
    circles = []
    state: dict[str, int] = {}   # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(RUNTIME[name]):
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(RUNTIME):
        if name not in state:
            visit(name, [name])
    assert circles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_module_imports_alone_in_a_fresh_interpreter(name):
    if name == "__main__":
        pytest.skip("runs the server when imported: test_server_cli runs it")
    result = subprocess.run([sys.executable, "-c", f"import {PACKAGE}.{name}"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
