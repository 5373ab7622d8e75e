"""The pure core imports no infrastructure, and the package exports what it says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import rayworker

PACKAGE = Path(rayworker.__file__).parent
CORE = [
    PACKAGE / "events.py",
    PACKAGE / "windows.py",
    PACKAGE / "detect.py",
    PACKAGE / "alerts.py",
    PACKAGE / "clock.py",
    PACKAGE / "routing.py",
    PACKAGE / "partition.py",
    PACKAGE / "shard_plan.py",
    PACKAGE / "integrity.py",
    PACKAGE / "health.py",
    PACKAGE / "backtest.py",
    PACKAGE / "backtest_points.py",
    PACKAGE / "backtest_vector.py",
    PACKAGE / "backtest_suggest.py",
    PACKAGE / "checkpoint.py",
    PACKAGE / "columnar.py",
    PACKAGE / "packed_vocab.py",
    PACKAGE / "known_values.py",
    PACKAGE / "resilience.py",
    *sorted((PACKAGE / "rules").glob("*.py")),
]
FORBIDDEN = {"ray", "redis", "asyncpg"}


def imported_roots(path: Path) -> set[str]:
    """Top-level module names a file imports."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.name)
def test_core_imports_no_infrastructure(path: Path) -> None:
    """No core module imports ray, redis or asyncpg."""
    assert imported_roots(path) & FORBIDDEN == set()


def test_public_api_is_explicit() -> None:
    """Every name in rayworker.__all__ exists, and every public attribute is listed."""
    for name in rayworker.__all__:
        assert hasattr(rayworker, name), name
    public = {n for n in vars(rayworker) if not n.startswith("_")}
    modules = {n for n in public if type(getattr(rayworker, n)).__name__ == "module"}
    listed = {n for n in rayworker.__all__ if not n.startswith("_")}
    assert public - modules - {"annotations"} == listed
