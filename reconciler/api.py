"""The reconciler's HTTP API (Starlette): debug passes, reported runs, attempts, operator actions, health, metrics.

Every route except `GET /healthz` and `POST /webhooks/github` (signed instead: `reconciler.webhooks`) needs
`Authorization: Bearer <server.api_token>`, compared in constant time. Without a token `build_api` refuses
to build, unless the caller passes `allow_no_token=True`: then the app answers loopback clients only (403 for
anyone else) and `run_service` refuses to listen on a non-loopback address. That is for local development;
production sets a token of at least 16 characters.

Bad input is answered 400 (malformed JSON), 413 (too large) or 422 (a field missing, unknown, of the wrong
type or out of range: named in `fields`), never 500. Every handler logs one structured event
(`api_<route>`), with the status and duration. The HTTP plumbing (error answers, capped bodies, strict
parsing, the bearer guard) is in `reconciler.api_http`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeVar

from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from infra.jsonlog import bind_context, log_event
from policy.checks import CheckState
from policy.config import ProjectConfig
from policy.errors import ConfigError
from policy.redaction import redact
from policy.types import AttemptStatus
from reconciler import operations
from reconciler.api_http import (
    ApiError,
    BearerGuard,
    error_response,
    json_response,
    not_found,
    parse_body,
    parse_query,
)
from reconciler.api_models import (
    LOG_TEXT_LIMIT_BYTES,
    AttemptDetail,
    AttemptList,
    AttemptQuery,
    AttemptSummary,
    DebugReconcileRequest,
    Health,
    KillSwitchRequest,
    KillSwitchState,
    OperatorAction,
    ProjectList,
    ProjectState,
    ReportedRun,
    RunRecorded,
    ToolCall,
    TransitionRecord,
    openapi_document,
)
from reconciler.context import ReconcilerContext
from reconciler.errors import StoreBusy, StoreError
from reconciler.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from reconciler.operations import OperationRefused, ProjectAction, find_attempt, find_project
from reconciler.runner import Runner, UnknownProjects, reconcile
from reconciler.stale import is_stale
from reconciler.store import attempts as attempt_store
from reconciler.store import projects as project_store
from reconciler.store.audit import tool_calls
from reconciler.store.models import Attempt, JobRun, Project, utcnow
from reconciler.store.runs import record_reported_run
from reconciler.store.state import kill_switch_enabled, ping, set_kill_switch
from reconciler.store.views import stored_json
from reconciler.summary import RunSummary, Trigger
from reconciler.ui import ui_routes
from reconciler.wake import Enqueue, started_on_first_wake
from reconciler.webhooks import WEBHOOK_PATH, GitHubWebhooks

__all__ = ["MIN_TOKEN_LENGTH", "ReconcileFn", "build_api"]

logger = logging.getLogger("greenloop.api")

MIN_TOKEN_LENGTH: Final = 16
# A 1 MiB log can take up to six times that once JSON-escaped (\uXXXX); the decoded size is checked after.
_RUN_BODY: Final = 8 * LOG_TEXT_LIMIT_BYTES
_HEALTH_TIMEOUT_S: Final = 5.0
_MAX_ID_LEN: Final = 64

_M = TypeVar("_M", bound=BaseModel)


class ReconcileFn(Protocol):
    """The pass the API runs for `POST /debug/reconcile` (`reconciler.runner.reconcile`)."""

    async def __call__(
        self,
        ctx: ReconcilerContext,
        *,
        repos: Sequence[str] | None = None,
        trigger: Trigger = "cli",
        dry_run: bool = False,
    ) -> RunSummary: ...


# --- the app ----------------------------------------------------------------------------------------------

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


@dataclass
class _Api:
    ctx: ReconcilerContext
    reconcile_fn: ReconcileFn
    debug_timeout: float
    request_timeout: float
    enqueue: Enqueue

    # -- helpers --

    def project(self, key: str) -> ProjectConfig:
        return find_project(self.ctx, key)

    async def project_state(self, project: ProjectConfig, row: Project | None = None) -> ProjectState:
        if row is None:
            row = await project_store.get_project(self.ctx.sessions, project.name)
        active = await attempt_store.active_attempts(self.ctx.sessions, project.name)
        stale = await self.stale_prs(active)
        by_operator = bool(row.paused) if row is not None else False
        return ProjectState(
            name=project.name,
            repo=project.repo,
            paused=project.paused or by_operator,
            paused_by_config=project.paused,
            paused_by_operator=by_operator,
            escalation_reset_at=row.escalation_reset_at if row is not None else None,
            escalated=_escalated(row),
            escalation_reason=row.escalation_reason if _escalated(row) and row is not None else None,
            escalation_url=row.escalation_url if _escalated(row) and row is not None else None,
            active_attempt_id=active[0].id if active else None,
            pr_stale=bool(stale),
        )

    async def stale_prs(self, attempts: Sequence[Attempt]) -> set[str]:
        """The ids of `attempts` whose fix PR has been open longer than their project's `stale_pr_hours`."""
        now = utcnow()
        projects = {p.name: p for p in self.ctx.config.projects}
        candidates = [a for a in attempts if is_stale(projects.get(a.project), a, None, now)]
        since = await attempt_store.pr_open_since(self.ctx.sessions, [a.id for a in candidates])
        return {a.id for a in candidates if is_stale(projects.get(a.project), a, since.get(a.id), now)}

    async def kill_switch_state(self) -> KillSwitchState:
        runtime = await kill_switch_enabled(self.ctx.sessions)
        config = self.ctx.config.server.kill_switch
        return KillSwitchState(enabled=runtime or config, runtime=runtime, config=config)

    def endpoint(
        self, event: str, handler: Handler, *, timeout: float | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        limit = timeout if timeout is not None else self.request_timeout

        async def run(request: Request) -> Response:
            request_id = uuid.uuid4().hex[:16]
            with bind_context(request_id=request_id):
                response = await answer(request)
            response.headers["X-Request-Id"] = request_id
            return response

        async def answer(request: Request) -> Response:
            fields: dict[str, Any] = {}
            started = time.perf_counter()
            try:
                async with asyncio.timeout(limit):
                    response = await handler(request, fields)
            except OperationRefused as exc:
                exc_api = _refused(exc)
                fields["error"] = exc_api.body.error
                fields["detail"] = exc_api.body.detail
                response = error_response(exc_api)
            except ApiError as exc:
                fields["error"] = exc.body.error
                fields["detail"] = exc.body.detail
                response = error_response(exc)
            except TimeoutError:
                fields["error"] = "timeout"
                response = error_response(
                    ApiError(504, "timeout", f"Request timed out: no answer within {limit:g} seconds.")
                )
            except StoreBusy:
                fields["error"] = "store_busy"
                response = error_response(
                    ApiError(
                        503,
                        "store_busy",
                        "Store busy: the database stayed locked; try again.",
                        headers={"Retry-After": "1"},
                    )
                )
            except StoreError as exc:
                fields["error"] = "store_unavailable"
                fields["detail"] = str(exc)
                response = error_response(ApiError(503, "store_unavailable", "Store unavailable: see the server log."))
            except Exception:  # top-level handler: a bug here answers 500 and is logged with its traceback
                logger.exception("api_handler_crashed", extra={"greenloop_fields": {"handler": event}})
                fields["error"] = "internal"
                response = error_response(ApiError(500, "internal", "Internal error: see the server log."))
            level = logging.WARNING if response.status_code >= 500 else logging.INFO
            log_event(
                logger,
                event,
                level=level,
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                **fields,
            )
            return response

        return run

    # -- handlers --

    async def healthz(self, request: Request, fields: dict[str, Any]) -> Response:
        try:
            async with asyncio.timeout(_HEALTH_TIMEOUT_S):
                await ping(self.ctx.sessions)
        except (StoreError, TimeoutError) as exc:
            fields["db_error"] = exc.__class__.__name__
            return json_response(Health(status="unavailable", detail="database unreachable"), 503)
        return json_response(Health(status="ok"))

    async def metrics(self, request: Request, fields: dict[str, Any]) -> Response:
        if self.ctx.forge is not None:
            self.ctx.metrics.set_forge(self.ctx.forge.stats)
        return Response(self.ctx.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    async def openapi(self, request: Request, fields: dict[str, Any]) -> Response:
        return Response(json.dumps(openapi_document()), media_type="application/json")

    async def debug_reconcile(self, request: Request, fields: dict[str, Any]) -> Response:
        body = await parse_body(request, DebugReconcileRequest)
        fields.update(repos=body.repos, dry_run=body.dry_run)
        wanted = list(dict.fromkeys(body.repos)) if body.repos is not None else None  # None: every project
        unknown = [r for r in wanted or [] if not any(r in (p.name, p.repo) for p in self.ctx.config.projects)]
        if unknown:
            raise ApiError(
                404, "unknown_project", f"Unknown project(s): {', '.join(repr(u) for u in unknown)}.", unknown=unknown
            )
        try:
            async with asyncio.timeout(self.debug_timeout):
                summary = await self.reconcile_fn(self.ctx, repos=wanted, trigger="debug", dry_run=body.dry_run)
        except UnknownProjects as exc:
            names = [str(n) for n in exc.names]
            raise ApiError(404, "unknown_project", str(exc), unknown=names) from None
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"Reconcile pass timed out: no summary within {self.debug_timeout:g} seconds; the pass was "
                "cancelled (agents it had already dispatched keep running) and the next pass picks up from the "
                "current state.",
            ) from None
        fields.update(
            projects_red=summary.projects_red,
            attempts_started=len(summary.attempts_started),
            errors=len(summary.errors),
        )
        return json_response(summary)

    async def post_run(self, request: Request, fields: dict[str, Any]) -> Response:
        body = await parse_body(request, ReportedRun, limit=_RUN_BODY)
        project = self.project(body.project)
        fields.update(project=project.name, job=body.job, run_id=body.run_id, run_attempt=body.run_attempt)
        if body.log_text is not None:
            size = len(body.log_text.encode("utf-8", "surrogatepass"))
            if size > LOG_TEXT_LIMIT_BYTES:
                raise ApiError(
                    413,
                    "too_large",
                    f"Log too large: 'log_text' is {size} bytes; the limit is {LOG_TEXT_LIMIT_BYTES} (send 'log_url').",
                )
        await self.ctx.ensure_projects()
        # Security: logs leave the job's sandbox here; secrets they print are redacted before they are stored.
        log_text = redact(body.log_text) if body.log_text is not None else None
        row, created = await _record_reported_run(self, project.name, body, log_text)
        fields["created"] = created
        if row.status == "completed":  # a finished run may be red: the loop looks at the project now
            self.enqueue(project.name)
            self.ctx.metrics.observe_wakeup("run")
        out = RunRecorded(
            id=row.id,
            project=row.project,
            job=row.job,
            run_id=row.run_id,
            run_attempt=row.run_attempt,
            status=row.status,
            conclusion=row.conclusion,
            created=created,
        )
        return json_response(out, 201 if created else 200)

    async def list_attempts(self, request: Request, fields: dict[str, Any]) -> Response:
        query = parse_query(request, AttemptQuery, lists=frozenset({"status"}))
        name = self.project(query.project).name if query.project is not None else None
        fields.update(project=name, limit=query.limit, offset=query.offset)
        rows = await attempt_store.list_attempts(
            self.ctx.sessions, project=name, statuses=query.status, limit=query.limit, offset=query.offset
        )
        fields["count"] = len(rows)
        stale = await self.stale_prs(rows)
        attempts = [_summary(a, stale=a.id in stale) for a in rows]
        return json_response(AttemptList(attempts=attempts, limit=query.limit, offset=query.offset))

    async def get_attempt(self, request: Request, fields: dict[str, Any]) -> Response:
        attempt = await self.attempt(request, fields)
        transitions = await attempt_store.attempt_transitions(self.ctx.sessions, attempt.id)
        calls = await tool_calls(self.ctx.sessions, attempt_id=attempt.id)
        detail = AttemptDetail(
            **_summary(attempt, stale=attempt.id in await self.stale_prs([attempt])).model_dump(),
            fingerprint=attempt.fingerprint,
            pushed_sha=attempt.pushed_sha,
            merged_sha=attempt.merged_sha,
            trace_id=attempt.trace_id,
            heartbeat_at=attempt.heartbeat_at,
            report=attempt.report,
            transcript=stored_json(attempt.transcript),
            transitions=[
                TransitionRecord(from_status=t.from_status, to_status=t.to_status, reason=t.reason, at=t.at)
                for t in transitions
            ],
            tool_calls=[
                ToolCall(
                    id=c.id,
                    tool=c.tool,
                    outcome=c.outcome,
                    arguments=stored_json(c.arguments),
                    message=c.message,
                    result_bytes=c.result_bytes,
                    duration_ms=c.duration_ms,
                    client=c.client,
                    created_at=c.created_at,
                )
                for c in calls
            ],
        )
        return json_response(detail)

    async def attempt(self, request: Request, fields: dict[str, Any]) -> Attempt:
        attempt_id = str(request.path_params["id"])
        fields["attempt_id"] = attempt_id[:_MAX_ID_LEN]
        return await find_attempt(self.ctx, attempt_id)

    async def cancel_attempt(self, request: Request, fields: dict[str, Any]) -> Response:
        attempt = await self.attempt(request, fields)
        action = await parse_body(request, OperatorAction, optional=True)
        fields.update(project=attempt.project, reason=action.reason)
        done = await operations.cancel_attempt(self.ctx, attempt, reason=action.reason)
        fields.update(from_status=done.from_status, pr_closed=done.pr_closed)
        if done.agent_stopped is not None:
            fields["agent_stopped"] = done.agent_stopped
        return json_response(_summary(done.attempt))

    async def list_projects(self, request: Request, fields: dict[str, Any]) -> Response:
        await self.ctx.ensure_projects()
        states = [await self.project_state(p) for p in self.ctx.config.projects]
        fields["count"] = len(states)
        return json_response(ProjectList(projects=states))

    def project_action(self, action_name: ProjectAction) -> Handler:
        async def handle(request: Request, fields: dict[str, Any]) -> Response:
            project = self.project(str(request.path_params["name"]))
            action = await parse_body(request, OperatorAction, optional=True)
            fields.update(project=project.name, reason=action.reason)
            row = await operations.project_action(self.ctx, project, action_name)
            return json_response(await self.project_state(project, row))

        return handle

    async def get_kill_switch(self, request: Request, fields: dict[str, Any]) -> Response:
        state = await self.kill_switch_state()
        fields.update(enabled=state.enabled)
        return json_response(state)

    async def post_kill_switch(self, request: Request, fields: dict[str, Any]) -> Response:
        body = await parse_body(request, KillSwitchRequest)
        await set_kill_switch(self.ctx.sessions, body.enabled)
        state = await self.kill_switch_state()
        if body.enabled and body.cancel_running:
            cancelled = await operations.cancel_running(self.ctx, reason="kill switch")
            state = state.model_copy(update={"cancelled": [c.attempt.id for c in cancelled]})
            fields.update(cancelled=len(cancelled))
        fields.update(requested=body.enabled, enabled=state.enabled)
        return json_response(state)


def _refused(exc: OperationRefused) -> ApiError:
    if exc.kind == "conflict":
        return ApiError(409, "conflict", str(exc))
    if exc.kind == "unknown_project":
        return ApiError(404, "unknown_project", str(exc), unknown=[exc.name])
    return ApiError(404, "unknown_attempt", str(exc))


def _escalated(row: Project | None) -> bool:
    """Whether the project's newest escalation came after its last reset."""
    if row is None or row.escalated_at is None:
        return False
    return row.escalation_reset_at is None or row.escalated_at > row.escalation_reset_at


def _summary(a: Attempt, *, stale: bool = False) -> AttemptSummary:
    return AttemptSummary(
        id=a.id,
        project=a.project,
        job=a.job,
        status=AttemptStatus(a.status),
        run_id=a.run_id,
        head_sha=a.head_sha,
        branch=a.branch,
        pr_number=a.pr_number,
        pr_url=a.pr_url,
        stop_reason=a.stop_reason,
        checks=CheckState(a.checks) if a.checks else None,
        failure_class=a.failure_class,
        revisions=a.revisions,
        model=a.model,
        generation=a.generation,
        pr_stale=stale,
        stale_announced_at=a.stale_announced_at,
        input_tokens=a.input_tokens,
        output_tokens=a.output_tokens,
        cache_tokens=a.cache_tokens,
        cost_usd=a.cost_usd,
        turns=a.turns,
        agent_seconds=a.agent_seconds,
        created_at=a.created_at,
        updated_at=a.updated_at,
        finished_at=a.finished_at,
    )


async def _record_reported_run(api: _Api, project: str, body: ReportedRun, log_text: str | None) -> tuple[JobRun, bool]:
    """Insert the run if it is new (True), else update its status/log through the store's upsert (False)."""
    values: dict[str, Any] = {
        "project": project,
        "job": body.job,
        "run_id": body.run_id,
        "source": "reported",
        "status": body.status,
        "conclusion": body.conclusion,
        "head_sha": body.head_sha,
        "event": body.event,
        "triggered_by": body.triggered_by,
        "commit_message": redact(body.commit_message) if body.commit_message is not None else None,
        "log_text": log_text,
        "log_url": redact(body.log_url) if body.log_url is not None else None,  # credentials in URLs
        "run_attempt": body.run_attempt,
        "created_at": body.created_at or utcnow(),
    }
    return await record_reported_run(api.ctx.sessions, **values)


def build_api(
    ctx: ReconcilerContext,
    *,
    api_token: str | None,
    reconcile_fn: ReconcileFn = reconcile,
    allow_no_token: bool = False,
    debug_timeout_seconds: float = 30.0,
    request_timeout_seconds: float = 30.0,
    enqueue: Enqueue | None = None,
) -> Starlette:
    """The reconciler's HTTP API as a Starlette app (see the module docstring for the routes and rules).

    `enqueue` wakes the loop for one project (webhooks, reported runs): `greenloop run` passes its runner's
    `Runner.enqueue`; without one, the API gets a `Runner` of its own on `ctx`, started on the first wake-up
    (`reconciler.wake.started_on_first_wake`) and kept in `app.state.runner` (None when `enqueue` is given).
    `reconcile_fn` serves `POST /debug/reconcile` only.

    Raises:
        ConfigError: no token and `allow_no_token` is False, or a token shorter than 16 characters.
    """
    token = api_token or None
    if token is None and not allow_no_token:
        raise ConfigError(
            "server.api_token: not set: the HTTP API needs a bearer token (set GREENLOOP_SERVER__API_TOKEN), "
            "or serve loopback only in development."
        )
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"server.api_token: too short: use at least {MIN_TOKEN_LENGTH} random characters.")
    runner: Runner | None = None
    wake: Enqueue
    if enqueue is None:
        runner = Runner(ctx)
        wake = started_on_first_wake(runner)
    else:
        wake = enqueue
    webhooks = GitHubWebhooks(
        secret=ctx.config.forge.webhook_secret, projects=ctx.config.projects, enqueue=wake, metrics=ctx.metrics
    )
    api = _Api(
        ctx=ctx,
        reconcile_fn=reconcile_fn,
        enqueue=wake,
        debug_timeout=debug_timeout_seconds,
        # The debug pass has its own, more precise timeout message; the outer one is a backstop.
        request_timeout=request_timeout_seconds,
    )
    e = api.endpoint
    routes = [
        Route("/healthz", e("api_healthz", api.healthz), methods=["GET"]),
        Route("/metrics", e("api_metrics", api.metrics), methods=["GET"]),
        Route("/openapi.json", e("api_openapi", api.openapi), methods=["GET"]),
        Route(
            "/debug/reconcile",
            e("api_debug_reconcile", api.debug_reconcile, timeout=debug_timeout_seconds + 5.0),
            methods=["POST"],
        ),
        Route("/runs", e("api_post_run", api.post_run), methods=["POST"]),
        Route(WEBHOOK_PATH, e("api_webhook", webhooks.handle), methods=["POST"]),
        Route("/attempts", e("api_list_attempts", api.list_attempts), methods=["GET"]),
        Route("/attempts/{id}", e("api_get_attempt", api.get_attempt), methods=["GET"]),
        Route("/attempts/{id}/cancel", e("api_cancel_attempt", api.cancel_attempt), methods=["POST"]),
        Route("/projects", e("api_list_projects", api.list_projects), methods=["GET"]),
        # `{name:path}`: a project may be named by its owner/name repository, which contains a slash.
        Route("/projects/{name:path}/pause", e("api_pause_project", api.project_action("pause")), methods=["POST"]),
        Route("/projects/{name:path}/resume", e("api_resume_project", api.project_action("resume")), methods=["POST"]),
        Route("/projects/{name:path}/reset", e("api_reset_project", api.project_action("reset")), methods=["POST"]),
        Route("/kill-switch", e("api_get_kill_switch", api.get_kill_switch), methods=["GET"]),
        Route("/kill-switch", e("api_post_kill_switch", api.post_kill_switch), methods=["POST"]),
    ]
    ui = ui_routes(ctx, token=token.encode() if token is not None else None)  # the operators' pages at /ui
    app = Starlette(routes=[*routes, *ui], exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(
        BearerGuard, token=token.encode() if token is not None else None, exempt=frozenset({"/healthz", WEBHOOK_PATH})
    )
    app.state.enqueue = wake
    app.state.runner = runner
    return app
