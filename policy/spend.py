"""Fleet budgets: how much of its cost limits the fleet and a project have spent, and what follows.

Limits (`SpendLimits` in `[spend]`, `ProjectConfig.daily_cost_usd`) are in USD per UTC day or month. The
reconciler sums the `cost_usd` of the attempts started in the current windows (`spend_windows`) into a
`Spend` and asks `spend_status`:

- below `notice_share` (80%) of every limit: `ok`;
- at or above it for some limit: `notice` (tell the humans: Slack, `/metrics`; `choose_model` switches to
  the cheaper `fallback_model` when one is configured);
- at or above 100% of some limit: `exhausted`: the gate (`policy.gate.decide`) skips new attempts with
  reason `budget` until the window resets; attempts already running finish within their own budgets.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from policy.config import AgentSettings, ProjectConfig, SpendLimits

__all__ = [
    "LimitName",
    "ModelChoice",
    "Spend",
    "SpendStatus",
    "choose_model",
    "limit_statuses",
    "spend_status",
    "spend_windows",
]

_USD = Annotated[float, Field(ge=0)]
LimitName = Literal["project_daily", "fleet_daily", "fleet_monthly"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Spend(_Frozen):
    """What attempts started in the current windows cost (USD)."""

    project_today: _USD = 0.0
    fleet_today: _USD = 0.0
    fleet_month: _USD = 0.0


class SpendStatus(_Frozen):
    """Where spending stands against the limits; `limit` names the limit closest to (or past) its end."""

    level: Literal["ok", "notice", "exhausted"]
    limit: LimitName | None = None
    share: Annotated[float, Field(ge=0)] = 0.0  # spent / limit of `limit`
    detail: str = "no cost limit reached"
    resets_at: datetime | None = None  # when `limit`'s window starts again (UTC)
    spent_usd: _USD = 0.0  # of `limit`'s window
    limit_usd: _USD | None = None


class ModelChoice(_Frozen):
    """The model an attempt uses and why; recorded on the attempt."""

    model: str
    fallback: bool = False
    reason: str


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def spend_windows(now: datetime) -> tuple[datetime, datetime, datetime, datetime]:
    """(start of today, start of tomorrow, start of this month, start of next month), UTC."""
    now = _as_utc(now)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    next_month = (month + timedelta(days=32)).replace(day=1)
    return day, day + timedelta(days=1), month, next_month


def limit_statuses(
    project: ProjectConfig | None, limits: SpendLimits, spend: Spend, *, now: datetime
) -> list[SpendStatus]:
    """Where `spend` stands against each configured limit (project daily, fleet daily, fleet monthly), in order.

    Without a project, only the fleet's limits.
    """
    _, tomorrow, _, next_month = spend_windows(now)
    checks: list[tuple[LimitName, float | None, float, datetime, str]] = []
    if project is not None:
        who = f"project {project.name!r} today"
        checks.append(("project_daily", project.daily_cost_usd, spend.project_today, tomorrow, who))
    checks += [
        ("fleet_daily", limits.daily_usd, spend.fleet_today, tomorrow, "the fleet today"),
        ("fleet_monthly", limits.monthly_usd, spend.fleet_month, next_month, "the fleet this month"),
    ]
    out: list[SpendStatus] = []
    for name, limit, spent, resets, who in checks:
        if limit is None:
            continue
        share = spent / limit
        level: Literal["ok", "notice", "exhausted"] = (
            "exhausted" if share >= 1.0 else "notice" if share >= limits.notice_share else "ok"
        )
        detail = f"{who} spent ${spent:.2f} of its ${limit:.2f} limit ({share:.0%})"
        out.append(
            SpendStatus(
                level=level, limit=name, share=share, detail=detail, resets_at=resets, spent_usd=spent, limit_usd=limit
            )
        )
    return out


def spend_status(project: ProjectConfig, limits: SpendLimits, spend: Spend, *, now: datetime) -> SpendStatus:
    """How `spend` stands against the project's daily limit and the fleet's daily and monthly limits (the worst)."""
    rank = {"ok": 0, "notice": 1, "exhausted": 2}
    worst: SpendStatus = SpendStatus(level="ok")
    for status in limit_statuses(project, limits, spend, now=now):
        if (rank[status.level], status.share) > (rank[worst.level], worst.share):
            worst = status
    return worst


def choose_model(project: ProjectConfig, agent: AgentSettings, status: SpendStatus) -> ModelChoice:
    """The project's model (or the agent's), or the fallback model once spending is past the notice mark."""
    model = project.model or agent.model
    fallback = project.fallback_model or agent.fallback_model
    if status.level != "ok" and fallback is not None and fallback != model:
        return ModelChoice(model=fallback, fallback=True, reason=f"fallback model: {status.detail}")
    return ModelChoice(model=model, reason="project model" if project.model else "default model")
