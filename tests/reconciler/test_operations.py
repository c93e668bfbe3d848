"""Operator actions: one implementation (`reconciler.operations`) behind the HTTP API and the command line.

The API's side is tested in test_api.py; here the `greenloop attempts cancel` and `greenloop projects ...`
commands reach the same store state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from policy.types import AttemptStatus
from reconciler.cli import main
from reconciler.store import attempts as attempt_store
from reconciler.store import projects as project_store
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.models import Attempt, Project

_T = TypeVar("_T")


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ops.db'}"
    path = tmp_path / "greenloop.toml"
    path.write_text(
        f'[server]\ndatabase_url = "{url}"\n\n'
        '[[project]]\nname = "alpha"\nrepo = "acme/alpha"\n\n'
        '[[project]]\nname = "beta"\nrepo = "acme/beta"\n',
        encoding="utf-8",
    )
    return path, url


def _with_store(url: str, use: Callable[[SessionFactory], Awaitable[_T]]) -> _T:
    async def run() -> _T:
        engine = make_engine(url)
        try:
            return await use(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _project(url: str, name: str) -> Project | None:
    return _with_store(url, lambda sessions: project_store.get_project(sessions, name))


def _attempt(url: str, attempt_id: str) -> Attempt | None:
    return _with_store(url, lambda sessions: attempt_store.get_attempt(sessions, attempt_id))


def _start(url: str) -> str:
    outcome = _with_store(
        url,
        lambda sessions: attempt_store.start_attempt(
            sessions, project="beta", job="test", fingerprint="fp", run_id="1", head_sha="a" * 40
        ),
    )
    assert outcome.attempt_id is not None
    return outcome.attempt_id


def test_project_pause_resume_and_reset_from_the_command_line(
    config: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, url = config
    assert main(["--config", str(path), "projects", "pause", "acme/alpha"]) == 0
    row = _project(url, "alpha")
    assert row is not None and row.paused and row.escalation_reset_at is None
    assert "alpha" in capsys.readouterr().out

    assert main(["--config", str(path), "projects", "reset", "alpha"]) == 0
    assert main(["--config", str(path), "projects", "resume", "alpha"]) == 0
    row = _project(url, "alpha")
    assert row is not None and not row.paused and row.escalation_reset_at is not None

    capsys.readouterr()
    assert main(["--config", str(path), "projects", "pause", "ghost"]) == 2  # unknown: exit 2
    assert "Unknown project: 'ghost'" in capsys.readouterr().err


def test_attempt_cancel_from_the_command_line(config: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, url = config
    assert main(["--config", str(path), "projects", "pause", "beta"]) == 0  # creates the store and its rows
    attempt_id = _start(url)

    assert main(["--config", str(path), "attempts", "cancel", attempt_id, "--reason", "by hand"]) == 0
    assert f"attempt {attempt_id} (beta): cancelled" in capsys.readouterr().out
    attempt = _attempt(url, attempt_id)
    assert attempt is not None and attempt.status == AttemptStatus.CANCELLED.value
    assert attempt.stop_reason == "cancelled"

    assert main(["--config", str(path), "attempts", "cancel", attempt_id]) == 1  # already finished: a conflict
    assert "already finished" in capsys.readouterr().err
    assert main(["--config", str(path), "attempts", "cancel", "no-such"]) == 2  # unknown: exit 2
