"""Import rules between the project's packages, read from the source with ``ast``.

Every import counts: module level, inside functions, and under ``if TYPE_CHECKING:`` (a
type-only import is still a dependency of the code's meaning, and is how cycles start).
Messages name each offending import as ``file:line: imported.name (scope)``.
"""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("kernel", "drivers", "buffer", "sync", "edge_agent", "trace_store")
"""The top-level packages whose dependencies must form a DAG."""

DRIVER_SHARED = (
    "drivers.registry",
    "drivers.base",
    "drivers.device",
    "drivers.bus",
    "drivers.probing",
    "drivers.runners",
)
"""What the core may import of ``drivers`` (with the other plain modules beside them)."""

NAMES_KINDS_ALLOWED = ("edge_agent/cli.py", "edge_agent/demo.py")
"""Modules of edge_agent facing the simulators, which may name a device kind."""


@dataclass(frozen=True)
class Import:
    file: str
    """Path of the importing file, relative to the repository."""
    line: int
    target: str
    """The dotted name imported; ``from m import n`` gives ``m.n`` (n may be an attribute)."""
    scope: str
    """``module``, ``function`` or ``type-checking``."""

    @property
    def package(self) -> str:
        return self.target.split(".")[0]

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: {self.target}"
        return where if self.scope == "module" else f"{where} ({self.scope})"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    def __init__(self, file: str, package: list[str]) -> None:
        self.file = file
        self.package = package  # the package relative imports start from
        self.scope = "module"
        self.found: list[Import] = []

    def _within(self, scope: str, nodes: Iterable[ast.AST]) -> None:
        """Visit ``nodes`` in ``scope``; the outermost scope wins (a function's import under
        ``if TYPE_CHECKING:`` is a function's)."""
        outer = self.scope
        if outer == "module":
            self.scope = scope
        for node in nodes:
            self.visit(node)
        self.scope = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._within("function", ast.iter_child_nodes(node))

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._within("function", ast.iter_child_nodes(node))

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self._within("function", ast.iter_child_nodes(node))

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._within("type-checking", node.body)
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append(Import(self.file, node.lineno, alias.name, self.scope))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package[: len(self.package) - (node.level - 1)]
            module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            module = node.module or ""
        for alias in node.names:
            target = module if alias.name == "*" else f"{module}.{alias.name}"
            self.found.append(Import(self.file, node.lineno, target, self.scope))


def scan_file(path: Path, root: Path) -> list[Import]:
    """Every import in one file."""
    module = module_name(path, root).split(".")
    package = module if path.name == "__init__.py" else module[:-1]
    visitor = _Imports(path.relative_to(root).as_posix(), package)
    visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return visitor.found


@cache
def project_imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found += scan_file(path, ROOT)
    return tuple(found)


def imports_in(*prefixes: str, exclude: Sequence[str] = ()) -> list[Import]:
    """Imports made by files under ``prefixes`` (paths relative to the repository)."""
    return [i for i in project_imports() if i.file.startswith(prefixes) and i.file not in exclude]


def of(imports: Iterable[Import], *targets: str) -> list[str]:
    """Those of ``imports`` that import a module under any of ``targets``."""
    return [
        str(i)
        for i in imports
        if any(i.target == t or i.target.startswith(f"{t}.") for t in targets)
    ]


def kind_packages() -> list[str]:
    """``drivers.<kind>``: every package under drivers/ (a kind is a folder)."""
    return sorted(f"drivers.{p.parent.name}" for p in (ROOT / "drivers").glob("*/__init__.py"))


def package_graph() -> dict[str, dict[str, list[Import]]]:
    """Top-level package -> package it imports -> the imports that make that edge."""
    graph: dict[str, dict[str, list[Import]]] = {p: {} for p in PACKAGES}
    for i in project_imports():
        source = i.file.split("/")[0]
        if i.package in PACKAGES and i.package != source:
            graph[source].setdefault(i.package, []).append(i)
    return graph


def find_cycle(graph: dict[str, dict[str, list[Import]]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None if the graph is acyclic."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, list[Import]]]) -> str:
    lines = [" -> ".join(cycle)]
    for a, b in itertools.pairwise(cycle):
        witnesses = graph[a][b]
        lines.append(f"  {a} -> {b}: " + "; ".join(str(i) for i in witnesses[:3]))
    return "\n".join(lines)


# ---- the scanner itself ----------------------------------------------------------------------


def test_the_scanner_sees_every_form_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(
        "from __future__ import annotations\n"
        "import os.path, json\n"
        "from typing import TYPE_CHECKING\n"
        "from drivers import modbus\n"
        "from . import sibling\n"
        "from ..top import thing\n"
        "if TYPE_CHECKING:\n"
        "    from edge_agent.config import BufferConfig\n"
        "else:\n"
        "    import sync\n"
        "def f() -> None:\n"
        "    from buffer.sqlite import SqliteBuffer\n"
        "    if TYPE_CHECKING:\n"
        "        import trace_store\n"
        "class C:\n"
        "    async def g(self) -> None:\n"
        "        import kernel.errors\n"
    )
    found = [(i.line, i.target, i.scope) for i in scan_file(pkg / "mod.py", tmp_path)]
    assert found == [
        (1, "__future__.annotations", "module"),
        (2, "os.path", "module"),
        (2, "json", "module"),
        (3, "typing.TYPE_CHECKING", "module"),
        (4, "drivers.modbus", "module"),
        (5, "pkg.sub.sibling", "module"),
        (6, "pkg.top.thing", "module"),
        (8, "edge_agent.config.BufferConfig", "type-checking"),
        (10, "sync", "module"),
        (12, "buffer.sqlite.SqliteBuffer", "function"),
        (14, "trace_store", "function"),
        (17, "kernel.errors", "function"),
    ]
    assert module_name(pkg / "__init__.py", tmp_path) == "pkg.sub"


def test_the_cycle_finder_finds_a_cycle_and_its_imports() -> None:
    made = Import("a/x.py", 3, "b.y", "function")
    graph: dict[str, dict[str, list[Import]]] = {
        "a": {"b": [made]},
        "b": {"c": [Import("b/y.py", 1, "c", "module")]},
        "c": {"a": [Import("c/z.py", 2, "a.x", "module")]},
        "d": {"a": [Import("d/w.py", 1, "a", "module")]},
    }
    cycle = find_cycle(graph)
    assert cycle == ["a", "b", "c", "a"]
    assert "a -> b: a/x.py:3: b.y (function)" in describe(cycle, graph)
    del graph["c"]["a"]
    assert find_cycle(graph) is None


def test_the_tree_is_scanned() -> None:
    # The rules below are only as good as the scan: it must see the core's known imports.
    graph = package_graph()
    assert "drivers" in graph["edge_agent"]
    assert "kernel" in graph["drivers"]
    assert "drivers.modbus" in kind_packages()


# ---- the rules -------------------------------------------------------------------------------


def test_kernel_imports_only_the_standard_library_and_pydantic() -> None:
    allowed = {"kernel", "pydantic", "pydantic_core"}
    offending = [
        str(i)
        for i in imports_in("kernel/")
        if i.package not in sys.stdlib_module_names and i.package not in allowed
    ]
    assert offending == []


def test_trace_store_imports_nothing_of_the_edge() -> None:
    assert of(imports_in("trace_store/"), "drivers", "buffer", "edge_agent") == []


def test_the_core_names_no_device_kind() -> None:
    """Nothing in edge_agent/ (but the simulator-facing CLI and demo) imports a kind's
    package, or spells a kind's ``type:`` name: it learns kinds from the registry."""
    from drivers import registry

    core = imports_in("edge_agent/", exclude=NAMES_KINDS_ALLOWED)
    assert of(core, *kind_packages()) == []
    assert of(core, *DRIVER_SHARED)  # it does use the shared modules: the scan sees them

    type_names = {k.type for k in registry.kinds()}
    assert "modbus_tcp" in type_names
    spelled = []
    for path in sorted((ROOT / "edge_agent").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in NAMES_KINDS_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in type_names:
                spelled.append(f"{rel}:{node.lineno}: {node.value!r}")
    assert spelled == []


@pytest.mark.parametrize("package", ["buffer", "sync"])
def test_buffer_and_sync_import_nothing_of_drivers_or_edge_agent(package: str) -> None:
    assert of(imports_in(f"{package}/"), "drivers", "edge_agent") == []


def test_drivers_import_nothing_of_edge_agent() -> None:
    assert of(imports_in("drivers/"), "edge_agent") == []


def test_no_import_cycle_between_top_level_packages() -> None:
    graph = package_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle:\n" + describe(cycle, graph)


def test_no_test_module_imports_another_test_module() -> None:
    """Shared helpers live in ``tests/*_helpers.py`` (and ``tests/waiting.py``), shared
    fixtures are loaded by ``tests/conftest.py``: importing a test module from another would
    collect its fixtures twice (a session fixture then runs once per importer) and couple
    files that change for different reasons."""
    offending = [
        str(i)
        for path in sorted((ROOT / "tests").glob("*.py"))
        for i in scan_file(path, ROOT)
        if i.target.startswith("tests.test_")
    ]
    assert offending == []
