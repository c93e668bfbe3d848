"""The periodic resync, paced: each project is looked at once per resync period, spread over the period, and
never with the forge budget below `server.rate_limit_reserve`.

Events (webhooks, `POST /runs`) wake single projects at once; the resync is the safety net that catches
whatever the events missed. With webhooks on (`forge.webhook_secret` set) it can be slow:
`server.resync_interval_seconds`, default an hour then, else `server.interval_seconds`.

The scheduler ticks every `tick_seconds` (at most `interval_seconds`, at least `MIN_TICK_SECONDS` unless the
interval itself is shorter). At each tick `ResyncPacer.plan` takes the share of the projects due since the
last tick (N x elapsed / period), from a cursor that goes round the project list, plus every project with an
active attempt (the reserve exists for them). The share is capped by the budget: the requests left above the
reserve, spread evenly until the budget resets, at the cost per project measured on earlier slices.
Projects that were due but did not fit are *deferred*: they stay at the head of the queue for the next tick,
and the pass summary and `/metrics` count them. A restart loses the cursor and the credit, which costs order,
never correctness: the next ticks start again from the first project.

The pacer itself is pure (no clock, no I/O); `pace_pass` is the runner's hook around it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from policy.config import GreenloopConfig

if TYPE_CHECKING:
    from policy.config import ProjectConfig
    from reconciler.context import ReconcilerContext

__all__ = [
    "DEFAULT_RESYNC_WITH_WEBHOOKS_SECONDS",
    "MIN_TICK_SECONDS",
    "Budget",
    "PacedPass",
    "ResyncPacer",
    "SlicePlan",
    "pace_pass",
    "resync_period_seconds",
    "tick_for",
    "tick_seconds",
]

DEFAULT_RESYNC_WITH_WEBHOOKS_SECONDS: Final = 3600.0
MIN_TICK_SECONDS: Final = 30.0
_COST_WEIGHT: Final = 0.2  # how fast the measured requests per project follow the latest slice


def resync_period_seconds(config: GreenloopConfig) -> float:
    """How long one full resync of every project may take (see the module docstring)."""
    server = config.server
    if server.resync_interval_seconds is not None:
        return server.resync_interval_seconds
    if config.forge.webhook_secret is not None:
        return max(DEFAULT_RESYNC_WITH_WEBHOOKS_SECONDS, server.interval_seconds)
    return server.interval_seconds


def tick_seconds(config: GreenloopConfig) -> float:
    """How often the scheduler runs a (paced) pass: about one project per tick, within [30 s, interval]."""
    return tick_for(len(config.projects), config.server.interval_seconds, resync_period_seconds(config))


def tick_for(projects: int, interval: float, period: float) -> float:
    """`tick_seconds` for `projects` projects, an interval and a resync period (the bench simulates with it)."""
    return min(interval, max(MIN_TICK_SECONDS, period / max(projects, 1)))


@dataclass(frozen=True)
class Budget:
    """The forge's request budget as last reported: `remaining` until `reset_at` (epoch seconds); None: unknown."""

    remaining: int | None
    reset_at: float | None
    reserve: int

    def known(self, now: float) -> bool:
        """Whether the budget is known and has not reset since it was reported."""
        return self.remaining is not None and (self.reset_at is None or now < self.reset_at)

    def spendable(self, now: float) -> float | None:
        """Requests that may be spent before the reset without going below the reserve; None: no limit known."""
        if not self.known(now) or self.remaining is None:
            return None
        return float(max(self.remaining - self.reserve, 0))

    def below_reserve(self, now: float) -> bool:
        """Whether the budget is below the reserve and has not reset since (the verb's last wall)."""
        return self.known(now) and self.remaining is not None and self.remaining < self.reserve


@dataclass(frozen=True)
class SlicePlan:
    """The keys of one tick: `urgent` (active attempts) first, then the resync slice; `deferred`: due, not taken."""

    urgent: tuple[str, ...]
    slice: tuple[str, ...]
    due: int
    deferred: int

    @property
    def keys(self) -> tuple[str, ...]:
        """Every key this tick reconciles."""
        return self.urgent + self.slice


@dataclass
class ResyncPacer:
    """Which projects each scheduler tick reconciles (pure: the caller passes the clock and the budget)."""

    cursor: int = 0
    owed: float = 0.0  # projects due and not yet taken (fractional: a share of a project accrues per tick)
    credit: float = 0.0  # requests the budget allows and not yet spent
    cost_per_project: float = 1.0  # forge requests one project's observation costs, measured
    last_tick: float | None = None  # the caller's monotonic clock at the last plan
    deferred: int = 0  # the last plan's deferred count
    _credit_window: float | None = field(default=None, repr=False)  # the reset the credit was granted against

    def plan(
        self,
        names: Sequence[str],
        *,
        urgent: Collection[str],
        period: float,
        tick: float,
        now: float,
        budget: Budget,
        wall_now: float,
    ) -> SlicePlan:
        """The keys for a tick at monotonic time `now` (`wall_now`: epoch seconds, to compare with the reset).

        `urgent`: the keys with an active attempt, each one of `names`.
        """
        n = len(names)
        elapsed = tick if self.last_tick is None else max(now - self.last_tick, 0.0)
        self.last_tick = now
        if n == 0:
            self.owed, self.deferred = 0.0, 0
            return SlicePlan(urgent=(), slice=(), due=0, deferred=0)
        self.cursor %= n
        self.owed = min(self.owed + n * elapsed / max(period, 1e-9), float(n))
        due = min(math.floor(self.owed + 1e-9), n)
        spendable = budget.spendable(wall_now)
        urgent_keys = tuple(sorted(urgent))  # a few names, all among `names` (the caller's contract)
        if spendable is None:
            allowed = due
            self.credit, self._credit_window = 0.0, None
        else:
            if self._credit_window != budget.reset_at:
                self.credit, self._credit_window = 0.0, budget.reset_at  # a new budget window: start afresh
            window = max((budget.reset_at or wall_now + period) - wall_now, elapsed, 1e-9)
            self.credit = min(self.credit + spendable * min(elapsed / window, 1.0), spendable)
            self.credit = max(self.credit - len(urgent_keys) * self.cost_per_project, 0.0)
            allowed = min(due, math.floor(self.credit / self.cost_per_project + 1e-9))
        chosen: list[str] = []
        scanned = 0
        while scanned < allowed:
            key = names[(self.cursor + scanned) % n]
            scanned += 1
            if key not in urgent:  # an urgent key is in this tick anyway
                chosen.append(key)
        # Every key passed over is covered this tick (an urgent one included), so the cursor moves past it.
        self.cursor = (self.cursor + scanned) % n
        taken = min(scanned, due)
        self.owed = max(self.owed - taken, 0.0)
        if spendable is not None:
            self.credit = max(self.credit - len(chosen) * self.cost_per_project, 0.0)
        self.deferred = max(due - taken, 0)
        return SlicePlan(urgent=urgent_keys, slice=tuple(chosen), due=due, deferred=self.deferred)

    def measured(self, projects: int, requests: int) -> None:
        """Learn the cost per project from a finished slice (`requests` it made for `projects` projects)."""
        if projects > 0:
            sample = max(requests / projects, 1.0)
            self.cost_per_project = (1 - _COST_WEIGHT) * self.cost_per_project + _COST_WEIGHT * sample


@dataclass(frozen=True)
class PacedPass:
    """The runner's view of one paced pass: which projects, and how many were deferred."""

    projects: list[ProjectConfig]
    deferred: int


def budget_of(ctx: ReconcilerContext) -> Budget:
    """The forge client's last reported budget with the context's reserve (unknown without a forge)."""
    if ctx.forge is None:
        return Budget(remaining=None, reset_at=None, reserve=ctx.rate_limit_reserve)
    stats = ctx.forge.stats
    return Budget(remaining=stats.rate_remaining, reset_at=stats.rate_reset, reserve=ctx.rate_limit_reserve)


async def pace_pass(ctx: ReconcilerContext, projects: Sequence[ProjectConfig]) -> PacedPass:
    """The runner's hook for a scheduled pass over every project: the projects this tick reconciles.

    Raises:
        StoreError: the store failed reading the active attempts.
    """
    from reconciler.store.attempts import active_by_project

    names = [p.name for p in projects]
    active = await active_by_project(ctx.sessions, names)
    plan = ctx.caches.resync.plan(
        names,
        urgent=frozenset(active),
        period=resync_period_seconds(ctx.config),
        tick=tick_seconds(ctx.config),
        now=time.monotonic(),
        budget=budget_of(ctx),
        wall_now=time.time(),
    )
    by_name = {p.name: p for p in projects}
    return PacedPass(projects=[by_name[k] for k in plan.keys], deferred=plan.deferred)
