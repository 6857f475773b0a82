"""Imports go one way, and nothing imports itself back.

    shared  ←  engine  ←  agent  ←  mosaic
       ↖──────────────  coordinator  ←──┘

``shared`` is what both roles import (vocabulary, wire types, configs, the bus);
``engine`` is the data path, used by the agent and the host-local repo tools only; the
coordinator never reads backup data, so it never imports the engine; agent and
coordinator never import each other; only the ``mosaic`` command composes them.

Every import counts: at module level, inside functions, under ``TYPE_CHECKING``, and
``importlib.import_module`` with a literal name or prefix (mosaic.cli loads the chosen
command so: an edge to every module the prefix can name).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "engine", "agent", "coordinator", "mosaic")
FORBIDDEN = {
    "shared": {"engine", "agent", "coordinator", "mosaic"},
    "engine": {"agent", "coordinator", "mosaic"},
    "agent": {"coordinator", "mosaic"},
    "coordinator": {"engine", "agent", "mosaic"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, known: dict[str, Path]) -> Iterator[str]:
    """Every module of ours that ``path`` names in an import statement, resolved the way
    Python resolves it (``from a import b`` is module ``a.b`` when that is a module)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in known else base
        elif isinstance(node, ast.Call) and _called(node) == "import_module" and node.args:
            prefix = _literal_prefix(node.args[0])
            yield from (m for m in known if prefix and m.startswith(prefix))


def _called(node: ast.Call) -> str:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _literal_prefix(arg: ast.expr) -> str:
    """``"a.b"`` → ``a.b``; ``f"a.b.{x}"`` → ``a.b.`` (the part known before running)."""
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values:
        first = arg.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return ""


def graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {m for m in imported(path, known) if m in known and m != name}
        for name, path in known.items()
    }


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    bad = sorted(
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in FORBIDDEN[package]
    )
    assert not bad


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    assert cycles(graph()) == []


def test_resolver_sees_our_modules() -> None:
    """The graph the layer tests rely on resolves ``from a import b`` to module a.b, and
    sees the commands mosaic.cli loads by name."""
    known = modules()
    edges = graph()
    assert "engine.storage.open" in known
    assert "engine.storage.base" in edges["engine.storage.open"]
    assert "mosaic.commands.status" in edges["mosaic.cli"]
