"""Operator actions: cancel an attempt, pause/resume a project, reset its escalation, flip the kill switch.

One implementation the HTTP API (`reconciler.api`) calls, and through it the command line (`greenloop attempts
cancel`, `greenloop projects pause|resume|reset`, over HTTP or in-process on the store), so the two cannot
drift. Errors are `OperationRefused` (with a `kind` the API maps to a status code) or the store's errors.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from typing import Final, Literal

from infra.jsonlog import log_event
from mcp_server.errors import ForgeError
from mcp_server.forge import PullRequest
from policy.config import ProjectConfig
from policy.types import TERMINAL_STATUSES, AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.errors import ReconcilerError
from reconciler.finish import attempt_finished
from reconciler.store import attempts as attempt_store
from reconciler.store import projects as project_store
from reconciler.store.models import Attempt, Project

__all__ = [
    "Cancelled",
    "OperationRefused",
    "ProjectAction",
    "cancel_attempt",
    "cancel_running",
    "close_pull_request",
    "find_attempt",
    "find_project",
    "project_action",
]

logger = logging.getLogger("greenloop.operations")

_FORGE_TIMEOUT_S: Final = 15.0
_MAX_ID_LEN: Final = 64
_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_AGENT_STATUSES: Final = frozenset({AttemptStatus.PENDING, AttemptStatus.RUNNING})

ProjectAction = Literal["pause", "resume", "reset"]


class OperationRefused(ReconcilerError):
    """An operator action that cannot be done: `kind` is `unknown_project`, `unknown_attempt` or `conflict`."""

    def __init__(
        self, kind: Literal["unknown_project", "unknown_attempt", "conflict"], message: str, *, name: str = ""
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name


@dataclass(frozen=True)
class Cancelled:
    """What `cancel_attempt` did: the attempt as it is now, and what was stopped."""

    attempt: Attempt
    from_status: str
    agent_stopped: bool | None
    pr_closed: int | None


def find_project(ctx: ReconcilerContext, key: str) -> ProjectConfig:
    """The configured project named `key` (its name or `owner/name`).

    Raises:
        OperationRefused: `unknown_project`.
    """
    for p in ctx.config.projects:
        if key in (p.name, p.repo):
            return p
    raise OperationRefused("unknown_project", f"Unknown project: {key!r}.", name=key)


async def find_attempt(ctx: ReconcilerContext, attempt_id: str) -> Attempt:
    """The attempt with this id.

    Raises:
        OperationRefused: `unknown_attempt`.
        StoreError: the store failed.
    """
    shown = attempt_id[:_MAX_ID_LEN]
    # An id that cannot exist (attempt ids are short and alphanumeric) never reaches the database: NUL
    # bytes and odd characters would be a driver error there, not a "not found".
    found = await attempt_store.get_attempt(ctx.sessions, attempt_id) if _ID_RE.match(attempt_id) else None
    if found is None:
        raise OperationRefused("unknown_attempt", f"Unknown attempt: {shown!r}.", name=shown)
    return found


async def cancel_attempt(
    ctx: ReconcilerContext,
    attempt: Attempt,
    *,
    reason: str | None = None,
    why: str | None = None,
    only: frozenset[AttemptStatus] | None = None,
) -> Cancelled:
    """Cancel an active attempt: the store first, then the agent here, then its pull request.

    The transition's reason is `operator_cancel[: reason]`, or `why` as given (`interrupted: SIGINT` when
    `greenloop reconcile` is stopped: `reconciler.interrupt`).

    The database says cancelled first (a replica's heartbeat loop stops its agent from that); then the agent
    in this process stops at once, then its pull request is closed (`close_pull_request`). With `only`, the
    attempt is cancelled only while in one of those statuses.

    Raises:
        OperationRefused: `conflict` when the attempt already finished, left `only`, or kept changing under us.
        StoreError: the store failed.
    """
    why = why or "operator_cancel" + (f": {reason}" if reason else "")
    for _ in range(len(AttemptStatus)):  # each lost race moves the attempt forward; the chain is finite
        status = AttemptStatus(attempt.status)
        if status in TERMINAL_STATUSES:
            raise OperationRefused("conflict", f"Attempt already finished: {status.value!r}: {attempt.id!r}.")
        if only is not None and status not in only:
            raise OperationRefused("conflict", f"Attempt moved on to {status.value!r}: {attempt.id!r}.")
        moved = await attempt_store.transition(
            ctx.sessions, attempt.id, AttemptStatus.CANCELLED, reason=why, expected=status, stop_reason="cancelled"
        )
        refreshed = await attempt_store.get_attempt(ctx.sessions, attempt.id)
        if refreshed is None:  # pragma: no cover - attempts are never deleted
            raise OperationRefused("unknown_attempt", f"Unknown attempt: {attempt.id!r}.", name=attempt.id)
        attempt = refreshed
        if moved:
            await attempt_finished(
                ctx.sessions,
                ctx.metrics,
                attempt_id=attempt.id,
                status=AttemptStatus.CANCELLED,
                webhook_url=ctx.config.server.slack_webhook_url,
            )
            stopped = await ctx.dispatcher.cancel(attempt.id) if ctx.dispatcher is not None else None
            closed = await close_pull_request(ctx, attempt)
            return Cancelled(attempt=attempt, from_status=status.value, agent_stopped=stopped, pr_closed=closed)
    raise OperationRefused("conflict", f"Attempt kept changing; try again: {attempt.id!r}.")


async def cancel_running(ctx: ReconcilerContext, *, reason: str) -> list[Cancelled]:
    """Cancel every attempt whose agent may be running now (`pending` or `running`), on every replica: each as
    `cancel_attempt` does (the store first, so another replica's heartbeat loop stops its agent; the agent
    here at once; then its pull request). Attempts past the agent (`pr_open`, `verifying`) are left alone.
    One that finishes meanwhile is skipped.

    Raises:
        StoreError: the store failed.
    """
    done: list[Cancelled] = []
    for attempt in await attempt_store.active_attempts(ctx.sessions):
        if AttemptStatus(attempt.status) not in _AGENT_STATUSES:
            continue
        try:
            done.append(await cancel_attempt(ctx, attempt, reason=reason, only=_AGENT_STATUSES))
        except OperationRefused as exc:
            log_event(logger, "cancel_running_skipped", attempt_id=attempt.id, reason=str(exc))
    log_event(logger, "cancel_running", reason=reason, cancelled=[c.attempt.id for c in done])
    return done


async def close_pull_request(ctx: ReconcilerContext, attempt: Attempt) -> int | None:
    """Close the open pull request of an attempt an operator cancelled; its number, or None.

    Decision: an operator's cancel abandons the fix, so its pull request is closed unmerged (a human who
    still wants it can reopen it). The PR is looked up by number or, when the agent opened it but had not
    recorded it yet, by the attempt's fix branch. A merged or already closed PR is left alone. A forge
    failure does not undo the cancel: it is logged, and the PR stays open for a human to close.
    """
    project = next((p for p in ctx.config.projects if p.name == attempt.project), None)
    if (
        ctx.forge is None
        or ctx.operator is None
        or project is None
        or (attempt.pr_number is None and not attempt.branch)
    ):
        return None
    try:
        async with asyncio.timeout(_FORGE_TIMEOUT_S):
            pr: PullRequest | None
            if attempt.pr_number is not None:
                pr = await ctx.forge.get_pull_request(project.repo, attempt.pr_number)
            else:
                pr = await ctx.forge.find_pull_request(project.repo, attempt.branch or "", state="open")
            if pr is None or pr.state != "open" or pr.merged:
                return None
            await ctx.operator.close_pull_request(project.name, pr.number, attempt_id=attempt.id)
    except (ForgeError, TimeoutError) as exc:
        log_event(logger, "cancel_pr_close_failed", level=logging.WARNING, attempt_id=attempt.id, error=str(exc))
        return None
    log_event(logger, "cancel_pr_closed", attempt_id=attempt.id, pr_number=pr.number)
    return pr.number


async def project_action(ctx: ReconcilerContext, project: ProjectConfig, action: ProjectAction) -> Project | None:
    """Pause or resume a project, or reset its escalation (failures before now stop counting); its row after.

    Raises:
        StoreError: the store failed.
    """
    await ctx.ensure_projects()
    if action == "reset":
        await project_store.reset_escalation(ctx.sessions, project.name)
    else:
        await project_store.set_paused(ctx.sessions, project.name, action == "pause")
    log_event(logger, "operator_action", action=action, project=project.name)
    return await project_store.get_project(ctx.sessions, project.name)
