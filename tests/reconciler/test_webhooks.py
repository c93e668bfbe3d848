"""reconciler.webhooks: `POST /webhooks/github` on the real API app and store, through httpx2's ASGI transport.

Payloads are checked against the vendored schema subset (tests/data/github-webhooks, see its NOTICE.md), so
the receiver's models read only what GitHub sends, and the sample deliveries here have GitHub's shapes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import httpx2
import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from pydantic import BaseModel, SecretStr
from test_api import AUTH, SHA, api_client, make_ctx, mutate

from policy.config import ForgeSettings, load_config_text
from policy.errors import ConfigError
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.webhooks import (
    WEBHOOK_BODY_LIMIT,
    CheckRunEvent,
    CheckSuiteEvent,
    DeliveryLog,
    InstallationRepositoriesEvent,
    PingEvent,
    PullRequestEvent,
    WorkflowRunEvent,
    sign,
)

pytestmark = pytest.mark.anyio

SECRET = "webhook-secret-0123456789"
SUBSET = json.loads((Path(__file__).parents[1] / "data" / "github-webhooks" / "subset.json").read_text())["definitions"]
_REPO = {"id": 1, "full_name": "acme/alpha", "name": "alpha", "private": False}


def payload(definition: str, repo: str = "acme/alpha") -> dict[str, Any]:
    """A sample delivery body of `definition` (event$action), as GitHub shapes it (trimmed)."""
    event, _, action = definition.partition("$")
    repository = {**_REPO, "full_name": repo}
    run = {"id": 42, "head_sha": SHA, "conclusion": "failure", "status": "completed", "name": "ci"}
    bodies: dict[str, dict[str, Any]] = {
        "workflow_run": {"action": action, "repository": repository, "workflow_run": run, "workflow": {"id": 1}},
        "check_run": {"action": action, "repository": repository, "check_run": run},
        "check_suite": {"action": action, "repository": repository, "check_suite": run},
        "pull_request": {
            "action": action,
            "number": 7,
            "repository": repository,
            "pull_request": {"number": 7, "merged": action == "closed", "state": "closed"},
        },
        "installation_repositories": {
            "action": action,
            "repository_selection": "selected",
            "repositories_added": [{"id": 1, "full_name": repo}] if action == "added" else [],
            "repositories_removed": [{"id": 1, "full_name": repo}] if action == "removed" else [],
        },
        "ping": {"zen": "Keep it logically awesome.", "hook_id": 9, "hook": {"id": 9}},
    }
    return bodies[event]


class Recorder:
    """An `Enqueue` that records the keys."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, key: str) -> None:
        self.keys.append(key)


def with_secret(ctx: ReconcilerContext, secret: str | None = SECRET) -> ReconcilerContext:
    forge = ForgeSettings(webhook_secret=SecretStr(secret) if secret is not None else None)
    return dataclasses.replace(ctx, config=ctx.config.model_copy(update={"forge": forge}))


@pytest.fixture
def ctx(sessions: SessionFactory) -> ReconcilerContext:
    return with_secret(make_ctx(sessions))


def headers(body: bytes, event: str, *, delivery: str | None = None, secret: str = SECRET) -> dict[str, str]:
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": sign(secret, body),
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
    }


async def deliver(
    http: httpx2.AsyncClient, definition: str, *, repo: str = "acme/alpha", delivery: str | None = None
) -> httpx2.Response:
    body = json.dumps(payload(definition, repo)).encode()
    event = definition.partition("$")[0]
    return await http.post("/webhooks/github", content=body, headers=headers(body, event, delivery=delivery))


def refused(metrics: Metrics, reason: str) -> float:
    return metrics.value("greenloop_webhook_refused_total", reason=reason)


# --- the vendored schema -------------------------------------------------------------------------------------

HANDLED: dict[str, type[BaseModel]] = {
    "workflow_run$completed": WorkflowRunEvent,
    "check_run$completed": CheckRunEvent,
    "check_suite$completed": CheckSuiteEvent,
    "pull_request$closed": PullRequestEvent,
    "pull_request$synchronize": PullRequestEvent,
    "installation_repositories$added": InstallationRepositoriesEvent,
    "installation_repositories$removed": InstallationRepositoriesEvent,
    "ping$event": PingEvent,
}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    for candidate in (annotation, *getattr(annotation, "__args__", ())):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _check_against(model: type[BaseModel], schema: dict[str, Any], where: str) -> list[str]:
    """Every field the model reads exists in the schema; a field it requires is required there and non-null."""
    problems: list[str] = []
    if schema.get("type") == "array":
        schema = schema["items"]
    for name, info in model.model_fields.items():
        path = f"{where}.{name}"
        sub = schema.get("properties", {}).get(name)
        if sub is None:
            problems.append(f"{path}: not in GitHub's payload")
            continue
        if info.is_required() and name not in schema.get("required", []):
            problems.append(f"{path}: required by the model, optional in GitHub's payload")
        types = sub.get("type", [])
        if "null" in (types if isinstance(types, list) else [types]) and info.is_required():
            annotation = info.annotation
            if type(None) not in getattr(annotation, "__args__", ()):
                problems.append(f"{path}: GitHub may send null; the model refuses it")
        inner = _model_of(info.annotation) or _model_of(next(iter(getattr(info.annotation, "__args__", ())), None))
        if inner is not None:
            problems.extend(_check_against(inner, sub, path))
    return problems


@pytest.mark.parametrize("definition", sorted(HANDLED))
def test_the_payload_models_read_only_what_github_sends(definition: str) -> None:
    assert _check_against(HANDLED[definition], SUBSET[definition], definition) == []


def test_the_schema_check_catches_a_model_reading_a_field_github_does_not_send() -> None:
    class Wrong(BaseModel):
        action: str
        workflow_id: int  # not in the payload

    assert _check_against(Wrong, SUBSET["workflow_run$completed"], "x") == ["x.workflow_id: not in GitHub's payload"]


@pytest.mark.parametrize("definition", sorted(HANDLED))
def test_the_sample_deliveries_have_githubs_shape(definition: str) -> None:
    jsonschema.validate(payload(definition), SUBSET[definition])


# --- accepted ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("definition", sorted(d for d in HANDLED if not d.startswith("ping")))
async def test_a_signed_event_enqueues_its_project(ctx: ReconcilerContext, definition: str) -> None:
    wake = Recorder()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await deliver(http, definition)
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "accepted"
    assert r.json()["projects"] == ["alpha"]
    assert wake.keys == ["alpha"]
    event = definition.partition("$")[0]
    assert ctx.metrics.value("greenloop_webhook_deliveries_total", event=event, outcome="accepted") == 1
    assert ctx.metrics.value("greenloop_reconcile_wakeups_total", source="webhook") == 1


async def test_the_repository_is_matched_case_insensitively(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await deliver(http, "workflow_run$completed", repo="ACME/Alpha")
    assert r.status_code == 202
    assert wake.keys == ["alpha"]


async def test_ping_answers_pong_and_enqueues_nothing(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await deliver(http, "ping$event")
    assert r.status_code == 200
    assert r.json()["status"] == "pong"
    assert wake.keys == []


@pytest.mark.parametrize(
    ("definition", "repo", "reason"),
    [
        ("push$", "acme/alpha", "event not handled"),
        ("workflow_run$requested", "acme/alpha", "action 'requested'"),
        ("pull_request$opened", "acme/alpha", "action 'opened'"),
        ("workflow_run$completed", "acme/unknown", "no project watches it"),
    ],
)
async def test_other_events_are_202_and_ignored(
    ctx: ReconcilerContext, definition: str, repo: str, reason: str
) -> None:
    wake = Recorder()
    event = definition.partition("$")[0]
    body = json.dumps(payload(definition, repo) if event != "push" else {"ref": "refs/heads/main"}).encode()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await http.post("/webhooks/github", content=body, headers=headers(body, event))
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "ignored"
    assert r.json()["reason"] == reason
    assert wake.keys == []


async def test_an_api_built_without_a_runner_wakes_one_of_its_own_for_that_project(ctx: ReconcilerContext) -> None:
    from reconciler.api import build_api
    from reconciler.runner import Runner
    from reconciler.store.passes import recent_passes

    app = build_api(ctx, api_token="test-token-0123456789abcdef")
    runner = app.state.runner
    assert isinstance(runner, Runner)
    transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 5000))
    try:
        async with httpx2.AsyncClient(transport=transport, base_url="http://testserver") as http:
            for _ in range(3):  # coalesced while waiting: one event pass for the project
                r = await deliver(http, "workflow_run$completed")
                assert r.status_code == 202
            await asyncio.wait_for(runner.wait_idle(), 30)
        passes = await recent_passes(ctx.sessions, limit=10)
        assert [(p.trigger, p.projects_scanned) for p in passes] == [("event", 1)]
        assert '"projects_scanned":1' in (passes[0].summary or "")
    finally:
        await runner.aclose()


# --- bad input: refused, counted, nothing changed -------------------------------------------------------------


async def test_a_forged_signature_is_401_and_counted(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    body = json.dumps(payload("workflow_run$completed")).encode()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await http.post(
            "/webhooks/github", content=body, headers=headers(body, "workflow_run", secret="another-secret-0123456")
        )
        tampered = body.replace(b"acme/alpha", b"acme/beta")
        r2 = await http.post("/webhooks/github", content=tampered, headers=headers(body, "workflow_run"))
    assert (r.status_code, r2.status_code) == (401, 401)
    assert r.json()["error"] == "unauthorized"
    assert wake.keys == []
    assert refused(ctx.metrics, "bad_signature") == 2
    assert ctx.metrics.value("greenloop_webhook_deliveries_total", event="workflow_run", outcome="accepted") == 0


@pytest.mark.parametrize("value", ["", "sha1=" + "0" * 40, "sha256=" + "0" * 63, "sha256=" + "Z" * 64, "garbage"])
async def test_a_malformed_signature_header_is_401(ctx: ReconcilerContext, value: str) -> None:
    wake = Recorder()
    body = json.dumps(payload("workflow_run$completed")).encode()
    h = headers(body, "workflow_run") | {"X-Hub-Signature-256": value}
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await http.post("/webhooks/github", content=body, headers=h)
    assert r.status_code == 401
    assert wake.keys == []
    assert refused(ctx.metrics, "bad_signature") == 1


async def test_an_unsigned_delivery_is_401_and_counted(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    body = json.dumps(payload("workflow_run$completed")).encode()
    h = {k: v for k, v in headers(body, "workflow_run").items() if k != "X-Hub-Signature-256"}
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await http.post("/webhooks/github", content=body, headers=h)
        # The bearer token is no substitute for the signature on this route.
        r2 = await http.post("/webhooks/github", content=body, headers=h | AUTH)
    assert (r.status_code, r2.status_code) == (401, 401)
    assert wake.keys == []
    assert refused(ctx.metrics, "unsigned") == 2


async def test_a_replayed_delivery_is_answered_duplicate_and_enqueues_nothing(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        first = await deliver(http, "workflow_run$completed", delivery="d-1")
        again = await deliver(http, "workflow_run$completed", delivery="d-1")
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert wake.keys == ["alpha"]
    assert ctx.metrics.value("greenloop_webhook_deliveries_total", event="workflow_run", outcome="duplicate") == 1


async def test_an_oversized_delivery_is_413_and_counted(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    body = b'{"pad": "' + b"x" * WEBHOOK_BODY_LIMIT + b'"}'
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await http.post("/webhooks/github", content=body, headers=headers(body, "workflow_run"))
    assert r.status_code == 413
    assert wake.keys == []
    assert refused(ctx.metrics, "too_large") == 1


async def test_malformed_deliveries_are_refused_and_may_be_redelivered(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    not_json = b"{not json"
    wrong_shape = json.dumps({"action": "completed", "repository": {"full_name": 3}}).encode()
    good = json.dumps(payload("workflow_run$completed")).encode()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r1 = await http.post("/webhooks/github", content=not_json, headers=headers(not_json, "workflow_run"))
        r2 = await http.post("/webhooks/github", content=wrong_shape, headers=headers(wrong_shape, "workflow_run"))
        no_event = {k: v for k, v in headers(good, "workflow_run").items() if k != "X-GitHub-Event"}
        r3 = await http.post("/webhooks/github", content=good, headers=no_event)
        # The refused deliveries were not recorded: the same delivery id, now well-formed, is handled.
        h = headers(good, "workflow_run", delivery="same-id")
        r4 = await http.post(
            "/webhooks/github", content=wrong_shape, headers=h | {"X-Hub-Signature-256": sign(SECRET, wrong_shape)}
        )
        r5 = await http.post("/webhooks/github", content=good, headers=h)
    assert [r.status_code for r in (r1, r2, r3, r4, r5)] == [400, 422, 400, 422, 202]
    assert wake.keys == ["alpha"]
    assert refused(ctx.metrics, "malformed") == 4


async def test_without_a_secret_every_delivery_is_refused(sessions: SessionFactory) -> None:
    ctx = make_ctx(sessions)
    wake = Recorder()
    async with api_client(ctx, headers={}, enqueue=wake) as http:
        r = await deliver(http, "workflow_run$completed")
    assert r.status_code == 403
    assert wake.keys == []
    assert refused(ctx.metrics, "disabled") == 1


async def test_the_webhook_route_alone_is_exempt_from_the_bearer_token(ctx: ReconcilerContext) -> None:
    async with api_client(ctx, headers={}, enqueue=Recorder()) as http:
        hook = await deliver(http, "ping$event")
        runs = await http.post("/runs", json={})
        metrics = await http.get("/metrics")
    assert hook.status_code == 200
    assert runs.status_code == 401
    assert metrics.status_code == 401


async def test_refusals_show_in_metrics(ctx: ReconcilerContext) -> None:
    async with api_client(ctx, enqueue=Recorder()) as http:
        await http.post("/webhooks/github", content=b"{}", headers={"X-GitHub-Event": "ping"})
        text = (await http.get("/metrics")).text
    assert 'greenloop_webhook_refused_total{reason="unsigned"} 1' in text


async def test_webhook_answers_match_the_openapi_document(ctx: ReconcilerContext) -> None:
    async with api_client(ctx, headers={}, enqueue=Recorder()) as http:
        spec = OpenAPI.from_dict((await http.get("/openapi.json", headers=AUTH)).json())
        good = json.dumps(payload("workflow_run$completed")).encode()
        sent = [
            (good, headers(good, "workflow_run", delivery="x-1")),
            (good, headers(good, "workflow_run", delivery="x-1")),
            (good, headers(good, "ping")),
            (good, headers(good, "workflow_run", secret="wrong-secret-0123456789")),
            (b"[", headers(b"[", "workflow_run")),
        ]
        statuses = []
        for body, h in sent:
            r = await http.post("/webhooks/github", content=body, headers=h)
            statuses.append(r.status_code)
            request = MockRequest("http://testserver", "post", "/webhooks/github", headers=h, data=body)
            response = MockResponse(r.content, status_code=r.status_code, content_type=r.headers["content-type"])
            spec.validate_response(request, response)
    assert statuses == [202, 200, 422, 401, 400]


def test_the_delivery_log_is_bounded() -> None:
    log = DeliveryLog(size=2)
    for d in ("a", "b", "c"):
        log.add(d)
    assert len(log) == 2
    assert "a" not in log
    assert "b" in log
    assert "c" in log


def test_the_webhook_secret_comes_from_the_environment_and_is_never_shown() -> None:
    config = load_config_text("", env={"GREENLOOP_FORGE__WEBHOOK_SECRET": SECRET})
    assert config.forge.webhook_secret is not None
    assert config.forge.webhook_secret.get_secret_value() == SECRET
    assert SECRET not in repr(config)
    with pytest.raises(ConfigError, match="webhook_secret"):
        load_config_text("", env={"GREENLOOP_FORGE__WEBHOOK_SECRET": "short"})


# --- POST /runs wakes the loop the same way ------------------------------------------------------------------


def _reported(status: str = "completed") -> dict[str, Any]:
    run: dict[str, Any] = {"project": "alpha", "job": "nightly", "run_id": "cron-1", "status": status, "head_sha": SHA}
    if status == "completed":
        run["conclusion"] = "failure"
    return run


async def test_a_completed_reported_run_wakes_its_project(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    async with api_client(ctx, enqueue=wake) as http:
        running = await http.post("/runs", json=_reported("in_progress"))
        assert wake.keys == []
        done = await http.post("/runs", json=_reported())
    assert (running.status_code, done.status_code) == (201, 200)
    assert wake.keys == ["alpha"]
    assert ctx.metrics.value("greenloop_reconcile_wakeups_total", source="run") == 1


async def test_a_refused_reported_run_wakes_nothing(ctx: ReconcilerContext) -> None:
    wake = Recorder()
    async with api_client(ctx, enqueue=wake) as http:
        r = await http.post("/runs", json=_reported() | {"project": "nope"})
    assert r.status_code == 404
    assert wake.keys == []


# --- fuzzing ------------------------------------------------------------------------------------------------


@st.composite
def _deliveries(draw: st.DrawFn) -> tuple[str, bytes, bool]:
    definition = draw(st.sampled_from(sorted(HANDLED)))
    return definition.partition("$")[0], mutate(draw, payload(definition)), draw(st.booleans())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_deliveries())
def test_fuzzed_deliveries_never_cause_a_server_error_and_only_valid_ones_enqueue(
    sqlite_db_url: str, case: tuple[str, bytes, bool]
) -> None:
    event, content, signed = case
    wake = Recorder()

    async def send() -> httpx2.Response:
        engine = make_engine(sqlite_db_url)
        try:
            ctx = with_secret(make_ctx(make_sessionmaker(engine)))
            h = headers(content, event) if signed else headers(content, event, secret="not-the-secret-000000")
            async with api_client(ctx, headers={}, enqueue=wake) as http:
                return await http.post("/webhooks/github", content=content, headers=h)
        finally:
            await engine.dispose()

    r = asyncio.run(send())
    assert r.status_code < 500, (event, content, r.text)
    if not signed:
        assert r.status_code == 401
    if r.status_code >= 400:
        assert r.json()["detail"]
    accepted = r.status_code == 202 and r.json()["status"] == "accepted"
    assert wake.keys == (["alpha"] if accepted else [])
