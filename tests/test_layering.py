"""Imports point one way: policy <- mcp_server <- agent <- reconciler; product code never imports fixtures."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["policy", "mcp_server", "agent", "reconciler"]
# The demo is the one product module that drives the local forge and the fixture projects.
FIXTURE_USERS = {"reconciler/demo.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    above = set(LAYERS[LAYERS.index(package) + 1 :])
    offenders = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        bad = _imports(path) & (above | ({"fixtures"} if rel not in FIXTURE_USERS else set()))
        if bad:
            offenders.append(f"{rel}: {sorted(bad)}")
    assert not offenders, offenders
