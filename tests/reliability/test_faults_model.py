"""Model faults seen by the reconciler: API errors, overload, rate limits and timeouts end the attempt `failed`.

The agent loop's own tests (tests/agent/test_guards.py, test_loop.py) cover each stop reason against the
loop; here the whole chain runs: a pass starts the attempt, the dispatcher runs the real
`agent.models.AnthropicBackend` (the `anthropic` SDK over HTTP, with its bounded retries and timeout) against
`fixtures/fake_anthropic.py`, and the store records how the attempt ended. No attempt may hang: each test
bounds the wait for the dispatcher and checks the attempt reached a terminal status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fault_support import forge_control, forge_requests

from agent.models import AnthropicBackend

from e2e_support import attempts_of, e2e_config, forge_for, pulls_of, sqlite_url  # isort: skip
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from fixtures.forge import Forge
from policy.config import AgentSettings, ProjectConfig
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store.models import Attempt

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"
REPO = "acme/bug-lib"
MAX_RETRIES = 1  # the SDK sends each request at most twice
TIMEOUT = 1.0  # seconds the SDK waits for one answer

_READ = {"tool_use": {"name": "read_repo_file", "input": {"path": "pager/pagination.py"}}}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), [PROJECT]) as running:
        yield running


@pytest.mark.parametrize(
    ("actions", "stop_reason"),
    [
        pytest.param([{"error": 529}] * (MAX_RETRIES + 1), "model_error", id="overloaded"),
        pytest.param([{"error": 500}] * (MAX_RETRIES + 1), "model_error", id="api-error"),
        pytest.param([{"error": 429, "retry_after": 0.05}] * (MAX_RETRIES + 1), "model_error", id="rate-limited"),
        pytest.param([{"delay": TIMEOUT * 3, "text": "late"}] * (MAX_RETRIES + 1), "model_error", id="timeout"),
        pytest.param([_READ, {"error": 529}, {"error": 529}], "model_error", id="fails-mid-attempt"),
        # The model's answer is cut off at max_tokens twice in a row: the loop gives up, it does not spin.
        pytest.param(
            [{"truncate": True, **_READ}, {"truncate": True, **_READ}], "max_tokens_truncated", id="truncated"
        ),
    ],
)
async def test_an_attempt_whose_model_fails_ends_failed_with_the_reason_and_never_hangs(
    forge: Forge, tmp_path: Path, actions: list[dict[str, Any]], stop_reason: str
) -> None:
    fake = FakeAnthropic(actions)
    await forge_control(forge, "DELETE", "/_forge/stats")
    pulls_before = len(pulls_of(forge, REPO))
    async with run_fake_anthropic(fake) as url:
        settings = AgentSettings(model="claude-test", base_url=url, max_retries=MAX_RETRIES, timeout_seconds=TIMEOUT)
        config = e2e_config(
            forge,
            [PROJECT],
            database_url=sqlite_url(tmp_path / "greenloop.db"),
            workspace_dir=tmp_path / "workspaces",
            projects={PROJECT: {"autonomy": "propose"}},
        ).model_copy(update={"agent": settings})

        def backend_for(_attempt: Attempt, _project: ProjectConfig) -> AnthropicBackend:
            return AnthropicBackend(settings, api_key=fake.api_key, base_url=url)

        async with open_runtime(config, backend_for=backend_for, secrets=(fake.api_key,), heartbeat_seconds=1.0) as ctx:
            summary = await reconcile(ctx, trigger="cli")
            assert [a.project for a in summary.attempts_started] == [PROJECT]
            assert ctx.dispatcher is not None
            t0 = time.perf_counter()
            await ctx.dispatcher.wait_idle(60)
            elapsed = time.perf_counter() - t0
            (attempt,) = await attempts_of(ctx.sessions, PROJECT)

            assert attempt.status == "failed", (attempt.status, attempt.stop_reason, elapsed)
            assert attempt.stop_reason == stop_reason
            # The API's outage is the outside's: the failure may start again; a model that misbehaves is not.
            assert attempt.failure_class == ("transient" if stop_reason == "model_error" else "permanent")
            assert attempt.finished_at is not None
            assert elapsed < 30, f"the attempt took {elapsed:.1f}s to give up"
            assert fake.remaining == 0, "every scripted answer was asked for: the SDK retried as configured"
            assert fake.api_key not in (attempt.transcript or ""), "the API key never reaches the record"
            assert not (tmp_path / "workspaces" / f"attempt-{attempt.id}").exists()

            # Nothing reached the forge's write side, and the reconciler goes on: the next pass is clean.
            assert not any(r["path"].endswith("/git-receive-pack") for r in await forge_requests(forge))
            assert len(pulls_of(forge, REPO)) == pulls_before
            again = await reconcile(ctx, trigger="cli")
            assert again.errors == {}
            assert again.attempts_started == []
