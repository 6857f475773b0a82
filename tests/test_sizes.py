"""Small modules, small functions: past ~500 lines a module holds more than one thing,
past ~80 lines a function does more than one job. Split by what it holds."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shared", "engine", "agent", "coordinator", "mosaic")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def long_functions(path: Path, root: Path = ROOT) -> list[str]:
    return [
        f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (n := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES
    ]


def test_no_module_over_500_lines() -> None:
    big = [
        f"{p.relative_to(ROOT)} ({n} lines)"
        for p in sources()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert big == []


def test_no_function_over_80_lines() -> None:
    assert [f for p in sources() for f in long_functions(p)] == []


def test_the_function_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    sample = tmp_path / "sample.py"
    sample.write_text(f"def f():\n{body}\n")
    assert long_functions(sample, tmp_path) == ["sample.py:1 f (81 lines)"]
