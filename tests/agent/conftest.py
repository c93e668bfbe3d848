"""Fixtures for the agent's tests: a stand-in MCP server, a task, small budgets."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from agent_helpers import RUN_ID, StandInRepo, build_standin
from mcp import Client

from agent.types import AttemptTask
from policy.config import AgentSettings, Budgets


@pytest.fixture
def repo() -> StandInRepo:
    """Fresh stand-in repository state."""
    return StandInRepo()


@pytest.fixture
def standin(repo: StandInRepo) -> Callable[[], Any]:
    """`async with standin() as client:` an in-memory MCP client on the stand-in server."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[Client]:
        async with Client(build_standin(repo)) as client:
            yield client

    return connect


@pytest.fixture
def task() -> AttemptTask:
    """The task every loop test works on."""
    return AttemptTask(
        project="calc",
        job="test",
        failing_run_id=RUN_ID,
        head_sha="abc123",
        log_hint="FAILED tests/test_calc.py::test_add",
    )


@pytest.fixture
def budgets() -> Budgets:
    """Budgets small enough to hit in a test."""
    return Budgets(max_turns=12, max_tokens=200_000, wall_seconds=30, max_repeat_calls=3, max_error_streak=4)


@pytest.fixture
def settings() -> AgentSettings:
    """Model settings with quick retries and a known price."""
    return AgentSettings(
        model="claude-test",
        max_retries=1,
        timeout_seconds=20,
        prices={"claude-test": (3.0, 15.0, 3.75, 0.30), "default": (1.0, 1.0, 1.0, 1.0)},
    )
