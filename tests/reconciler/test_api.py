"""reconciler.api: the HTTP API on a real store, through httpx2's ASGI transport.

Most tests pass a recording fake `reconcile_fn` (the API's contract is to call it with the right arguments
and serve its summary); `test_debug_dry_run_with_the_real_pass_*` runs the real `reconcile`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec

from policy.config import GreenloopConfig, ProjectConfig, ServerSettings
from policy.errors import ConfigError
from policy.types import AttemptStatus
from reconciler.api import build_api
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.runner import UnknownProjects, reconcile
from reconciler.store import attempts as attempt_store
from reconciler.store import projects as project_store
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.models import Attempt, JobRun, McpToolCall
from reconciler.summary import RedJob, RunSummary, StartedAttempt, Trigger

pytestmark = pytest.mark.anyio

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMES = ("alpha", "beta", "gamma", "delta")
SHA = "a" * 40


def make_ctx(
    sessions: SessionFactory, *, kill_switch: bool = False, paused: Sequence[str] = (), metrics: Metrics | None = None
) -> ReconcilerContext:
    config = GreenloopConfig(
        server=ServerSettings(kill_switch=kill_switch),
        projects=tuple(ProjectConfig(name=n, repo=f"acme/{n}", paused=n in paused) for n in NAMES),
    )
    return ReconcilerContext(
        config=config, sessions=sessions, forge=None, dispatcher=None, metrics=metrics or Metrics()
    )


class FakeReconcile:
    """Records each call and answers a summary naming the projects it was asked about."""

    def __init__(self, *, delay: float = 0.0, raises: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.delay = delay
        self.raises = raises
        self.cancelled = False

    async def __call__(
        self,
        ctx: ReconcilerContext,
        *,
        repos: Sequence[str] | None = None,
        trigger: Trigger = "cli",
        dry_run: bool = False,
    ) -> RunSummary:
        self.calls.append({"repos": list(repos) if repos is not None else None, "trigger": trigger, "dry_run": dry_run})
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.raises is not None:
            raise self.raises
        names = list(repos) if repos else [p.name for p in ctx.config.projects]  # None: every project
        return RunSummary(
            trigger=trigger,
            dry_run=dry_run,
            started_at=datetime(2026, 1, 1, tzinfo=UTC),
            projects_scanned=len(names),
            projects_red=1,
            red=[RedJob(project=names[0], job="ci", run_id="9", head_sha=SHA, conclusion="failure", decision="start")],
            attempts_started=[
                StartedAttempt(project=names[0], job="ci", attempt_id=None if dry_run else "abc123", run_id="9")
            ],
        )


@asynccontextmanager
async def api_client(
    ctx: ReconcilerContext,
    *,
    headers: dict[str, str] | None = None,
    client_addr: tuple[str, int] = ("127.0.0.1", 50000),
    **build: Any,
) -> AsyncIterator[httpx2.AsyncClient]:
    build.setdefault("api_token", TOKEN)
    build.setdefault("reconcile_fn", FakeReconcile())
    build.setdefault("enqueue", lambda _key: None)  # no event passes here unless a test asks (test_webhooks)
    app = build_api(ctx, **build)
    transport = httpx2.ASGITransport(app=app, client=client_addr)
    async with httpx2.AsyncClient(
        transport=transport, base_url="http://testserver", headers=AUTH if headers is None else headers
    ) as http:
        yield http


@pytest.fixture
def ctx(sessions: SessionFactory) -> ReconcilerContext:
    return make_ctx(sessions)


@pytest.fixture
async def http(ctx: ReconcilerContext) -> AsyncIterator[httpx2.AsyncClient]:
    async with api_client(ctx) as client:
        yield client


async def _start(sessions: SessionFactory, project: str, *, job: str = "ci", sha: str = SHA) -> str:
    await project_store.sync_projects(sessions, {n: f"acme/{n}" for n in NAMES})
    outcome = await attempt_store.start_attempt(
        sessions, project=project, job=job, fingerprint=f"{project}:{job}:{sha}", run_id="7", head_sha=sha
    )
    assert outcome.started and outcome.attempt_id is not None
    return outcome.attempt_id


def _run(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "project": "alpha",
        "job": "nightly",
        "run_id": "1001",
        "status": "completed",
        "conclusion": "failure",
        "head_sha": SHA,
        "triggered_by": "cron",
        "event": "schedule",
        "commit_message": "bump deps",
        "run_attempt": 1,
        "log_text": "Traceback ...\nAssertionError",
        "created_at": "2026-01-01T00:00:00Z",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not ...}


# --- authentication -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer wrong-token-0123456789"}, id="wrong-token"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, id="wrong-scheme"),
        pytest.param({"Authorization": "Bearer"}, id="scheme-only"),
        pytest.param({"Authorization": f"Bearer {TOKEN[:-1]}"}, id="prefix-of-token"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, id="token-plus-one"),
        pytest.param({"Authorization": TOKEN}, id="no-scheme"),
    ],
)
@pytest.mark.parametrize("route", [("GET", "/kill-switch"), ("POST", "/debug/reconcile"), ("GET", "/metrics")])
async def test_requests_without_the_right_bearer_token_get_401(
    ctx: ReconcilerContext, headers: dict[str, str], route: tuple[str, str]
) -> None:
    fake = FakeReconcile()
    async with api_client(ctx, headers=headers, reconcile_fn=fake) as http:
        r = await http.request(route[0], route[1], json={"repos": ["alpha"]})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"
    assert TOKEN not in r.text
    assert fake.calls == []


async def test_bearer_scheme_is_case_insensitive_and_healthz_needs_no_token(ctx: ReconcilerContext) -> None:
    async with api_client(ctx, headers={"Authorization": f"bearer {TOKEN}"}) as http:
        assert (await http.get("/kill-switch")).status_code == 200
    async with api_client(ctx, headers={}) as http:
        r = await http.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "detail": None}


async def test_two_authorization_headers_are_refused(ctx: ReconcilerContext) -> None:
    app = build_api(ctx, api_token=TOKEN)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    auth = f"Bearer {TOKEN}".encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/kill-switch",
        "raw_path": b"/kill-switch",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"authorization", auth), (b"authorization", auth)],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 401


@pytest.mark.parametrize(
    ("token", "match"),
    [
        pytest.param(None, "api_token: not set", id="none"),
        pytest.param("", "api_token: not set", id="empty"),
        pytest.param("short", "too short", id="short"),
    ],
)
async def test_build_api_refuses_a_missing_or_weak_token(ctx: ReconcilerContext, token: str | None, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_api(ctx, api_token=token)


@pytest.mark.parametrize(
    ("client_addr", "status"),
    [
        pytest.param(("127.0.0.1", 5), 200, id="ipv4-loopback"),
        pytest.param(("127.8.9.10", 5), 200, id="ipv4-loopback-net"),
        pytest.param(("::1", 5), 200, id="ipv6-loopback"),
        pytest.param(("10.0.0.5", 5), 403, id="private-lan"),
        pytest.param(("192.0.2.7", 5), 403, id="remote"),
        pytest.param(("::ffff:10.0.0.5", 5), 403, id="mapped-remote"),
        pytest.param(("not-an-ip", 5), 403, id="garbage"),
    ],
)
async def test_without_a_token_only_loopback_clients_are_served(
    ctx: ReconcilerContext, client_addr: tuple[str, int], status: int
) -> None:
    async with api_client(ctx, headers={}, api_token=None, allow_no_token=True, client_addr=client_addr) as http:
        r = await http.get("/kill-switch")
    assert r.status_code == status
    if status == 403:
        assert r.json()["error"] == "forbidden"


# --- health, metrics, openapi ---------------------------------------------------------------------------


async def test_healthz_answers_503_when_the_database_is_unreachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = make_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{port}/none")
    try:
        ctx = make_ctx(make_sessionmaker(engine))
        async with api_client(ctx, headers={}) as http:
            r = await http.get("/healthz")
    finally:
        await engine.dispose()
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"


async def test_store_failure_in_a_handler_is_503_not_500() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = make_engine(f"postgresql+asyncpg://nobody@127.0.0.1:{port}/none")
    try:
        async with api_client(make_ctx(make_sessionmaker(engine))) as http:
            r = await http.get("/attempts")
    finally:
        await engine.dispose()
    assert r.status_code == 503
    assert r.json()["error"] == "store_unavailable"


async def test_metrics_serves_the_exposition_text(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    ctx.metrics.observe_attempt_finished("succeeded", 10, 5, 0.5)
    r = await http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert 'greenloop_attempts_finished_total{outcome="succeeded"} 1' in r.text.splitlines()


async def test_openapi_document_is_valid_and_lists_every_route(http: httpx2.AsyncClient) -> None:
    r = await http.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    validate_spec(doc)
    expected = {
        "/healthz": {"get"},
        "/metrics": {"get"},
        "/openapi.json": {"get"},
        "/debug/reconcile": {"post"},
        "/runs": {"post"},
        "/attempts": {"get"},
        "/attempts/{id}": {"get"},
        "/attempts/{id}/cancel": {"post"},
        "/projects": {"get"},
        "/projects/{name}/pause": {"post"},
        "/projects/{name}/resume": {"post"},
        "/projects/{name}/reset": {"post"},
        "/kill-switch": {"get", "post"},
        "/webhooks/github": {"post"},
    }
    assert {p: set(ops) for p, ops in doc["paths"].items()} == expected


async def test_answers_match_the_openapi_document(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    spec = OpenAPI.from_dict((await http.get("/openapi.json")).json())
    attempt_id = await _start(ctx.sessions, "beta")
    calls: list[tuple[str, str, str, Any]] = [
        ("GET", "/healthz", "/healthz", None),
        ("GET", "/kill-switch", "/kill-switch", None),
        ("POST", "/kill-switch", "/kill-switch", {"enabled": True}),
        ("POST", "/debug/reconcile", "/debug/reconcile", {"repos": ["alpha"], "dry_run": True}),
        ("POST", "/debug/reconcile", "/debug/reconcile", {"repos": ["nope"]}),
        ("POST", "/debug/reconcile", "/debug/reconcile", {"repos": []}),
        ("POST", "/runs", "/runs", _run()),
        ("POST", "/runs", "/runs", _run()),
        ("GET", "/attempts", "/attempts", None),
        ("GET", f"/attempts/{attempt_id}", "/attempts/{id}", None),
        ("GET", "/attempts/zzz", "/attempts/{id}", None),
        ("GET", "/projects", "/projects", None),
        ("POST", "/projects/alpha/pause", "/projects/{name}/pause", None),
        ("POST", "/projects/alpha/reset", "/projects/{name}/reset", {"reason": "fixed by hand"}),
        ("POST", f"/attempts/{attempt_id}/cancel", "/attempts/{id}/cancel", None),
        ("POST", f"/attempts/{attempt_id}/cancel", "/attempts/{id}/cancel", None),
    ]
    statuses = []
    for method, path, pattern, body in calls:
        r = await http.request(method, path, json=body)
        statuses.append(r.status_code)
        request = MockRequest(
            "http://testserver",
            method.lower(),
            path,
            path_pattern=pattern,
            headers=AUTH,
            data=json.dumps(body).encode() if body is not None else None,
        )
        response = MockResponse(r.content, status_code=r.status_code, content_type=r.headers["content-type"])
        spec.validate_response(request, response)
    assert statuses == [200, 200, 200, 200, 404, 422, 201, 200, 200, 200, 404, 200, 200, 200, 200, 409]


# --- POST /debug/reconcile ------------------------------------------------------------------------------


async def test_debug_reconcile_runs_a_pass_on_the_named_projects(ctx: ReconcilerContext) -> None:
    fake = FakeReconcile()
    async with api_client(ctx, reconcile_fn=fake) as http:
        r = await http.post("/debug/reconcile", json={"repos": ["alpha", "acme/beta", "alpha"]})
        d = await http.post("/debug/reconcile", json={"repos": ["gamma"], "dry_run": True})
    assert r.status_code == 200
    assert fake.calls == [
        {"repos": ["alpha", "acme/beta"], "trigger": "debug", "dry_run": False},
        {"repos": ["gamma"], "trigger": "debug", "dry_run": True},
    ]
    summary = RunSummary.model_validate(r.json())
    assert summary.trigger == "debug"
    assert summary.attempts_started[0].attempt_id == "abc123"
    assert d.json()["dry_run"] is True
    assert d.json()["attempts_started"][0]["attempt_id"] is None


async def test_debug_reconcile_unknown_projects_are_404_and_listed(ctx: ReconcilerContext) -> None:
    fake = FakeReconcile()
    async with api_client(ctx, reconcile_fn=fake) as http:
        r = await http.post("/debug/reconcile", json={"repos": ["alpha", "ghost", "acme/ghost", "ghost"]})
    assert r.status_code == 404
    assert r.json()["unknown"] == ["ghost", "acme/ghost"]
    assert "'ghost'" in r.json()["detail"]
    assert fake.calls == []


async def test_debug_reconcile_unknown_projects_raised_by_the_pass_are_404(ctx: ReconcilerContext) -> None:
    async with api_client(ctx, reconcile_fn=FakeReconcile(raises=UnknownProjects(["alpha"]))) as http:
        r = await http.post("/debug/reconcile", json={"repos": ["alpha"]})
    assert r.status_code == 404
    assert r.json()["unknown"] == ["alpha"]


async def test_debug_reconcile_times_out_with_504_and_cancels_the_pass(
    ctx: ReconcilerContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greenloop.api")
    fake = FakeReconcile(delay=60)
    async with api_client(ctx, reconcile_fn=fake, debug_timeout_seconds=0.3) as http:
        r = await http.post("/debug/reconcile", json={"repos": ["alpha"]})
    assert r.status_code == 504
    assert r.json()["error"] == "timeout"
    assert "timed out" in r.json()["detail"] and "0.3 seconds" in r.json()["detail"]
    assert fake.cancelled
    events = [rec for rec in caplog.records if rec.getMessage() == "api_debug_reconcile"]
    assert [getattr(e, "greenloop_fields", {})["status"] for e in events] == [504]


@pytest.mark.parametrize(
    ("content", "status", "field"),
    [
        pytest.param(b'{"repos": []}', 422, "repos", id="empty-list"),
        pytest.param(b'{"repos": "alpha"}', 422, "repos", id="string-not-list"),
        pytest.param(b'{"repos": [1]}', 422, "repos[0]", id="int-in-list"),
        pytest.param(b'{"repos": [""]}', 422, "repos[0]", id="empty-name"),
        pytest.param(b'{"repos": ["a\\u0000b"]}', 422, "repos[0]", id="nul-in-name"),
        pytest.param(b'{"repos": ["alpha"], "dry_run": "yes"}', 422, "dry_run", id="string-bool"),
        pytest.param(b'{"repos": ["alpha"], "dry_run": 1}', 422, "dry_run", id="int-bool"),
        pytest.param(b'{"repos": ["alpha"], "dryrun": true}', 422, "dryrun", id="unknown-field"),
        pytest.param(b'["alpha"]', 422, "(body)", id="array-body"),
        pytest.param(b"null", 422, "(body)", id="null-body"),
        pytest.param(b'{"repos": ["alpha"]', 400, None, id="truncated-json"),
        pytest.param(b"", 400, None, id="empty-body"),
        pytest.param(b"\xff\xfe{}", 400, None, id="not-utf8"),
        pytest.param(b'{"repos": ["\\ud800"]}', 400, None, id="lone-surrogate"),
        pytest.param(b"{'repos': ['alpha']}", 400, None, id="single-quotes"),
        pytest.param(b'{"repos": ["alpha"]}' + b" " * (70 * 1024), 413, None, id="too-large"),
    ],
)
async def test_debug_reconcile_bad_bodies_are_refused_naming_the_field(
    ctx: ReconcilerContext, content: bytes, status: int, field: str | None
) -> None:
    fake = FakeReconcile()
    async with api_client(ctx, reconcile_fn=fake) as http:
        r = await http.post("/debug/reconcile", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["detail"]
    if field is not None:
        assert field in [f["field"] for f in body["fields"]]
        assert repr(field) in body["detail"]
    assert fake.calls == []


async def test_a_crashing_pass_is_a_logged_500_without_details(
    ctx: ReconcilerContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="greenloop.api")
    async with api_client(ctx, reconcile_fn=FakeReconcile(raises=RuntimeError("secret internals"))) as http:
        r = await http.post("/debug/reconcile", json={"repos": ["alpha"]})
    assert r.status_code == 500
    assert "secret internals" not in r.text
    assert any(rec.getMessage() == "api_handler_crashed" and rec.exc_info for rec in caplog.records)


# --- POST /runs -----------------------------------------------------------------------------------------


async def test_reported_run_is_stored_once_201_then_200(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    first = await http.post("/runs", json=_run())
    again = await http.post("/runs", json=_run())
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["created"] is True and again.json()["created"] is False
    assert first.json()["id"] == again.json()["id"]
    async with ctx.sessions() as session:
        rows = (await session.scalars(sa.select(JobRun))).all()
    assert len(rows) == 1
    row = rows[0]
    assert (row.project, row.source, row.job, row.run_id, row.run_attempt) == (
        "alpha",
        "reported",
        "nightly",
        "1001",
        1,
    )
    assert row.conclusion == "failure" and row.log_text and "AssertionError" in row.log_text
    assert row.created_at == datetime(2026, 1, 1, tzinfo=UTC)


async def test_reported_run_update_and_new_attempt_and_repo_name(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    r1 = await http.post("/runs", json=_run(status="in_progress", conclusion=None, log_text=None))
    r2 = await http.post("/runs", json=_run(log_text=None))  # the same run, now finished
    r3 = await http.post("/runs", json=_run(run_attempt=2, project="acme/alpha"))  # a re-run: a new row
    assert [r.status_code for r in (r1, r2, r3)] == [201, 200, 201]
    assert r2.json()["status"] == "completed" and r2.json()["conclusion"] == "failure"
    assert r3.json()["project"] == "alpha"
    async with ctx.sessions() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(JobRun)) == 2


async def test_reported_run_log_is_redacted_before_it_is_stored(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    secret = "ghp_" + "Z9y8X7w6" * 5
    r = await http.post("/runs", json=_run(log_text=f"cloning with token {secret}\nfailed"))
    assert r.status_code == 201
    async with ctx.sessions() as session:
        stored = await session.scalar(sa.select(JobRun.log_text))
    assert stored is not None and secret not in stored and "failed" in stored


async def test_reported_run_commit_message_and_log_url_are_redacted_before_they_are_stored(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    secret = "ghp_" + "Q1w2E3r4" * 5
    r = await http.post(
        "/runs",
        json=_run(
            log_text=None,
            commit_message=f"fix: rotate {secret}\n\nGreenloop-Attempt: abc123def456",
            log_url="https://ci-user:hunter2hunter2@ci.example/logs/1001.txt",
        ),
    )
    assert r.status_code == 201
    async with ctx.sessions() as session:
        row = await session.scalar(sa.select(JobRun))
    assert row is not None and row.commit_message is not None and row.log_url is not None
    assert secret not in row.commit_message and "Greenloop-Attempt: abc123def456" in row.commit_message
    assert "hunter2" not in row.log_url and "ci.example/logs/1001.txt" in row.log_url


async def test_reported_run_log_over_one_mebibyte_is_413(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    at_limit = await http.post("/runs", json=_run(log_text="x" * (1024 * 1024)))
    over = await http.post("/runs", json=_run(run_id="1002", log_text="x" * (1024 * 1024 + 1)))
    multibyte = await http.post("/runs", json=_run(run_id="1003", log_text="é" * (600 * 1024)))
    huge_body = await http.post("/runs", content=b'{"log_text": "' + b"y" * (9 * 1024 * 1024) + b'"}')
    assert at_limit.status_code == 201
    assert over.status_code == 413 and "log_url" in over.json()["detail"]
    assert multibyte.status_code == 413  # 1.2 MB of UTF-8 although 600 Ki characters
    assert huge_body.status_code == 413


async def test_reported_run_with_log_url_instead_of_text(http: httpx2.AsyncClient) -> None:
    r = await http.post("/runs", json=_run(log_text=None, log_url="https://ci.example/logs/1001.txt"))
    assert r.status_code == 201


async def test_reported_run_for_an_unknown_project_is_404(http: httpx2.AsyncClient) -> None:
    r = await http.post("/runs", json=_run(project="ghost"))
    assert r.status_code == 404
    assert r.json()["unknown"] == ["ghost"]


_FUTURE = (datetime.now(UTC) + timedelta(days=2)).isoformat()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        pytest.param({"project": ...}, "project", id="missing-project"),
        pytest.param({"status": "done"}, "status", id="bad-status"),
        pytest.param({"conclusion": "great"}, "conclusion", id="bad-conclusion"),
        pytest.param({"conclusion": None}, "(body)", id="completed-without-conclusion"),
        pytest.param({"status": "queued"}, "(body)", id="queued-with-conclusion"),
        pytest.param({"head_sha": "xyz"}, "head_sha", id="non-hex-sha"),
        pytest.param({"head_sha": "A" * 40}, "head_sha", id="uppercase-sha"),
        pytest.param({"run_id": -1}, "run_id", id="negative-int-run-id"),
        pytest.param({"run_id": True}, "run_id", id="bool-run-id"),
        pytest.param({"run_id": 1.5}, "run_id", id="float-run-id"),
        pytest.param({"run_id": "../1"}, "run_id", id="path-run-id"),
        pytest.param({"run_attempt": 0}, "run_attempt", id="zero-attempt"),
        pytest.param({"run_attempt": "2"}, "run_attempt", id="string-attempt"),
        pytest.param({"run_attempt": 1.5}, "run_attempt", id="float-attempt"),
        pytest.param({"run_attempt": True}, "run_attempt", id="bool-attempt"),
        pytest.param({"created_at": "2026-01-01T00:00:00"}, "created_at", id="naive-time"),
        pytest.param({"created_at": "yesterday"}, "created_at", id="not-a-time"),
        pytest.param({"created_at": _FUTURE}, "(body)", id="future-time"),
        pytest.param({"log_url": "file:///etc/passwd"}, "log_url", id="file-log-url"),
        pytest.param({"job": "a\u0000b"}, "job", id="nul-in-job"),
        pytest.param({"job": "j" * 201}, "job", id="long-job"),
        pytest.param({"log_text": ["a"]}, "log_text", id="list-log"),
        pytest.param({"extra": 1}, "extra", id="unknown-field"),
    ],
)
async def test_reported_run_bad_fields_are_422_naming_the_field(
    ctx: ReconcilerContext, http: httpx2.AsyncClient, overrides: dict[str, Any], field: str
) -> None:
    r = await http.post("/runs", json=_run(**overrides))
    assert r.status_code == 422, r.text
    assert field in [f["field"] for f in r.json()["fields"]]
    async with ctx.sessions() as session:
        assert await session.scalar(sa.select(sa.func.count()).select_from(JobRun)) == 0


# --- attempts -------------------------------------------------------------------------------------------


async def test_list_attempts_filters_and_pages(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    a = await _start(ctx.sessions, "alpha")
    b = await _start(ctx.sessions, "beta")
    c = await _start(ctx.sessions, "gamma")
    await attempt_store.transition(ctx.sessions, c, AttemptStatus.FAILED, reason="test")

    async def ids(**params: Any) -> list[str]:
        r = await http.get("/attempts", params=params)
        assert r.status_code == 200, r.text
        return [x["id"] for x in r.json()["attempts"]]

    assert await ids() == [c, b, a]
    assert await ids(project="beta") == [b]
    assert await ids(project="acme/alpha") == [a]
    assert await ids(status="pending") == [b, a]
    assert await ids(status="failed,pending") == [c, b, a]
    assert await ids(status=["failed", "running"]) == [c]
    assert await ids(limit=1, offset=1) == [b]
    assert await ids(offset=5) == []


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        pytest.param({"limit": "0"}, 422, "limit", id="limit-zero"),
        pytest.param({"limit": "501"}, 422, "limit", id="limit-huge"),
        pytest.param({"limit": "ten"}, 422, "limit", id="limit-text"),
        pytest.param({"offset": "-1"}, 422, "offset", id="negative-offset"),
        pytest.param({"status": "sleeping"}, 422, "status[0]", id="bad-status"),
        pytest.param({"sort": "id"}, 422, "sort", id="unknown-param"),
        pytest.param([("limit", "1"), ("limit", "2")], 422, "limit", id="repeated-param"),
        pytest.param({"project": "ghost"}, 404, None, id="unknown-project"),
    ],
)
async def test_list_attempts_bad_queries_are_refused(
    http: httpx2.AsyncClient, params: Any, status: int, field: str | None
) -> None:
    r = await http.get("/attempts", params=params)
    assert r.status_code == status, r.text
    if field is not None:
        assert field in [f["field"] for f in r.json()["fields"]]


async def test_get_attempt_shows_transcript_transitions_and_tool_calls(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    attempt_id = await _start(ctx.sessions, "alpha")
    transcript = [{"kind": "tool_call", "name": "read_repo_file", "input": {"path": "a.py"}}]
    await attempt_store.transition(
        ctx.sessions,
        attempt_id,
        AttemptStatus.RUNNING,
        reason="agent_started",
        branch="greenloop/fix-ci-x",
        transcript=json.dumps(transcript),
    )
    await attempt_store.transition(
        ctx.sessions,
        attempt_id,
        AttemptStatus.PR_OPEN,
        reason="pr_opened",
        pr_number=7,
        pr_url="http://forge/acme/alpha/pull/7",
        input_tokens=1000,
        output_tokens=200,
        cost_usd=0.42,
        report="Fixed it.",
    )
    async with ctx.sessions() as session, session.begin():
        for i, (tool, outcome) in enumerate((("read_repo_file", "ok"), ("write_repo_file", "refused"))):
            session.add(
                McpToolCall(
                    attempt_id=attempt_id,
                    project="alpha",
                    client="agent",
                    tool=tool,
                    arguments=json.dumps({"path": f"f{i}.py"}),
                    outcome=outcome,
                    message=None if outcome == "ok" else "Access denied.",
                    result_bytes=10 * i,
                    duration_ms=1.5,
                )
            )
        session.add(
            McpToolCall(
                attempt_id="other",
                project="alpha",
                client="agent",
                tool="list_repo_files",
                arguments="{}",
                outcome="ok",
                result_bytes=1,
                duration_ms=1.0,
            )
        )
    r = await http.get(f"/attempts/{attempt_id}")
    assert r.status_code == 200
    d = r.json()
    assert (d["status"], d["pr_number"], d["pr_url"]) == ("pr_open", 7, "http://forge/acme/alpha/pull/7")
    assert (d["input_tokens"], d["output_tokens"], d["cost_usd"], d["report"]) == (1000, 200, 0.42, "Fixed it.")
    assert d["transcript"] == transcript
    assert [(t["from_status"], t["to_status"]) for t in d["transitions"]] == [
        (None, "pending"),
        ("pending", "running"),
        ("running", "pr_open"),
    ]
    assert [(c["tool"], c["outcome"], c["arguments"]) for c in d["tool_calls"]] == [
        ("read_repo_file", "ok", {"path": "f0.py"}),
        ("write_repo_file", "refused", {"path": "f1.py"}),
    ]


async def test_get_attempt_with_unparseable_transcript_returns_the_text(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    attempt_id = await _start(ctx.sessions, "alpha")
    await attempt_store.heartbeat(ctx.sessions, attempt_id, transcript="not json {")
    r = await http.get(f"/attempts/{attempt_id}")
    assert r.json()["transcript"] == "not json {"


@pytest.mark.parametrize(
    "attempt_id",
    [
        pytest.param("nope", id="unknown"),
        pytest.param("x" * 5000, id="very-long"),
        pytest.param("%00", id="nul"),
        pytest.param("%27%20OR%201%3D1", id="sql-ish"),
    ],
)
async def test_unknown_attempts_are_404(http: httpx2.AsyncClient, attempt_id: str) -> None:
    assert (await http.get(f"/attempts/{attempt_id}")).status_code == 404
    assert (await http.post(f"/attempts/{attempt_id}/cancel")).status_code == 404


async def test_cancel_moves_an_active_attempt_to_cancelled_then_409(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    attempt_id = await _start(ctx.sessions, "alpha")
    await attempt_store.transition(ctx.sessions, attempt_id, AttemptStatus.RUNNING, reason="agent_started")
    r = await http.post(f"/attempts/{attempt_id}/cancel", json={"reason": "wrong approach"})
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    again = await http.post(f"/attempts/{attempt_id}/cancel")
    assert again.status_code == 409
    assert "'cancelled'" in again.json()["detail"]
    transitions = await attempt_store.attempt_transitions(ctx.sessions, attempt_id)
    assert (transitions[-1].from_status, transitions[-1].to_status) == ("running", "cancelled")
    assert transitions[-1].reason == "operator_cancel: wrong approach"
    assert ctx.metrics.value("greenloop_attempts_finished_total", outcome="cancelled") == 1
    # The project's one active slot is free again: a new attempt may start.
    assert (await _start(ctx.sessions, "alpha", sha="b" * 40)) != attempt_id


@pytest.mark.parametrize("final", [AttemptStatus.FAILED, AttemptStatus.ESCALATED, AttemptStatus.CANCELLED])
async def test_cancel_of_a_finished_attempt_is_409(
    ctx: ReconcilerContext, http: httpx2.AsyncClient, final: AttemptStatus
) -> None:
    attempt_id = await _start(ctx.sessions, "alpha")
    await attempt_store.transition(ctx.sessions, attempt_id, final, reason="test")
    r = await http.post(f"/attempts/{attempt_id}/cancel")
    assert r.status_code == 409
    assert (await attempt_store.get_attempt(ctx.sessions, attempt_id)).status == final.value  # type: ignore[union-attr]


async def test_cancel_with_a_bad_body_is_422(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    attempt_id = await _start(ctx.sessions, "alpha")
    r = await http.post(f"/attempts/{attempt_id}/cancel", json={"why": "x"})
    assert r.status_code == 422
    assert (await attempt_store.get_attempt(ctx.sessions, attempt_id)).status == "pending"  # type: ignore[union-attr]


# --- projects and the kill switch -----------------------------------------------------------------------


async def test_pause_resume_and_reset_change_the_project_state(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    paused = await http.post("/projects/alpha/pause", json={"reason": "release freeze"})
    assert paused.status_code == 200
    assert paused.json() | {"escalation_reset_at": None} == {
        "name": "alpha",
        "repo": "acme/alpha",
        "paused": True,
        "paused_by_config": False,
        "paused_by_operator": True,
        "escalation_reset_at": None,
        "active_attempt_id": None,
        "pr_stale": False,
        "escalated": False,
        "escalation_reason": None,
        "escalation_url": None,
    }
    row = await project_store.get_project(ctx.sessions, "alpha")
    assert row is not None and row.paused is True
    resumed = await http.post("/projects/acme/alpha/resume")  # by owner/name
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    before = datetime.now(UTC)
    reset = await http.post("/projects/alpha/reset")
    assert reset.status_code == 200
    assert datetime.fromisoformat(reset.json()["escalation_reset_at"]) >= before - timedelta(seconds=1)
    listed = {p["name"]: p for p in (await http.get("/projects")).json()["projects"]}
    assert set(listed) == set(NAMES)
    assert listed["alpha"]["paused"] is False and listed["alpha"]["escalation_reset_at"] is not None


async def test_resume_does_not_override_a_pause_in_the_configuration(sessions: SessionFactory) -> None:
    ctx = make_ctx(sessions, paused=["beta"])
    async with api_client(ctx) as http:
        r = await http.post("/projects/beta/resume")
    assert r.json()["paused"] is True and r.json()["paused_by_config"] is True
    assert r.json()["paused_by_operator"] is False


async def test_project_state_shows_the_active_attempt(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    attempt_id = await _start(ctx.sessions, "gamma")
    r = await http.post("/projects/gamma/pause")
    assert r.json()["active_attempt_id"] == attempt_id


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("POST", "/projects/ghost/pause", 404, id="unknown-project"),
        pytest.param("POST", "/projects/acme/ghost/reset", 404, id="unknown-repo"),
        pytest.param("POST", "/projects/alpha/explode", 404, id="unknown-action"),
        pytest.param("GET", "/projects/alpha/pause", 405, id="wrong-method"),
        pytest.param("DELETE", "/kill-switch", 405, id="delete-kill-switch"),
        pytest.param("GET", "/no/such/route", 404, id="no-route"),
    ],
)
async def test_unknown_projects_routes_and_methods_answer_json(
    http: httpx2.AsyncClient, method: str, path: str, status: int
) -> None:
    r = await http.request(method, path)
    assert r.status_code == status
    assert r.json()["detail"]


async def test_kill_switch_round_trip(ctx: ReconcilerContext, http: httpx2.AsyncClient) -> None:
    off_state = {"enabled": False, "runtime": False, "config": False, "cancelled": []}
    assert (await http.get("/kill-switch")).json() == off_state
    on = await http.post("/kill-switch", json={"enabled": True})
    assert on.json() == {"enabled": True, "runtime": True, "config": False, "cancelled": []}
    assert (await http.get("/kill-switch")).json()["enabled"] is True
    from reconciler.store.state import kill_switch_enabled

    assert await kill_switch_enabled(ctx.sessions) is True
    off = await http.post("/kill-switch", json={"enabled": False})
    assert off.json()["enabled"] is False


async def test_kill_switch_with_cancel_running_cancels_agents_but_not_open_pull_requests(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    running = await _start(ctx.sessions, "alpha")
    assert await attempt_store.transition(ctx.sessions, running, AttemptStatus.RUNNING, reason="agent_started")
    waiting = await _start(ctx.sessions, "beta")
    assert await attempt_store.transition(ctx.sessions, waiting, AttemptStatus.PR_OPEN, reason="pr_opened")

    r = await http.post("/kill-switch", json={"enabled": True, "cancel_running": True})

    assert r.status_code == 200
    assert r.json() == {"enabled": True, "runtime": True, "config": False, "cancelled": [running]}
    cancelled = await attempt_store.get_attempt(ctx.sessions, running)
    assert cancelled is not None and (cancelled.status, cancelled.stop_reason) == ("cancelled", "cancelled")
    trail = await attempt_store.attempt_transitions(ctx.sessions, running)
    assert trail[-1].reason == "operator_cancel: kill switch"
    left = await attempt_store.get_attempt(ctx.sessions, waiting)
    assert left is not None and left.status == "pr_open"
    # Turning it off never cancels anything.
    assert (await http.post("/kill-switch", json={"enabled": False, "cancel_running": True})).json()["cancelled"] == []


async def test_kill_switch_in_the_configuration_cannot_be_turned_off_at_run_time(sessions: SessionFactory) -> None:
    async with api_client(make_ctx(sessions, kill_switch=True)) as http:
        r = await http.post("/kill-switch", json={"enabled": False})
    assert r.json() == {"enabled": True, "runtime": False, "config": True, "cancelled": []}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"enabled": "true"}, id="string"),
        pytest.param({"enabled": 1}, id="int"),
        pytest.param({"enabled": None}, id="null"),
        pytest.param({}, id="missing"),
        pytest.param({"enabled": True, "for": "ever"}, id="extra"),
    ],
)
async def test_kill_switch_bad_bodies_are_422(ctx: ReconcilerContext, http: httpx2.AsyncClient, body: Any) -> None:
    r = await http.post("/kill-switch", json=body)
    assert r.status_code == 422
    assert (await http.get("/kill-switch")).json()["enabled"] is False


# --- logging --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "event"),
    [
        pytest.param("GET", "/healthz", None, "api_healthz", id="healthz"),
        pytest.param("GET", "/metrics", None, "api_metrics", id="metrics"),
        pytest.param("GET", "/openapi.json", None, "api_openapi", id="openapi"),
        pytest.param("POST", "/debug/reconcile", {"repos": ["alpha"]}, "api_debug_reconcile", id="debug"),
        pytest.param("POST", "/runs", _run(), "api_post_run", id="runs"),
        pytest.param("GET", "/attempts", None, "api_list_attempts", id="attempts"),
        pytest.param("GET", "/attempts/zz", None, "api_get_attempt", id="attempt"),
        pytest.param("POST", "/attempts/zz/cancel", None, "api_cancel_attempt", id="cancel"),
        pytest.param("GET", "/projects", None, "api_list_projects", id="projects"),
        pytest.param("POST", "/projects/alpha/pause", None, "api_pause_project", id="pause"),
        pytest.param("POST", "/projects/alpha/resume", None, "api_resume_project", id="resume"),
        pytest.param("POST", "/projects/alpha/reset", None, "api_reset_project", id="reset"),
        pytest.param("GET", "/kill-switch", None, "api_get_kill_switch", id="get-kill"),
        pytest.param("POST", "/kill-switch", {"enabled": True}, "api_post_kill_switch", id="post-kill"),
    ],
)
async def test_every_handler_logs_one_structured_event(
    http: httpx2.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: Any,
    event: str,
) -> None:
    caplog.set_level(logging.INFO, logger="greenloop.api")
    r = await http.request(method, path, json=body)
    records = [rec for rec in caplog.records if rec.name == "greenloop.api"]
    assert [rec.getMessage() for rec in records] == [event]
    fields = getattr(records[0], "greenloop_fields", {})
    assert fields["status"] == r.status_code and fields["method"] == method and fields["path"] == path
    assert isinstance(fields["duration_ms"], float)
    assert TOKEN not in json.dumps(fields, default=str)
    assert len(r.headers["x-request-id"]) == 16  # the same id is bound to every log event of the request


# --- the real pass --------------------------------------------------------------------------------------


async def test_debug_dry_run_with_the_real_pass_reports_and_starts_nothing(
    ctx: ReconcilerContext, http: httpx2.AsyncClient
) -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    for name, conclusion in (("alpha", "failure"), ("beta", "success"), ("gamma", "failure"), ("delta", "failure")):
        r = await http.post(
            "/runs", json=_run(project=name, conclusion=conclusion, created_at=t.isoformat(), log_text=None)
        )
        assert r.status_code == 201
    fake_free = build_api(ctx, api_token=TOKEN, reconcile_fn=reconcile)
    async with httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=fake_free), base_url="http://testserver", headers=AUTH
    ) as real:
        r = await real.post("/debug/reconcile", json={"repos": ["alpha", "acme/beta", "gamma"], "dry_run": True})
        assert r.status_code == 200, r.text
        summary = RunSummary.model_validate(r.json())
        assert (summary.trigger, summary.dry_run, summary.projects_scanned) == ("debug", True, 3)
        assert sorted(j.project for j in summary.red) == ["alpha", "gamma"]  # delta is not in the subset
        assert sorted((s.project, s.attempt_id) for s in summary.attempts_started) == [
            ("alpha", None),
            ("gamma", None),
        ]
        async with ctx.sessions() as session:
            assert await session.scalar(sa.select(sa.func.count()).select_from(Attempt)) == 0

        # The same pass for real starts exactly those attempts (no dispatcher here: they stay pending).
        r = await real.post("/debug/reconcile", json={"repos": ["alpha", "acme/beta", "gamma"]})
        started = {s.project: s.attempt_id for s in RunSummary.model_validate(r.json()).attempts_started}
        assert set(started) == {"alpha", "gamma"} and all(started.values())
        listed = (await real.get("/attempts", params={"status": "pending"})).json()["attempts"]
        assert sorted(a["project"] for a in listed) == ["alpha", "gamma"]
        assert ctx.metrics.value("greenloop_reconcile_passes_total", trigger="debug") == 2
        assert ctx.metrics.value("greenloop_attempts_started_total") == 2


# --- fuzzing: bad input is never a 500 ------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_POSTS = ("/debug/reconcile", "/runs", "/kill-switch", "/projects/alpha/pause", "/attempts/abc/cancel")
_VALID: dict[str, dict[str, Any]] = {
    "/debug/reconcile": {"repos": ["alpha"], "dry_run": True},
    "/runs": _run(),
    "/kill-switch": {"enabled": False},
    "/projects/alpha/pause": {"reason": "x"},
    "/attempts/abc/cancel": {"reason": "x"},
}


def mutate(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """`valid` with one field replaced, dropped or added, or replaced whole by JSON or by bytes."""
    body = dict(valid)
    how = draw(st.sampled_from(["replace", "drop", "add", "whole", "bytes"]))
    if how == "replace":
        body[draw(st.sampled_from(sorted(body)))] = draw(_JSON)
    elif how == "drop":
        body.pop(draw(st.sampled_from(sorted(body))))
    elif how == "add":
        body[draw(st.text(min_size=1, max_size=8))] = draw(_JSON)
    elif how == "whole":
        return json.dumps(draw(_JSON)).encode()
    else:
        return draw(st.binary(max_size=64))
    return json.dumps(body).encode()


@st.composite
def _mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(_POSTS))
    return path, mutate(draw, _VALID[path])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_mutated())
def test_fuzzed_bodies_never_cause_a_server_error(sqlite_db_url: str, case: tuple[str, bytes]) -> None:
    path, content = case

    async def send() -> httpx2.Response:
        engine = make_engine(sqlite_db_url)
        try:
            ctx = make_ctx(make_sessionmaker(engine))
            async with api_client(ctx) as http:
                return await http.post(path, content=content, headers={"content-type": "application/json"})
        finally:
            await engine.dispose()

    r = asyncio.run(send())
    assert r.status_code < 500, (path, content, r.text)
    if r.status_code >= 400:
        assert r.json()["detail"]


async def test_the_request_id_is_bound_to_every_event_of_the_request(ctx: ReconcilerContext) -> None:
    from infra.jsonlog import JsonFormatter, log_event

    lines: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Capture(level=logging.INFO)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("greenloop")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    async def pass_that_logs(c: ReconcilerContext, **kw: Any) -> RunSummary:
        log_event(logging.getLogger("greenloop.reconcile"), "inside_the_pass")
        return await FakeReconcile()(c, **kw)

    try:
        async with api_client(ctx, reconcile_fn=pass_that_logs) as http:
            r = await http.post("/debug/reconcile", json={"repos": ["alpha"]})
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    events = {e["event"]: e for e in map(json.loads, lines)}
    assert events["inside_the_pass"]["request_id"] == r.headers["x-request-id"]
    assert events["api_debug_reconcile"]["request_id"] == r.headers["x-request-id"]
