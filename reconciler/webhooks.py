"""`POST /webhooks/github`: GitHub App deliveries that wake the loop for the projects they name.

The signature is the authentication (this is the one route without the bearer token): the body, read up to
`WEBHOOK_BODY_LIMIT` bytes, must carry `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body with
forge.webhook_secret>`, compared in constant time. Then, in order:

* a delivery id (`X-GitHub-Delivery`) already handled is answered 200 `duplicate` and does nothing (GitHub's
  "Redeliver" reuses the id; a replayed capture is harmless but must not cost a pass);
* `workflow_run` and `check_run`/`check_suite` `completed`, `pull_request` `closed`/`synchronize` and
  `installation_repositories` `added`/`removed` enqueue a reconcile of every configured project of the repository
  (or repositories) they name: 202 `accepted`;
* `ping` answers 200 `pong`; any other event or action, or a repository no project watches: 202 `ignored`.

Refusals change nothing and are counted in `greenloop_webhook_refused_total{reason}`: 403 `disabled` (no secret
configured), 413 `too_large`, 401 `unsigned`/`bad_signature`, 400 `malformed` (a header missing or not JSON),
422 `malformed` (JSON of the wrong shape for its event). An event is a hint, never state: the pass re-reads
the project from the forge.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ConfigDict, SecretStr
from starlette.requests import Request
from starlette.responses import Response

from policy.config import ProjectConfig
from reconciler.api_http import ApiError, json_response, parse_json, read_body
from reconciler.api_models import WebhookAnswer
from reconciler.metrics import Metrics
from reconciler.wake import Enqueue

__all__ = [
    "WEBHOOK_BODY_LIMIT",
    "WEBHOOK_PATH",
    "DeliveryLog",
    "GitHubWebhooks",
    "sign",
]

WEBHOOK_PATH: Final = "/webhooks/github"
# The events handled are a few kB to a few hundred kB (a pull request with a long body, an installation
# adding many repositories); GitHub caps payloads at 25 MB, but nothing handled here comes near 4 MiB.
WEBHOOK_BODY_LIMIT: Final = 4 * 1024 * 1024
DELIVERY_LOG_SIZE: Final = 10_000

_SIGNATURE_RE: Final = re.compile(r"^sha256=([0-9a-f]{64})$")
_DELIVERY_RE: Final = re.compile(r"^[A-Za-z0-9-]{1,100}$")
_EVENT_RE: Final = re.compile(r"^[a-z_]{1,64}$")


def sign(secret: str | bytes, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body` (the bench and tests sign with it too)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


# --- the payload parts read (the rest of each payload is ignored) ------------------------------------------


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


_P = TypeVar("_P", bound=_Part)


class Repository(_Part):
    full_name: str


class WorkflowRun(_Part):
    id: int
    head_sha: str
    conclusion: str | None


class WorkflowRunEvent(_Part):
    action: str
    repository: Repository
    workflow_run: WorkflowRun


class CheckRun(_Part):
    id: int
    head_sha: str
    conclusion: str | None


class CheckRunEvent(_Part):
    action: str
    repository: Repository
    check_run: CheckRun


class CheckSuite(_Part):
    id: int
    head_sha: str
    conclusion: str | None


class CheckSuiteEvent(_Part):
    action: str
    repository: Repository
    check_suite: CheckSuite


class PullRequest(_Part):
    number: int
    merged: bool | None = None


class PullRequestEvent(_Part):
    action: str
    number: int
    repository: Repository
    pull_request: PullRequest


class InstallationRepository(_Part):
    full_name: str | None = None  # upstream does not require it in an `added` event's (empty) removed list


class InstallationRepositoriesEvent(_Part):
    action: str
    repositories_added: list[InstallationRepository]
    repositories_removed: list[InstallationRepository]


class _Action(_Part):
    action: str | None = None


class PingEvent(_Part):
    zen: str
    hook_id: int


_EVENTS: Final[Mapping[str, tuple[type[_Part], frozenset[str]]]] = {
    "workflow_run": (WorkflowRunEvent, frozenset({"completed"})),
    "check_run": (CheckRunEvent, frozenset({"completed"})),
    "check_suite": (CheckSuiteEvent, frozenset({"completed"})),
    "pull_request": (PullRequestEvent, frozenset({"closed", "synchronize"})),
    "installation_repositories": (InstallationRepositoriesEvent, frozenset({"added", "removed"})),
}


def _repositories(event: _Part) -> list[str]:
    if isinstance(event, InstallationRepositoriesEvent):
        return [r.full_name for r in (*event.repositories_added, *event.repositories_removed) if r.full_name]
    repo: Repository = getattr(event, "repository")  # noqa: B009 (every other handled event has one)
    return [repo.full_name]


# --- answers ----------------------------------------------------------------------------------------------


class DeliveryLog:
    """The delivery ids handled lately (a bounded LRU): a repeated id is a duplicate."""

    def __init__(self, size: int = DELIVERY_LOG_SIZE) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, delivery: str) -> bool:
        if delivery in self._seen:
            self._seen.move_to_end(delivery)
            return True
        return False

    def add(self, delivery: str) -> None:
        self._seen[delivery] = None
        self._seen.move_to_end(delivery)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


class GitHubWebhooks:
    """The handler of `POST /webhooks/github` (see the module docstring); `handle` is an API `Handler`."""

    def __init__(
        self,
        *,
        secret: SecretStr | None,
        projects: Sequence[ProjectConfig],
        enqueue: Enqueue,
        metrics: Metrics,
        deliveries: DeliveryLog | None = None,
    ) -> None:
        self._secret = secret.get_secret_value().encode() if secret is not None else None
        self._enqueue = enqueue
        self._metrics = metrics
        self._deliveries = deliveries if deliveries is not None else DeliveryLog()
        by_repo: dict[str, list[str]] = {}
        for p in projects:
            by_repo.setdefault(p.repo.lower(), []).append(p.name)  # GitHub names are case-insensitive
        self._by_repo = by_repo

    def _refuse(self, status: int, reason: str, detail: str) -> ApiError:
        self._metrics.observe_webhook_refused(reason)
        error = {401: "unauthorized", 403: "forbidden", 413: "too_large", 422: "invalid_request"}.get(status)
        return ApiError(status, error or "bad_request", detail)

    async def handle(self, request: Request, fields: dict[str, Any]) -> Response:
        """Verify, deduplicate, map to projects and enqueue; refusals raise `ApiError` (counted)."""
        if self._secret is None:
            raise self._refuse(403, "disabled", "Webhooks disabled: forge.webhook_secret is not configured.")
        try:
            body = await read_body(request, WEBHOOK_BODY_LIMIT)
        except ApiError as exc:
            self._metrics.observe_webhook_refused("too_large" if exc.status == 413 else "malformed")
            raise
        # Security: the signature is this route's only authentication; nothing is parsed before it matches.
        signatures = request.headers.getlist("x-hub-signature-256")
        if not signatures:
            raise self._refuse(401, "unsigned", "Unsigned delivery: the X-Hub-Signature-256 header is missing.")
        match = _SIGNATURE_RE.match(signatures[0]) if len(signatures) == 1 else None
        if match is None or not hmac.compare_digest(match.group(0), sign(self._secret, body)):
            raise self._refuse(401, "bad_signature", "Bad signature: X-Hub-Signature-256 does not match the body.")
        event = request.headers.get("x-github-event", "")
        delivery = request.headers.get("x-github-delivery", "")
        if not _EVENT_RE.match(event) or not _DELIVERY_RE.match(delivery):
            raise self._refuse(400, "malformed", "Malformed delivery: X-GitHub-Event or X-GitHub-Delivery is missing.")
        fields.update(github_event=event, delivery=delivery)
        if delivery in self._deliveries:
            self._metrics.observe_webhook(event, "duplicate")
            return json_response(WebhookAnswer(status="duplicate", event=event, delivery=delivery))
        answer = self._answer(event, delivery, body)
        fields.update(outcome=answer.status, projects=answer.projects)
        for name in answer.projects:
            self._enqueue(name)
            self._metrics.observe_wakeup("webhook")
        self._deliveries.add(delivery)  # only once handled: a refused delivery may be redelivered
        self._metrics.observe_webhook(event, answer.status)
        return json_response(answer, 202 if answer.status in ("accepted", "ignored") else 200)

    def _answer(self, event: str, delivery: str, body: bytes) -> WebhookAnswer:
        if event == "ping":
            self._parse(PingEvent, body)
            return WebhookAnswer(status="pong", event=event, delivery=delivery)
        handled = _EVENTS.get(event)
        if handled is None:
            return WebhookAnswer(status="ignored", event=event, delivery=delivery, reason="event not handled")
        model, actions = handled
        action = self._parse(_Action, body).action  # an action not handled is not validated further
        if action not in actions:
            return WebhookAnswer(status="ignored", event=event, delivery=delivery, reason=f"action {action!r}")
        payload = self._parse(model, body)
        names = [n for repo in _repositories(payload) for n in self._by_repo.get(repo.lower(), ())]
        if not names:
            return WebhookAnswer(status="ignored", event=event, delivery=delivery, reason="no project watches it")
        return WebhookAnswer(status="accepted", event=event, delivery=delivery, projects=list(dict.fromkeys(names)))

    def _parse(self, model: type[_P], body: bytes) -> _P:
        try:
            return parse_json(body, model, what=f"delivery ({model.__name__})")
        except ApiError:
            self._metrics.observe_webhook_refused("malformed")
            raise
