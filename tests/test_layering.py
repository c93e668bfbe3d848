"""Imports point one way: policy <- infra <- mcp_server <- agent <- reconciler.

Also: only the store (`reconciler/store/`) imports SQLAlchemy or a database driver, and product code never
imports `fixtures` (bench/ and tests/ aside; the demo lives in `fixtures/demo.py` and `greenloop demo`
finds it through an entry point).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["policy", "infra", "mcp_server", "agent", "reconciler"]
DATABASE_LIBRARIES = {"sqlalchemy", "alembic", "aiosqlite", "asyncpg", "sqlite3"}
STORE = "reconciler/store/"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _product_files() -> list[tuple[str, Path]]:
    return [(p.relative_to(ROOT).as_posix(), p) for package in LAYERS for p in sorted((ROOT / package).rglob("*.py"))]


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    above = set(LAYERS[LAYERS.index(package) + 1 :])
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        bad = _imports(path) & (above | {"fixtures"})
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, offenders


def test_only_the_store_imports_sqlalchemy_or_a_database_driver() -> None:
    offenders = [
        f"{rel}: {sorted(bad)}"
        for rel, path in _product_files()
        if not rel.startswith(STORE) and (bad := _imports(path) & DATABASE_LIBRARIES)
    ]
    assert not offenders, offenders


def test_the_checks_see_what_they_forbid() -> None:
    """The scan finds real imports (a check that matches nothing could never fail)."""
    store = {rel: _imports(path) for rel, path in _product_files() if rel.startswith(STORE)}
    assert any("sqlalchemy" in found for found in store.values())
    assert "fixtures" in _imports(ROOT / "fixtures/demo.py")
