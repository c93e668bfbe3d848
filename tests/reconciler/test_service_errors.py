"""`greenloop reconcile` and `greenloop run` report a database problem as ONE line on stderr, no traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "greenloop.example.toml"


def _greenloop(database_url: str, *argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(cwd),
        "GREENLOOP_SERVER__DATABASE_URL": database_url,
        "GREENLOOP_SERVER__API_TOKEN": "t" * 24,
        "GREENLOOP_SERVER__HTTP_PORT": "1",  # never reached: the store fails first
        "ANTHROPIC_API_KEY": "sk-test-not-used",
    }
    return subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "--config", str(CONFIG), *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("greenloop: Store error: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["reconcile", "--dry-run"], ["run"]])
def test_an_unreachable_postgresql_is_one_line(command: list[str], tmp_path: Path) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    result = _greenloop("postgresql+asyncpg://greenloop:hunter2@127.0.0.1:1/none", *command, cwd=tmp_path)
    _assert_one_line(result, "ConnectionRefusedError", "127.0.0.1:1")
    assert "hunter2" not in result.stderr


@pytest.fixture
def locked_sqlite(tmp_path: Path) -> Iterator[Path]:
    """An SQLite file another connection holds an exclusive lock on for the whole test."""
    path = tmp_path / "locked.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE squatter (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        yield path
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_locked_sqlite_is_one_line(locked_sqlite: Path, tmp_path: Path) -> None:
    result = _greenloop(f"sqlite+aiosqlite:///{locked_sqlite}", "reconcile", "--dry-run", cwd=tmp_path)
    _assert_one_line(result, "locked")


def test_an_unwritable_sqlite_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "not-a-file.db").mkdir()  # a directory where the database file should be: cannot be opened
    result = _greenloop(f"sqlite+aiosqlite:///{tmp_path / 'not-a-file.db'}", "run", cwd=tmp_path)
    _assert_one_line(result, "unable to open database file")
