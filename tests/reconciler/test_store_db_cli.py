"""`greenloop db upgrade` (reconciler.db_cli.db_upgrade): what it prints and the exit codes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from reconciler.db_cli import db_upgrade, default_database_url
from reconciler.store.migrate import head_revision


def _revision(path: Path) -> str:
    with sqlite3.connect(path) as raw:
        row = raw.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0])


def test_db_upgrade_migrates_then_reports_nothing_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"

    assert db_upgrade(url) == 0
    first = capsys.readouterr().out
    assert db_upgrade(url) == 0
    second = capsys.readouterr().out

    assert f"upgraded from an empty schema to revision {head_revision()}" in first
    assert f"already at revision {head_revision()}" in second
    assert _revision(tmp_path / "g.db") == head_revision()


def test_db_upgrade_defaults_to_greenloop_db_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)

    assert default_database_url() == f"sqlite+aiosqlite:///{tmp_path / 'greenloop.db'}"
    assert db_upgrade(None) == 0
    assert _revision(tmp_path / "greenloop.db") == head_revision()
    assert str(tmp_path / "greenloop.db") in capsys.readouterr().out


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("nonsense", id="garbage"),
        pytest.param("mysql://root:s3cret@db/app", id="unsupported"),
        pytest.param("sqlite:////definitely/not/here/g.db", id="missing-directory"),
    ],
)
def test_db_upgrade_with_an_unusable_url_prints_one_line_and_exits_2(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert db_upgrade(url) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("greenloop: Database URL invalid: ")
    assert "s3cret" not in captured.err


def test_db_upgrade_of_an_unreachable_database_exits_1_without_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert db_upgrade("postgresql+asyncpg://greenloop:hunter2@127.0.0.1:1/none") == 1
    err = capsys.readouterr().err
    assert err.startswith("greenloop: Store error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and "hunter2" not in err
