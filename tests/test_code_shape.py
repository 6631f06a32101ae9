"""Size limits that keep the code readable: no fastrobust module over 500 lines, no function over
80 lines outside the Triton kernels (a kernel body is one launch and reads best whole)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_LINES = 500
FUNCTION_LINES = 80


def long_functions(path: Path, limit: int, root: Path = ROOT) -> list[str]:
    """``file:line name (N lines)`` for every function or method of ``path`` longer than ``limit``
    lines, decorators excluded, docstring and body included."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > limit:
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_fastrobust_module_is_over_500_lines() -> None:
    long = []
    for path in sorted((ROOT / "fastrobust").rglob("*.py")):
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)} ({n} lines)")
    assert not long, f"modules over {MODULE_LINES} lines (split by responsibility): {long}"


def test_no_function_outside_kernels_is_over_80_lines() -> None:
    long = []
    for folder in ("fastrobust", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            long += long_functions(path, FUNCTION_LINES)
    assert not long, f"functions over {FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_length_check_sees_a_long_method(tmp_path: Path) -> None:
    body = "".join(f"        x{i} = {i}\n" for i in range(FUNCTION_LINES))
    path = tmp_path / "probe.py"
    path.write_text(f"class A:\n    def f(self):\n{body}\n\ndef g():\n    return 1\n")
    expected = [f"probe.py:2 f ({FUNCTION_LINES + 1} lines)"]
    assert long_functions(path, FUNCTION_LINES, root=tmp_path) == expected
    assert long_functions(path, FUNCTION_LINES + 1, root=tmp_path) == []
