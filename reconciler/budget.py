"""Fleet budgets, the reconciler's side: what the current windows cost, the gauges, one notice per window.

The rules are `policy.spend`'s; this module feeds them. A pass reads the cost of the attempts started this
UTC day and month once (`load_costs`: one query, `reconciler.store.attempts.window_costs`), and each project's
reconcile asks `project_status` for the gate (`budget` skip at 100%) and the model choice (the fallback past
the notice share). `/metrics` shows spend and limit per window (`greenloop_spend_usd`,
`greenloop_spend_limit_usd`). When a limit reaches the notice share (80% by default), and again when it
reaches 100%, Slack is told once per window: the store's flag `spend:<limit>` records the window and level
that were announced (a conditional upsert, so two replicas announce it once), and this process remembers it
so an unchanged window costs no write.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from infra.jsonlog import log_event
from policy.config import ProjectConfig
from policy.spend import Spend, SpendStatus, limit_statuses, spend_status, spend_windows
from reconciler.context import ReconcilerContext
from reconciler.notify import notify
from reconciler.store.attempts import window_costs
from reconciler.store.state import claim_flag

__all__ = ["WindowCosts", "give_notices", "load_costs", "project_status"]

logger = logging.getLogger("greenloop.budget")


@dataclass(frozen=True)
class WindowCosts:
    """The cost (USD) of attempts started in the current UTC day and month: per project and for the fleet."""

    now: datetime
    by_project: dict[str, tuple[float, float]]  # project -> (today, this month)
    fleet_today: float
    fleet_month: float

    def spend(self, project: str | None) -> Spend:
        """The `Spend` `policy.spend` judges for `project` (None: the fleet only)."""
        today = self.by_project.get(project, (0.0, 0.0))[0] if project is not None else 0.0
        return Spend(project_today=today, fleet_today=self.fleet_today, fleet_month=self.fleet_month)


async def load_costs(ctx: ReconcilerContext, *, now: datetime | None = None) -> WindowCosts:
    """Read the current windows' costs (one query).

    Raises:
        StoreError: the store failed.
    """
    now = now or datetime.now(UTC)
    day, _, month, _ = spend_windows(now)
    rows = await window_costs(ctx.sessions, day_start=day, month_start=month)
    return WindowCosts(
        now=now,
        by_project=rows,
        fleet_today=sum(t for t, _ in rows.values()),
        fleet_month=sum(m for _, m in rows.values()),
    )


def project_status(ctx: ReconcilerContext, project: ProjectConfig, costs: WindowCosts) -> SpendStatus:
    """Where `project` stands against its daily limit and the fleet's limits (the worst of them)."""
    return spend_status(project, ctx.config.spend, costs.spend(project.name), now=costs.now)


def _flag(status: SpendStatus, project: str | None) -> tuple[str, str]:
    """The flag key of `status`'s limit and the value naming its window and level (keys are at most 64 chars)."""
    key = f"spend:{status.limit}"
    if project is not None:
        key += ":" + hashlib.sha256(project.encode()).hexdigest()[:32]
    window = status.resets_at.strftime("%Y-%m-%d") if status.resets_at is not None else "-"
    return key, f"{window}:{status.level}"


async def give_notices(ctx: ReconcilerContext, costs: WindowCosts, project: ProjectConfig | None = None) -> None:
    """Set the spend gauges and announce each limit at the notice share or past it, once per window and level.

    `project` None: the fleet's limits (once per pass); else that project's daily limit only.

    Raises:
        StoreError: the store failed (claiming the notice).
    """
    statuses = limit_statuses(project, ctx.config.spend, costs.spend(project.name if project else None), now=costs.now)
    for status in statuses:
        if project is not None and status.limit != "project_daily":
            continue  # the fleet's limits are the fleet pass's
        assert status.limit is not None and status.limit_usd is not None
        ctx.metrics.set_spend(status.limit, status.spent_usd, status.limit_usd, project=project.name if project else "")
        if status.level == "ok":
            continue
        key, value = _flag(status, project.name if project else None)
        if (key, value) in ctx.caches.spend_notices:
            continue
        claimed = await claim_flag(ctx.sessions, key, value)
        ctx.caches.spend_notices.add((key, value))
        if not claimed:
            continue  # announced already (by an earlier process or another replica)
        ctx.metrics.observe_spend_notice(status.limit, status.level)
        log_event(
            logger,
            "spend_notice",
            limit=status.limit,
            spend_level=status.level,
            share=round(status.share, 4),
            spent_usd=round(status.spent_usd, 4),
            limit_usd=status.limit_usd,
            detail=status.detail,
        )
        then = (
            "New attempts wait until the window resets; running attempts finish within their own budgets."
            if status.level == "exhausted"
            else "A project with a `fallback_model` now starts its attempts on it; at 100% new attempts wait."
        )
        await notify(
            ctx.config.server.slack_webhook_url,
            "spend",
            project=project.name if project else "the fleet",
            attempt_id=None,
            pr_url=None,
            summary_markdown=f"Cost limit {status.limit}: {status.detail}. {then}",
        )
