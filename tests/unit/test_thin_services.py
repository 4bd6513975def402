"""Services are thin wiring (issue 12): no function or method in services/ is longer than MAX_LINES
lines of body (its docstring not counted). Protocol logic that grows belongs in the sans-I/O library
(hfl/round, hfl/secagg, hfl/deadline.py, ...), where it is tested in memory."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[2] / "services"
MAX_LINES = 40


def body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    first = body[0]
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        body = body[1:]
    if not body:
        return 0
    return (body[-1].end_lineno or body[-1].lineno) - body[0].lineno + 1


def functions() -> list[tuple[str, int]]:
    out = []
    for path in sorted(SERVICES.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append(
                    (f"{path.relative_to(SERVICES.parent)}:{node.lineno} {node.name}", body_lines(node))
                )
    return out


def test_no_function_in_services_is_longer_than_40_lines() -> None:
    found = functions()
    assert len(found) > 200  # the walk really sees the services
    long = [f"{name} ({n} lines)" for name, n in found if n > MAX_LINES]
    assert long == [], "split these into named steps or move their logic into hfl/: " + ", ".join(long)


def test_the_measure_counts_a_long_body_and_skips_the_docstring() -> None:
    src = 'def f():\n    """doc\n    more"""\n' + "".join(f"    x{i} = {i}\n" for i in range(41))
    fn = ast.parse(src).body[0]
    assert isinstance(fn, ast.FunctionDef)
    assert body_lines(fn) == 41
