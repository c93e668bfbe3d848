"""Forge faults while a pass observes: 5xx bursts, secondary rate limits, slow replies, drops, expired tokens.

One forge (two red projects and `clean`) serves the module and is only read: no dispatcher runs, so an
attempt a pass starts stays `pending`. Every test has its own store and its own reconciler (a fresh forge
client, so no ETag cache hides a request from the armed fault). Faults are armed through the forge's admin
control `POST /_forge/faults` and disarmed after every test.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fault_support import arm_fault, forge_control, forge_requests

from e2e_support import (  # isort: skip
    attempts_of,
    e2e_config,
    failing_job_runs,
    forge_for,
    insert_running_attempt,
    sqlite_url,
)
from fixtures.forge import Forge
from policy.config import GreenloopConfig
from reconciler.reconcile import RATE_LIMIT_LOW
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime

pytestmark = pytest.mark.anyio

PROJECTS = ["bug-lib", "clean", "stale-import"]
RED = {"bug-lib", "stale-import"}
TIMEOUT = 2.0  # the forge client's per-request timeout in this module (seconds)
BUG_LIB_RUNS = r"^/repos/acme/bug-lib/actions/runs$"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), PROJECTS) as running:
        yield running


@pytest.fixture(autouse=True)
async def disarmed(forge: Forge) -> AsyncIterator[None]:
    await forge_control(forge, "DELETE", "/_forge/faults")
    await forge_control(forge, "DELETE", "/_forge/stats")  # the request log too: each test reads its own
    yield
    await forge_control(forge, "DELETE", "/_forge/faults")


def _config(forge: Forge, tmp_path: Path, timeout: float = TIMEOUT) -> GreenloopConfig:
    config = e2e_config(forge, PROJECTS, database_url=sqlite_url(tmp_path / "greenloop.db"), workspace_dir=tmp_path)
    return config.model_copy(update={"forge": config.forge.model_copy(update={"timeout_seconds": timeout})})


async def _faulted(forge: Forge, path_regex: str) -> list[dict[str, object]]:
    return [r for r in await forge_requests(forge) if r.get("fault") and re.search(path_regex, r["path"])]


@pytest.mark.parametrize(
    ("kind", "count", "min_seconds"),
    [
        # Backoff: base 0.5 s doubling, jitter in [0.5, 1]: two retries wait at least 0.25 + 0.5 s.
        pytest.param("500", 2, 0.75, id="500-burst"),
        pytest.param("502", 3, 1.75, id="502-burst"),
        pytest.param("drop", 2, 0.75, id="dropped-connection"),
        # A slow reply costs the client its timeout, then the retry succeeds.
        pytest.param("slow", 1, TIMEOUT, id="slow-past-timeout"),
    ],
)
async def test_a_short_burst_of_forge_failures_is_retried_with_backoff_and_the_pass_has_no_error(
    forge: Forge, tmp_path: Path, kind: str, count: int, min_seconds: float
) -> None:
    async with open_runtime(_config(forge, tmp_path), backend_for=None, with_dispatcher=False) as ctx:
        assert ctx.forge is not None
        await arm_fault(forge, BUG_LIB_RUNS, kind, count=count, delay=TIMEOUT * 2, method="GET")
        t0 = time.perf_counter()
        summary = await reconcile(ctx, trigger="cli")
        elapsed = time.perf_counter() - t0

        assert summary.errors == {}
        assert {a.project for a in summary.attempts_started} == RED
        assert ctx.forge.stats.retries >= count
        assert elapsed >= min_seconds, f"retried without backing off: {elapsed:.2f}s"
        assert len(await _faulted(forge, BUG_LIB_RUNS)) >= (count if kind != "slow" else 0)
        assert await forge_control(forge, "GET", "/_forge/faults") == []  # every armed fault was consumed
        attempts = await attempts_of(ctx.sessions)
        assert sorted(a.project for a in attempts) == sorted(RED)  # one attempt each, no duplicate


@pytest.mark.parametrize("kind", ["429", "403_secondary"])
async def test_a_secondary_rate_limit_waits_for_retry_after_and_goes_on(
    forge: Forge, tmp_path: Path, kind: str
) -> None:
    async with open_runtime(_config(forge, tmp_path), backend_for=None, with_dispatcher=False) as ctx:
        assert ctx.forge is not None
        await arm_fault(forge, BUG_LIB_RUNS, kind, count=1, retry_after=1, method="GET")
        t0 = time.perf_counter()
        summary = await reconcile(ctx, trigger="cli")
        elapsed = time.perf_counter() - t0

        assert summary.errors == {}
        assert {a.project for a in summary.attempts_started} == RED
        assert elapsed >= 1.0, f"did not wait for retry-after: {elapsed:.2f}s"
        faulted = await _faulted(forge, BUG_LIB_RUNS)
        assert [r["status"] for r in faulted] == [429 if kind == "429" else 403]


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        pytest.param("502", "HTTP 502", id="502-outage"),
        pytest.param("slow", "timed out", id="slow-outage"),
        pytest.param("429", "rate limit", id="rate-limited-outage"),
    ],
)
async def test_a_project_the_forge_keeps_failing_is_an_error_of_its_own_and_retried_on_the_next_pass(
    forge: Forge, tmp_path: Path, kind: str, error: str
) -> None:
    config = _config(forge, tmp_path, timeout=0.5)  # a slow outage costs four timeouts: keep them short
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        await arm_fault(forge, BUG_LIB_RUNS, kind, count=20, retry_after=1, delay=1.0, method="GET")
        t0 = time.perf_counter()
        first = await reconcile(ctx, trigger="cli")
        assert time.perf_counter() - t0 < 30, "the retries are bounded"

        # The pass completed: the unaffected project got its attempt, the affected one an error of its own.
        assert set(first.errors) == {"bug-lib"}
        assert error in first.errors["bug-lib"]
        assert [a.project for a in first.attempts_started] == ["stale-import"]
        assert first.projects_scanned == len(PROJECTS)

        await forge_control(forge, "DELETE", "/_forge/faults")
        second = await reconcile(ctx, trigger="cli")
        assert second.errors == {}
        assert [a.project for a in second.attempts_started] == ["bug-lib"]
        assert second.attempts_already_active == 1  # stale-import: no duplicate
        attempts = await attempts_of(ctx.sessions)
        assert sorted(a.project for a in attempts) == sorted(RED)


async def test_an_installation_token_expired_between_passes_is_refreshed_and_the_pass_goes_on(
    forge: Forge, tmp_path: Path
) -> None:
    async with open_runtime(_config(forge, tmp_path), backend_for=None, with_dispatcher=False) as ctx:
        first = await reconcile(ctx, trigger="cli")
        assert first.errors == {}
        expired = await forge_control(forge, "POST", "/_forge/tokens/expire", {"all_installation_tokens": True})
        assert expired
        await forge_control(forge, "DELETE", "/_forge/stats")
        second = await reconcile(ctx, trigger="cli")

        assert second.errors == {}
        assert second.attempts_already_active == len(RED)
        after = await forge_requests(forge)
        statuses = [r["status"] for r in after if r["path"].startswith("/repos/")]
        assert 401 in statuses, "the expired token was used once"
        assert any(r["path"].endswith("/access_tokens") and r["status"] == 201 for r in after), "and refreshed"


async def test_a_low_rate_budget_pauses_observation_of_projects_without_an_active_attempt(
    forge: Forge, tmp_path: Path
) -> None:
    run = failing_job_runs(forge, "acme/stale-import", "test")[-1]
    async with open_runtime(_config(forge, tmp_path), backend_for=None, with_dispatcher=False) as ctx:
        assert ctx.forge is not None
        active = await insert_running_attempt(
            ctx.sessions,
            project="stale-import",
            job="test",
            run_id=str(run.id),
            head_sha=run.head_sha,
            heartbeat_at=datetime.now(UTC),
        )
        try:
            # The budget drops below the reserve; the client learns it from its next reply.
            await forge_control(forge, "POST", "/_forge/rate-limit", {"limit": ctx.rate_limit_reserve // 2})
            await ctx.forge.get_repo("acme/clean")
            assert ctx.forge.stats.rate_remaining is not None
            assert ctx.forge.stats.rate_remaining < ctx.rate_limit_reserve
            await forge_control(forge, "DELETE", "/_forge/stats")
            low = await reconcile(ctx, trigger="cli")

            # Only the project with an attempt in flight was observed; the others wait, nothing started.
            assert low.errors == {}
            assert low.skips.get(RATE_LIMIT_LOW) == 2
            assert low.attempts_started == []
            touched = {r["path"].split("/")[3] for r in await forge_requests(forge) if r["path"].startswith("/repos/")}
            assert touched == {"stale-import"}
            assert [a.id for a in await attempts_of(ctx.sessions)] == [active.id]

            # The budget resets: the next pass observes every project and starts the waiting one's attempt.
            await forge_control(forge, "POST", "/_forge/rate-limit", {"limit": 5000})
            await ctx.forge.get_repo("acme/clean")
            refilled = await reconcile(ctx, trigger="cli")
            assert RATE_LIMIT_LOW not in refilled.skips
            assert refilled.errors == {}
            assert [a.project for a in refilled.attempts_started] == ["bug-lib"]
        finally:
            await forge_control(forge, "POST", "/_forge/rate-limit", {"limit": 5000})
