"""Operator actions: one implementation (`reconciler.operations`) behind the HTTP API and the command line.

The API's side is tested in test_api.py; here the `greenloop attempt cancel` and `greenloop project ...`
commands reach the same store state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from policy.types import AttemptStatus
from reconciler.cli import main
from reconciler.store import attempts as attempt_store
from reconciler.store import projects as project_store
from reconciler.store.engine import make_engine, make_sessionmaker
from reconciler.store.models import Attempt, Project


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


def _project(url: str, name: str) -> Project | None:
    async def read() -> Project | None:
        engine = make_engine(url)
        try:
            return await project_store.get_project(make_sessionmaker(engine), name)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _start(url: str) -> str:
    async def start() -> str:
        engine = make_engine(url)
        try:
            outcome = await attempt_store.start_attempt(
                make_sessionmaker(engine), project="beta", job="test", fingerprint="fp", run_id="1", head_sha="a" * 40
            )
        finally:
            await engine.dispose()
        assert outcome.attempt_id is not None
        return outcome.attempt_id

    return asyncio.run(start())


def _attempt(url: str, attempt_id: str) -> Attempt | None:
    async def read() -> Attempt | None:
        engine = make_engine(url)
        try:
            return await attempt_store.get_attempt(make_sessionmaker(engine), attempt_id)
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_project_pause_resume_and_reset_from_the_command_line(
    config: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, url = config
    assert main(["--config", str(path), "project", "pause", "acme/alpha"]) == 0
    row = _project(url, "alpha")
    assert row is not None and row.paused and row.escalation_reset_at is None
    assert "project alpha: pause done (paused: yes" in capsys.readouterr().out

    assert main(["--config", str(path), "project", "reset", "alpha"]) == 0
    assert main(["--config", str(path), "project", "resume", "alpha"]) == 0
    row = _project(url, "alpha")
    assert row is not None and not row.paused and row.escalation_reset_at is not None

    assert main(["--config", str(path), "project", "pause", "ghost"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["greenloop: Unknown project: 'ghost'."]


def test_attempt_cancel_from_the_command_line(config: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, url = config
    assert main(["--config", str(path), "project", "pause", "beta"]) == 0  # creates the store and its rows
    attempt_id = _start(url)

    assert main(["--config", str(path), "attempt", "cancel", attempt_id, "--reason", "by hand"]) == 0
    assert f"attempt {attempt_id}: pending -> cancelled" in capsys.readouterr().out
    attempt = _attempt(url, attempt_id)
    assert attempt is not None and attempt.status == AttemptStatus.CANCELLED.value
    assert attempt.stop_reason == "cancelled"

    assert main(["--config", str(path), "attempt", "cancel", attempt_id]) == 1  # already finished: a conflict
    assert "Attempt already finished" in capsys.readouterr().err
    assert main(["--config", str(path), "attempt", "cancel", "no/such"]) == 2
