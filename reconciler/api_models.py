"""The HTTP API's request and response bodies (pydantic), and the OpenAPI document built from their schemas.

Requests are strict (`extra="forbid"`, no type coercion: `"true"` is not a boolean, `1.0` not an integer)
so a wrong field is refused with its name rather than guessed at. Every string refuses NUL characters:
PostgreSQL cannot store them, and no legitimate value carries one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import models_json_schema

from policy.checks import CheckState
from policy.types import AttemptStatus
from reconciler.summary import RunSummary

__all__ = [
    "LOG_TEXT_LIMIT_BYTES",
    "AttemptDetail",
    "AttemptList",
    "AttemptQuery",
    "AttemptSummary",
    "DebugReconcileRequest",
    "ErrorBody",
    "FieldError",
    "Health",
    "KillSwitchRequest",
    "KillSwitchState",
    "OperatorAction",
    "ProjectList",
    "ProjectState",
    "ReportedRun",
    "RunRecorded",
    "ToolCall",
    "TransitionRecord",
    "WebhookAnswer",
    "openapi_document",
]

LOG_TEXT_LIMIT_BYTES: Final = 1024 * 1024
# A run reported with a creation time further ahead than this is refused: it would stay "the latest run"
# of its job (pinning it red or green) until the clock caught up.
_MAX_CLOCK_SKEW: Final = timedelta(minutes=5)


# In the schema (not a validator) so that fuzzers generating from the OpenAPI document know the rule.
Text = Annotated[str, Field(pattern=r"^[^\x00]*$")]
ProjectKey = Annotated[
    Text, Field(min_length=1, max_length=201, description="A project's name, or its repository as owner/name.")
]


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ----------------------------------------------------------------------------------------------


class DebugReconcileRequest(_Request):
    """`POST /debug/reconcile`: run one pass over just these projects."""

    repos: Annotated[
        list[ProjectKey] | None,
        Field(min_length=1, max_length=1000, description="Project names or owner/name; absent or null: every project."),
    ] = None
    dry_run: bool = False


def _number_as_text(value: Any) -> Any:
    # GitHub's run ids are JSON numbers; a scheduler forwarding one as is should not get a 422.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    return value


_RUN_ID_PATTERN: Final = r"^[A-Za-z0-9._:-]+$"
RunId = Annotated[
    str,
    BeforeValidator(_number_as_text),
    Field(min_length=1, max_length=100, pattern=_RUN_ID_PATTERN),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 100, "pattern": _RUN_ID_PATTERN},
                {"type": "integer", "minimum": 0},
            ],
            "description": "The run's id: a string, or a non-negative integer (GitHub's are numbers).",
        }
    ),
]
"""A run id as sent: a string, or a non-negative integer kept as its decimal text."""

RunStatus = Literal["queued", "in_progress", "completed"]
RunConclusion = Literal[
    "success",
    "failure",
    "cancelled",
    "timed_out",
    "skipped",
    "neutral",
    "action_required",
    "startup_failure",
    "stale",
]


class ReportedRun(_Request):
    """`POST /runs`: one run of a job, reported by an outside scheduler or a job sidecar.

    `log_text` is capped at 1 MiB of UTF-8 (a larger log is refused with 413: send `log_url` instead).
    `created_at` defaults to the time the report is received and may not be more than five minutes ahead.
    """

    project: ProjectKey
    job: Annotated[Text, Field(min_length=1, max_length=200)]
    run_id: RunId
    status: RunStatus
    conclusion: RunConclusion | None = None
    head_sha: Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$", description="Lowercase hex commit id.")]
    triggered_by: Annotated[Text, Field(min_length=1, max_length=200)] | None = None
    event: Annotated[Text, Field(min_length=1, max_length=64)] = "schedule"
    commit_message: Annotated[Text, Field(max_length=65536)] | None = None
    run_attempt: Annotated[int, Field(ge=1, le=1000)] = 1
    log_text: Text | None = None
    log_url: Annotated[str, Field(max_length=2048), AfterValidator(_http_url)] | None = None
    created_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ReportedRun:
        if self.status == "completed" and self.conclusion is None:
            raise ValueError("conclusion is required when status is 'completed'")
        if self.status != "completed" and self.conclusion is not None:
            raise ValueError(f"conclusion must be null while status is {self.status!r}")
        if self.created_at is not None and self.created_at > datetime.now(UTC) + _MAX_CLOCK_SKEW:
            raise ValueError("created_at is in the future")
        return self


class KillSwitchRequest(_Request):
    """`POST /kill-switch`: stop (true) or allow (false) every new remediation, on every replica."""

    enabled: bool
    cancel_running: bool = Field(
        default=False,
        description="With enabled=true: also cancel every attempt whose agent is running now (pending or running), "
        "as POST /attempts/{id}/cancel does.",
    )


class OperatorAction(_Request):
    """Optional body of the operator actions: why (kept in the logs, and in the transition for a cancel)."""

    reason: Annotated[Text, Field(max_length=500)] | None = None


class AttemptQuery(BaseModel):
    """Query string of `GET /attempts` (values arrive as text; `status` may repeat or be comma-separated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: ProjectKey | None = None
    status: list[AttemptStatus] | None = None
    limit: Annotated[int, Field(ge=1, le=500)] = 50
    offset: Annotated[int, Field(ge=0, le=1_000_000)] = 0


# --- responses ---------------------------------------------------------------------------------------------


class FieldError(_Response):
    """One invalid field: where (`field`, e.g. `repos[0]`) and what is wrong with it."""

    field: str
    message: str


class ErrorBody(_Response):
    """Every error answer: a machine-readable `error`, a sentence in `detail`, and specifics when known."""

    error: str
    detail: str
    fields: list[FieldError] | None = None
    unknown: list[str] | None = None


class Health(_Response):
    """`GET /healthz`."""

    status: Literal["ok", "unavailable"]
    detail: str | None = None


class RunRecorded(_Response):
    """`POST /runs`: the stored row (201 when new, 200 when this run was already recorded)."""

    id: int
    project: str
    job: str
    run_id: str
    run_attempt: int
    source: Literal["reported"] = "reported"
    status: str
    conclusion: str | None
    created: bool


class AttemptSummary(_Response):
    """One attempt, as listed."""

    id: str
    project: str
    job: str
    status: AttemptStatus
    run_id: str
    head_sha: str
    branch: str | None
    pr_number: int | None
    pr_url: str | None
    stop_reason: str | None
    checks: CheckState | None = Field(
        description="The fix PR head's checks as the reconciler last read them (null before a PR)."
    )
    failure_class: str | None = Field(
        description="transient (the outside stopped it) or permanent; null unless failed."
    )
    revisions: int = Field(
        default=0, description="Revision rounds so far: times the fix PR's checks failed and the agent went back to it."
    )
    model: str | None = Field(
        description="The model the attempt runs with: the project's, or its fallback_model past the spend notice."
    )
    generation: int = Field(
        default=0,
        description="Which attempt at this failure: 0 first, +1 after a transient failure or an operator reset.",
    )
    pr_stale: bool = Field(
        default=False, description="pr_open for longer than the project's stale_pr_hours (announced once)."
    )
    stale_announced_at: datetime | None = None
    input_tokens: int
    output_tokens: int
    cache_tokens: int
    cost_usd: float
    turns: int
    agent_seconds: float = Field(default=0.0, description="Wall-clock seconds of every agent run of the attempt.")
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class AttemptList(_Response):
    """`GET /attempts`: newest first."""

    attempts: list[AttemptSummary]
    limit: int
    offset: int


class TransitionRecord(_Response):
    """One status change of an attempt (`from_status` is null for its creation)."""

    from_status: str | None
    to_status: str
    reason: str | None
    at: datetime


class ToolCall(_Response):
    """One MCP tool call made during the attempt (arguments already redacted when recorded)."""

    id: int
    tool: str
    outcome: str
    arguments: Any
    message: str | None
    result_bytes: int
    duration_ms: float
    client: str
    created_at: datetime


class AttemptDetail(AttemptSummary):
    """`GET /attempts/{id}`: the attempt with its report, transcript, transitions and tool calls."""

    fingerprint: str
    pushed_sha: str | None
    merged_sha: str | None
    trace_id: str | None
    heartbeat_at: datetime | None
    report: str | None
    transcript: Any = Field(description="The agent transcript as JSON (the stored text when it is not JSON).")
    transitions: list[TransitionRecord]
    tool_calls: list[ToolCall]


class ProjectState(_Response):
    """A project's run-time state. `paused` is true when either the configuration or an operator paused it."""

    name: str
    repo: str
    paused: bool
    paused_by_config: bool
    paused_by_operator: bool
    escalation_reset_at: datetime | None
    escalated: bool = Field(description="A failure of this project is with a human (escalated after the last reset).")
    escalation_reason: str | None
    escalation_url: str | None = Field(description="The PR comment or issue holding the escalation report.")
    active_attempt_id: str | None
    pr_stale: bool = Field(
        default=False,
        description="The active attempt's fix PR has been open longer than stale_pr_hours; nothing else starts "
        "on the project until it is merged, closed or cancelled.",
    )


class ProjectList(_Response):
    """`GET /projects`: every configured project."""

    projects: list[ProjectState]


class WebhookAnswer(_Response):
    """`POST /webhooks/github`: a delivery that was not refused, and the projects it woke (if any)."""

    status: Literal["accepted", "ignored", "duplicate", "pong"]
    event: str
    delivery: str
    projects: list[str] = []
    reason: str | None = None


class KillSwitchState(_Response):
    """`GET/POST /kill-switch`. `enabled` is the effective value: the configuration's or the run-time flag."""

    enabled: bool
    runtime: bool
    config: bool
    cancelled: list[str] = Field(
        default_factory=list, description="POST with cancel_running: the attempts this request cancelled."
    )


# --- OpenAPI -----------------------------------------------------------------------------------------------

_REQUESTS: Final[tuple[type[BaseModel], ...]] = (
    DebugReconcileRequest,
    ReportedRun,
    KillSwitchRequest,
    OperatorAction,
)
_RESPONSES: Final[tuple[type[BaseModel], ...]] = (
    ErrorBody,
    Health,
    RunRecorded,
    AttemptList,
    AttemptDetail,
    AttemptSummary,
    ProjectState,
    ProjectList,
    KillSwitchState,
    RunSummary,
    WebhookAnswer,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Malformed JSON.",
        401: "Missing or wrong bearer token.",
        403: "Refused: no token is configured and the client is not on loopback.",
        404: "Unknown project or attempt.",
        409: "The attempt already finished.",
        413: "Body or log too large.",
        422: "A field is missing, of the wrong type, unknown or out of range (named in `fields`).",
        503: "The store is unavailable or busy.",
        504: "The reconcile pass did not finish in time.",
    }
    return {str(c): _json("ErrorBody", text[c]) for c in (401, 403, 503, *codes)}


def _body(name: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def openapi_document() -> dict[str, Any]:
    """The API described as OpenAPI 3.1 (component schemas are the pydantic models' JSON schemas)."""
    _keys, schemas = models_json_schema(
        [(m, "validation") for m in _REQUESTS] + [(m, "serialization") for m in _RESPONSES],
        ref_template="#/components/schemas/{model}",
    )
    project = _path_param("name", "A project's name, or its owner/name repository.")
    attempt = _path_param("id", "An attempt id.")
    action = _body("OperatorAction", required=False)
    state = _json("ProjectState", "The project's state after the action.")
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "summary": "Whether the store answers (no token needed).",
                "security": [],
                "responses": {
                    "200": _json("Health", "The store answered."),
                    "503": _json("Health", "The store did not answer."),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format 0.0.4).",
                "responses": {
                    "200": {"description": "Metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **{k: v for k, v in _errors().items() if k != "503"},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document.",
                "responses": {
                    "200": {"description": "OpenAPI 3.1.", "content": {"application/json": {"schema": {}}}},
                    **{k: v for k, v in _errors().items() if k != "503"},
                },
            }
        },
        "/debug/reconcile": {
            "post": {
                "summary": "Run one pass over the named projects now (in a dry run, start nothing).",
                "requestBody": _body("DebugReconcileRequest"),
                "responses": {"200": _json("RunSummary", "What the pass did."), **_errors(400, 404, 413, 422, 504)},
            }
        },
        "/runs": {
            "post": {
                "summary": "Record a run reported by a scheduler or job sidecar (idempotent).",
                "requestBody": _body("ReportedRun"),
                "responses": {
                    "200": _json("RunRecorded", "This run was already recorded (its status and log are updated)."),
                    "201": _json("RunRecorded", "A new run was recorded."),
                    **_errors(400, 404, 413, 422),
                },
            }
        },
        "/webhooks/github": {
            "post": {
                "summary": "A GitHub App webhook delivery: wakes the projects of the repository it names. Signed "
                "(X-Hub-Signature-256 with forge.webhook_secret) instead of the bearer token.",
                "security": [],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {
                    "200": _json("WebhookAnswer", "A ping (pong) or a delivery already handled (duplicate)."),
                    "202": _json("WebhookAnswer", "Accepted (projects enqueued) or ignored."),
                    "400": _json("ErrorBody", "Not JSON, or X-GitHub-Event / X-GitHub-Delivery missing."),
                    "401": _json("ErrorBody", "Unsigned, or the signature does not match the body."),
                    "403": _json("ErrorBody", "Webhooks are off: forge.webhook_secret is not configured."),
                    "413": _json("ErrorBody", "Body too large."),
                    "422": _json("ErrorBody", "JSON of the wrong shape for its event."),
                    "503": _json("ErrorBody", "The store is unavailable or busy."),
                },
            }
        },
        "/attempts": {
            "get": {
                "summary": "Attempts, newest first.",
                "parameters": [
                    {"name": "project", "in": "query", "required": False, "schema": {"type": "string"}},
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "description": "Repeat, or separate with commas.",
                        "schema": {
                            "type": "array",
                            "items": {"type": "string", "enum": [s.value for s in AttemptStatus]},
                        },
                        "style": "form",
                        "explode": True,
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    },
                    {
                        "name": "offset",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "integer", "minimum": 0, "maximum": 1_000_000, "default": 0},
                    },
                ],
                "responses": {"200": _json("AttemptList", "Attempts."), **_errors(404, 422)},
            }
        },
        "/attempts/{id}": {
            "get": {
                "summary": "One attempt with its transcript, transitions and tool calls.",
                "parameters": [attempt],
                "responses": {"200": _json("AttemptDetail", "The attempt."), **_errors(404)},
            }
        },
        "/attempts/{id}/cancel": {
            "post": {
                "summary": "Cancel an active attempt.",
                "parameters": [attempt],
                "requestBody": action,
                "responses": {
                    "200": _json("AttemptSummary", "The attempt, now cancelled."),
                    **_errors(400, 404, 409, 413, 422),
                },
            }
        },
        "/projects": {
            "get": {
                "summary": "Every configured project's state.",
                "responses": {"200": _json("ProjectList", "Projects."), **_errors()},
            }
        },
        "/projects/{name}/pause": {
            "post": {
                "summary": "Pause a project: no new attempts until it is resumed.",
                "parameters": [project],
                "requestBody": action,
                "responses": {"200": state, **_errors(400, 404, 413, 422)},
            }
        },
        "/projects/{name}/resume": {
            "post": {
                "summary": "Resume a project an operator paused (a pause in the configuration stays).",
                "parameters": [project],
                "requestBody": action,
                "responses": {"200": state, **_errors(400, 404, 413, 422)},
            }
        },
        "/projects/{name}/reset": {
            "post": {
                "summary": "Reset an escalation: count consecutive failed attempts afresh from now.",
                "parameters": [project],
                "requestBody": action,
                "responses": {"200": state, **_errors(400, 404, 413, 422)},
            }
        },
        "/kill-switch": {
            "get": {
                "summary": "Whether remediation is stopped.",
                "responses": {"200": _json("KillSwitchState", "The kill switch."), **_errors()},
            },
            "post": {
                "summary": "Stop or allow all new remediation (every replica, from its next pass).",
                "requestBody": _body("KillSwitchRequest"),
                "responses": {"200": _json("KillSwitchState", "The kill switch now."), **_errors(400, 413, 422)},
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "greenloop reconciler API",
            "version": "1",
            "description": "Operate the reconciler: debug passes, reported runs, attempts and operator actions. "
            "Every route except /healthz needs `Authorization: Bearer <server.api_token>`.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
