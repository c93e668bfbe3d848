"""What happens once when an attempt reaches a terminal state, whoever moved it there.

The pass (verification, a dead worker), the dispatcher (the agent's own end) and the API (an operator's
cancel) all finish attempts; each calls `attempt_finished` after its transition succeeded, so every
finished attempt is counted in the metrics, logged as one `attempt_finished` event, and (succeeded or
escalated) announced on the webhook.
"""

from __future__ import annotations

import logging

from infra.jsonlog import log_event
from mcp_server.forge import ForgeClient
from mcp_server.operator import Operator
from policy.config import ProjectConfig
from policy.types import AttemptStatus, FailureClass
from reconciler.escalate import ATTEMPT_CAP, escalate, why_escalated
from reconciler.metrics import Metrics
from reconciler.notify import notify
from reconciler.store import attempts as store
from reconciler.store import projects as project_store
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt

__all__ = ["attempt_finished"]

logger = logging.getLogger("greenloop.attempts")


async def attempt_finished(
    sessions: SessionFactory,
    metrics: Metrics,
    *,
    attempt_id: str,
    status: AttemptStatus,
    webhook_url: str | None,
    project: ProjectConfig | None = None,
    forge: ForgeClient | None = None,
    operator: Operator | None = None,
) -> None:
    """Metrics, one structured event and (for succeeded/escalated) a notification for a finished attempt.

    With `project`, an escalation reaches a human (`reconciler.escalate`): an attempt that ended `escalated`,
    or a `failed` one that reached the project's attempt cap; the Slack notice then says why, in words that
    match the state, and links the PR comment or issue holding the report.
    """
    attempt = await store.get_attempt(sessions, attempt_id)
    if attempt is None:
        return
    metrics.observe_attempt_finished(status.value, attempt.input_tokens, attempt.output_tokens, attempt.cost_usd)
    log_event(
        logger,
        "attempt_finished",
        attempt_id=attempt.id,
        trace_id=attempt.trace_id,
        status=status.value,
        stop_reason=attempt.stop_reason,
        pr_url=attempt.pr_url,
        input_tokens=attempt.input_tokens,
        output_tokens=attempt.output_tokens,
        cost_usd=attempt.cost_usd,
    )
    if status is AttemptStatus.SUCCEEDED:
        await notify(
            webhook_url,
            "succeeded",
            project=attempt.project,
            attempt_id=attempt.id,
            pr_url=attempt.pr_url,
            summary_markdown=f"Fixed `{attempt.job}` on `{attempt.project}`: the job is green on the merge commit.",
        )
        return
    reason = await _escalation_reason(sessions, project, attempt, status)
    if reason is None:
        return
    why = why_escalated(attempt) if reason != ATTEMPT_CAP else _cap_sentence(project, attempt)
    where = None
    if project is not None:
        _report, posted = await escalate(sessions, forge, project, attempt, why=why, reason=reason, operator=operator)
        where = posted.url if posted is not None else None
    summary = f"`{attempt.job}` on `{attempt.project}`: {why}"
    if where:
        summary += f"\nThe report is at {where}."
    await notify(
        webhook_url,
        "escalated",
        project=attempt.project,
        attempt_id=attempt.id,
        pr_url=attempt.pr_url,
        summary_markdown=summary,
    )


def _cap_sentence(project: ProjectConfig | None, attempt: Attempt) -> str:
    cap = project.max_consecutive_failures if project is not None else None
    tail = f" (the last stopped: {attempt.stop_reason})" if attempt.stop_reason else ""
    return f"{cap or 'Several'} attempts in a row ended without a fix{tail}; greenloop starts no more on it."


async def _escalation_reason(
    sessions: SessionFactory, project: ProjectConfig | None, attempt: Attempt, status: AttemptStatus
) -> str | None:
    """Why this finished attempt escalates to a human, or None when it does not."""
    if status is AttemptStatus.ESCALATED:
        return attempt.stop_reason or "escalated"
    if status is not AttemptStatus.FAILED or project is None or attempt.failure_class == "transient":
        return None
    row = await project_store.get_project(sessions, project.name)
    reset_at = row.escalation_reset_at if row is not None else None
    streak = 0
    for a in await store.attempt_history(sessions, project.name, limit=project.max_consecutive_failures + 5):
        if reset_at is not None and a.created_at <= reset_at:
            break
        if a.status == AttemptStatus.FAILED.value and a.failure_class == FailureClass.TRANSIENT.value:
            continue  # stopped by the outside: neither counts nor breaks the streak (as in policy.gate)
        if a.status != AttemptStatus.FAILED.value:
            break
        streak += 1
    # Exactly at the cap: the attempt that reaches it tells a human once; the gate then starts no more.
    return ATTEMPT_CAP if streak == project.max_consecutive_failures else None
