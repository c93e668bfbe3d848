"""A fix PR that sits: an attempt `pr_open` longer than its project's `stale_pr_hours` is announced once.

The pass calls `announce_if_stale` for an attempt whose pull request is open (`reconciler.advance`). The notice
is claimed in the store first (`attempts.mark_stale_announced`, a compare-and-set on `stale_announced_at`), so
two passes or replicas announce it once; an attempt that leaves `pr_open` and comes back (a revision round)
is counted afresh from its return. The API lists such attempts as stale (`is_stale`).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from infra.jsonlog import log_event
from policy.config import ProjectConfig
from policy.types import AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.notify import notify
from reconciler.store import attempts as store
from reconciler.store.models import Attempt

__all__ = ["announce_if_stale", "is_stale", "stale_sentence"]

logger = logging.getLogger("greenloop.reconcile")


def is_stale(project: ProjectConfig | None, attempt: Attempt, pr_open_since: datetime | None, now: datetime) -> bool:
    """Whether `attempt` is `pr_open` and has been since longer than the project's `stale_pr_hours`."""
    if project is None or AttemptStatus(attempt.status) is not AttemptStatus.PR_OPEN:
        return False
    since = pr_open_since or attempt.created_at
    return now - since >= timedelta(hours=project.stale_pr_hours)


def stale_sentence(project: ProjectConfig, attempt: Attempt, hours: float) -> str:
    """The notice: what waits, and what the project can and cannot do meanwhile."""
    return (
        f"The fix for `{attempt.job}` on `{attempt.project}` has waited {hours:.0f} h in its pull request "
        f"(more than stale_pr_hours = {project.stale_pr_hours:g}). Meanwhile greenloop keeps watching the "
        "project but starts no other attempt on it (one active attempt per project): merge the PR (the job is "
        "then verified), close it (the attempt ends cancelled), or cancel the attempt to free the project."
    )


async def announce_if_stale(
    ctx: ReconcilerContext, project: ProjectConfig, attempt: Attempt, *, now: datetime | None = None
) -> bool:
    """Announce `attempt`'s open fix PR once it is older than `stale_pr_hours`; True when announced now.

    Costs nothing for a young attempt (its creation time bounds the PR's age); for an old one, one read of when
    it entered `pr_open`, and the claim.
    """
    now = now or datetime.now(UTC)
    if not is_stale(project, attempt, None, now):
        return False  # even counted from the attempt's creation, the PR is not old enough
    since = (await store.pr_open_since(ctx.sessions, [attempt.id])).get(attempt.id, attempt.created_at)
    if not is_stale(project, attempt, since, now):
        return False
    if attempt.stale_announced_at is not None and attempt.stale_announced_at >= since:
        return False  # announced already (the claim below would refuse too)
    if not await store.mark_stale_announced(ctx.sessions, attempt.id, since=since):
        return False  # another pass announced it, or the attempt moved on
    hours = (now - since).total_seconds() / 3600
    log_event(logger, "pr_stale", attempt_id=attempt.id, pr_url=attempt.pr_url, hours=round(hours, 1))
    await notify(
        ctx.config.server.slack_webhook_url,
        "stale_pr",
        project=attempt.project,
        attempt_id=attempt.id,
        pr_url=attempt.pr_url,
        summary_markdown=stale_sentence(project, attempt, hours),
    )
    return True
