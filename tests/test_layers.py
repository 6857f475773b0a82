"""Imports go one way: shared ← agent, shared ← coordinator; agent and coordinator never
import each other; only the ``mosaic`` command composes them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "shared": {"agent", "coordinator", "mosaic"},
    "agent": {"coordinator", "mosaic"},
    "coordinator": {"agent", "mosaic"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_go_one_way(package: str) -> None:
    bad = {
        f"{p.relative_to(ROOT)} imports {m}"
        for p in (ROOT / package).rglob("*.py")
        for m in _imports(p) & FORBIDDEN[package]
    }
    assert not bad
