"""What happens once when an attempt reaches a terminal state, whoever moved it there.

The pass (verification, a dead worker), the dispatcher (the agent's own end) and the API (an operator's
cancel) all finish attempts; each calls `attempt_finished` after its transition succeeded, so every
finished attempt is counted in the metrics, logged as one `attempt_finished` event, and (succeeded or
escalated) announced on the webhook.
"""

from __future__ import annotations

import logging

from infra.jsonlog import log_event
from policy.types import AttemptStatus
from reconciler.metrics import Metrics
from reconciler.notify import notify
from reconciler.store import attempts as store
from reconciler.store.engine import SessionFactory

__all__ = ["attempt_finished"]

logger = logging.getLogger("greenloop.attempts")


async def attempt_finished(
    sessions: SessionFactory,
    metrics: Metrics,
    *,
    attempt_id: str,
    status: AttemptStatus,
    webhook_url: str | None,
) -> None:
    """Metrics, one structured event and (for succeeded/escalated) a notification for a finished attempt."""
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
    if status in (AttemptStatus.SUCCEEDED, AttemptStatus.ESCALATED):
        await notify(
            webhook_url,
            "succeeded" if status is AttemptStatus.SUCCEEDED else "escalated",
            project=attempt.project,
            attempt_id=attempt.id,
            pr_url=attempt.pr_url,
            summary_markdown=attempt.report or f"Fixed `{attempt.job}` on `{attempt.project}`.",
        )
