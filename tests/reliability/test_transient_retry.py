"""After the agent stops: a model outage is not the failure's last chance, an operator reset really starts a new
attempt, the kill switch can stop agents that run now, and a fix PR that sits is announced once.

The whole chain runs on the strict local forge: a pass starts the attempt, the dispatcher runs the real
`agent.models.AnthropicBackend` (the `anthropic` SDK over HTTP, with its retries) against
`fixtures/fake_anthropic.py`, and the store records how the attempt ended.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from fault_support import arm_fault, forge_control  # also puts tests/reconciler on sys.path

from agent.models import AnthropicBackend

from test_notify import _receiver, serve  # isort: skip
from e2e_support import SCRIPTS_DIR, attempts_of, e2e_config, failing_job_runs, forge_for, pulls_of, sqlite_url  # isort: skip
from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from fixtures.forge import Forge
from policy.config import AgentSettings, ProjectConfig
from reconciler.api import build_api
from reconciler.context import ReconcilerContext
from reconciler.operations import find_project, project_action
from reconciler.runner import reconcile
from reconciler.runtime import open_runtime
from reconciler.store.models import Attempt, Transition
from reconciler.summary import RunSummary

pytestmark = pytest.mark.anyio

PROJECT = "bug-lib"
REPO = "acme/bug-lib"
JOB = "test"
MAX_RETRIES = 1  # the SDK sends each request at most twice
OUTAGE = [{"error": 529}, {"error": 500}]  # both tries of one request fail: the SDK gives up
TOKEN = "t" * 32


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    """Module scope, so one forge serves every test of this module."""
    return "asyncio"


@pytest.fixture(scope="module")
async def forge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Forge]:
    async with forge_for(tmp_path_factory.mktemp("forge"), [PROJECT]) as running:
        yield running


def _fix_actions(forge: Forge) -> list[dict[str, Any]]:
    """bug-lib's scripted fix as fake-API answers, up to its pull request (a `propose` project merges nothing)."""
    run_id = str(failing_job_runs(forge, REPO, JOB)[-1].id)
    script = json.loads((SCRIPTS_DIR / f"{PROJECT}.json").read_text())
    actions: list[dict[str, Any]] = []
    for step in script["steps"]:
        if step["tool"] == "merge_pull_request":
            continue
        arguments = json.loads(json.dumps(step["input"]).replace("$FAILING_RUN_ID", run_id))
        actions.append({"tool_use": {"name": step["tool"], "input": arguments}})
    actions.append({"text": "Opened the fix."})
    return actions


@asynccontextmanager
async def runtime(
    forge: Forge, tmp_path: Path, actions: Sequence[dict[str, Any]], **project: Any
) -> AsyncIterator[tuple[ReconcilerContext, FakeAnthropic]]:
    fake = FakeAnthropic(list(actions))
    webhook = project.pop("webhook", None)
    timeout = project.pop("timeout", 5.0)
    async with run_fake_anthropic(fake) as url:
        settings = AgentSettings(model="claude-test", base_url=url, max_retries=MAX_RETRIES, timeout_seconds=timeout)
        config = e2e_config(
            forge,
            [PROJECT],
            database_url=sqlite_url(tmp_path / "greenloop.db"),
            workspace_dir=tmp_path / "workspaces",
            server={"slack_webhook_url": webhook} if webhook else None,
            projects={PROJECT: {"autonomy": "propose", **project}},
        ).model_copy(update={"agent": settings})

        def backend_for(_attempt: Attempt, _project: ProjectConfig) -> AnthropicBackend:
            return AnthropicBackend(settings, api_key=fake.api_key, base_url=url)

        async with open_runtime(config, backend_for=backend_for, secrets=(fake.api_key,), heartbeat_seconds=0.5) as ctx:
            yield ctx, fake


async def _pass(ctx: ReconcilerContext) -> RunSummary:
    summary = await reconcile(ctx, trigger="cli")
    assert summary.errors == {}
    # Never a start that did not happen: every "start" in the red list is an attempt the pass started.
    starts = [r for r in summary.red if r.decision == "start"]
    assert len(starts) == len(summary.attempts_started)
    return summary


async def _age(ctx: ReconcilerContext, attempt_id: str, *, hours: float, pr_open: bool = False) -> None:
    """Move an attempt's clock back, as if `hours` had passed since it finished (or its PR opened)."""
    async with ctx.sessions() as session, session.begin():
        delta = timedelta(hours=hours)
        row = await session.get(Attempt, attempt_id)
        assert row is not None
        row.created_at -= delta
        if row.finished_at is not None:
            row.finished_at -= delta
        if pr_open:
            query = sa.select(Transition).where(Transition.attempt_id == attempt_id, Transition.to_status == "pr_open")
            for transition in (await session.scalars(query)).all():
                transition.at -= delta


async def _wait_idle(ctx: ReconcilerContext) -> None:
    assert ctx.dispatcher is not None
    await ctx.dispatcher.wait_idle(60)


async def test_a_model_outage_mid_attempt_is_retried_after_backoff_and_ends_in_one_pull_request(
    forge: Forge, tmp_path: Path
) -> None:
    fix = _fix_actions(forge)
    pulls_before = len(pulls_of(forge, REPO))
    # The model answers twice (the logs, one read), then the API is down for both tries of the third request.
    actions = [*fix[:2], *OUTAGE, *fix]
    async with runtime(forge, tmp_path, actions, backoff={"base_seconds": 600.0}) as (ctx, fake):
        first = await _pass(ctx)
        assert len(first.attempts_started) == 1
        await _wait_idle(ctx)
        (failed,) = await attempts_of(ctx.sessions, PROJECT)
        assert (failed.status, failed.stop_reason, failed.failure_class) == ("failed", "model_error", "transient")
        assert len(pulls_of(forge, REPO)) == pulls_before

        waiting = await _pass(ctx)  # the backoff is not over: the failure waits, with a time to come back
        assert waiting.attempts_started == []
        (note,) = waiting.red
        assert (note.decision, note.reason) == ("skip", "backoff")

        await _age(ctx, failed.id, hours=1)  # the backoff (600 s) is over
        retried = await _pass(ctx)
        (note,) = retried.red
        assert note.decision == "start" and "retry 1 of 3 after a transient failure" in note.detail
        await _wait_idle(ctx)
        first_row, second = sorted(await attempts_of(ctx.sessions, PROJECT), key=lambda a: a.generation)
        assert first_row.id == failed.id
        assert (second.status, second.generation, second.pr_number is not None) == ("pr_open", 1, True)
        assert fake.remaining == 0

        after = await _pass(ctx)
        assert after.attempts_started == []
    new_pulls = pulls_of(forge, REPO)[pulls_before:]
    assert [p.number for p in new_pulls] == [second.pr_number]


async def test_a_forge_outage_mid_attempt_fails_it_transient_and_the_failure_starts_again(
    forge: Forge, tmp_path: Path
) -> None:
    fix = _fix_actions(forge)
    pulls_before = len(pulls_of(forge, REPO))
    # The model asks for the logs twice (both fail: the forge is down), then, next attempt, fixes it.
    actions = [fix[0], fix[0], *fix]
    project = {"budgets": {"max_error_streak": 2}, "backoff": {"base_seconds": 0.0}}
    async with runtime(forge, tmp_path, actions, **project) as (ctx, fake):
        # The log downloads are rate limited for an hour: the forge client gives up at once, without waiting.
        await arm_fault(forge, r"/actions/jobs/\d+/logs$", "429", count=1000, retry_after=3600)
        try:
            assert len((await _pass(ctx)).attempts_started) == 1
            await _wait_idle(ctx)
        finally:
            await forge_control(forge, "DELETE", "/_forge/faults")  # the forge is back
        (failed,) = await attempts_of(ctx.sessions, PROJECT)
        assert (failed.status, failed.stop_reason, failed.failure_class) == ("failed", "error_streak", "transient")
        assert "Forge rate limit" in (failed.transcript or "")

        retried = await _pass(ctx)
        assert retried.red[0].decision == "start" and len(retried.attempts_started) == 1
        await _wait_idle(ctx)
        rows = sorted(await attempts_of(ctx.sessions, PROJECT), key=lambda a: a.generation)
        assert [(a.status, a.generation) for a in rows] == [("failed", 0), ("pr_open", 1)]
        assert fake.remaining == 0
    assert [p.number for p in pulls_of(forge, REPO)[pulls_before:]] == [rows[1].pr_number]


async def test_an_operator_reset_after_a_failure_really_starts_a_new_attempt(forge: Forge, tmp_path: Path) -> None:
    actions = [{"text": "I cannot see the cause."}, {"text": "Still no fix."}]
    async with runtime(forge, tmp_path, actions) as (ctx, fake):
        assert len((await _pass(ctx)).attempts_started) == 1
        await _wait_idle(ctx)
        (failed,) = await attempts_of(ctx.sessions, PROJECT)
        assert (failed.status, failed.stop_reason, failed.failure_class) == ("failed", "no_fix", "permanent")

        handled = await _pass(ctx)
        (note,) = handled.red
        assert (note.decision, note.reason) == ("skip", "already_handled")

        await project_action(ctx, find_project(ctx, PROJECT), "reset")
        after_reset = await _pass(ctx)
        (note,) = after_reset.red
        assert note.decision == "start"
        (started,) = after_reset.attempts_started
        await _wait_idle(ctx)
        rows = await attempts_of(ctx.sessions, PROJECT)
        assert [(a.id, a.generation) for a in rows] == [(failed.id, 0), (started.attempt_id, 1)]
        assert rows[1].status == "failed" and fake.remaining == 0

        # One reset, one more attempt: the failure is handled again.
        again = await _pass(ctx)
        assert again.attempts_started == [] and again.red[0].reason == "already_handled"


async def test_two_passes_racing_report_only_the_start_that_happened(forge: Forge, tmp_path: Path) -> None:
    async with runtime(forge, tmp_path, [{"text": "No fix."}]) as (ctx, _fake):
        summaries = await asyncio.gather(_pass(ctx), _pass(ctx))
        await _wait_idle(ctx)
        rows = await attempts_of(ctx.sessions, PROJECT)
    assert len(rows) == 1
    assert sum(len(s.attempts_started) for s in summaries) == 1  # _pass checked each red list against it


async def test_the_kill_switch_with_cancel_running_stops_a_running_agent(forge: Forge, tmp_path: Path) -> None:
    fix = _fix_actions(forge)
    pulls_before = len(pulls_of(forge, REPO))
    # The second model answer takes long: the agent is mid-run when the switch is flipped.
    actions = [fix[0], {"delay": 3.0, **fix[1]}]
    async with runtime(forge, tmp_path, actions, timeout=30.0) as (ctx, fake):
        assert len((await _pass(ctx)).attempts_started) == 1
        assert ctx.dispatcher is not None
        async with asyncio.timeout(30):
            while len(fake.requests) < 2:  # noqa: ASYNC110 (the fake records requests, it has no event)
                await asyncio.sleep(0.05)
        (running,) = await attempts_of(ctx.sessions, PROJECT)
        assert running.status == "running" and ctx.dispatcher.is_running(running.id)

        app = build_api(ctx, api_token=TOKEN)
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx2.AsyncClient(
            transport=transport, base_url="http://testserver", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            r = await http.post("/kill-switch", json={"enabled": True, "cancel_running": True})
            assert r.status_code == 200, r.text
            assert r.json()["cancelled"] == [running.id] and r.json()["enabled"] is True
            assert not ctx.dispatcher.is_running(running.id)  # stopped before the answer
            (cancelled,) = await attempts_of(ctx.sessions, PROJECT)
            assert (cancelled.status, cancelled.stop_reason) == ("cancelled", "cancelled")

            quiet = await _pass(ctx)  # the switch is on: nothing starts
            assert quiet.attempts_started == [] and quiet.red[0].reason == "kill_switch"
            await http.post("/kill-switch", json={"enabled": False})
    assert len(pulls_of(forge, REPO)) == pulls_before


async def test_a_pull_request_that_sits_is_announced_once_and_listed_as_stale(forge: Forge, tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []
    async with serve(_receiver(received)) as base:
        webhook = f"{base}/services/T0/B0/secret"
        async with runtime(forge, tmp_path, _fix_actions(forge), webhook=webhook, stale_pr_hours=24.0) as (ctx, _):
            await _pass(ctx)
            await _wait_idle(ctx)
            (attempt,) = await attempts_of(ctx.sessions, PROJECT)
            assert attempt.status == "pr_open"
            await _pass(ctx)
            assert received == [] and (await attempts_of(ctx.sessions, PROJECT))[0].stale_announced_at is None

            await _age(ctx, attempt.id, hours=25, pr_open=True)
            await _pass(ctx)
            await _pass(ctx)
            (attempt,) = await attempts_of(ctx.sessions, PROJECT)
            assert attempt.status == "pr_open" and attempt.stale_announced_at is not None

            app = build_api(ctx, api_token=TOKEN)
            transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx2.AsyncClient(
                transport=transport, base_url="http://testserver", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as http:
                listed = (await http.get("/attempts")).json()["attempts"]
                projects = (await http.get("/projects")).json()["projects"]
    stale_notices = [m for m in received if "waiting for a human" in json.dumps(m["body"])]
    assert len(stale_notices) == 1
    text = json.dumps(stale_notices[0]["body"])
    assert attempt.id in text and "starts no other attempt" in text and str(attempt.pr_url) in text
    assert [(a["id"], a["pr_stale"]) for a in listed] == [(attempt.id, True)]
    assert [(p["name"], p["pr_stale"]) for p in projects] == [(PROJECT, True)]
