"""The paced resync (`reconciler.pacing`): projects spread over the period, never below the reserve, deferred
projects counted in the pass summary and `/metrics`."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, cast

import pytest
from pydantic import SecretStr

from policy.config import ForgeSettings, GreenloopConfig, ProjectConfig, ServerSettings
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.pacing import (
    DEFAULT_RESYNC_WITH_WEBHOOKS_SECONDS,
    Budget,
    ResyncPacer,
    resync_period_seconds,
    tick_seconds,
)
from reconciler.runner import Runner
from reconciler.store.engine import SessionFactory
from reconciler.store.passes import recent_passes

NAMES = tuple(f"p{i:02d}" for i in range(10))
UNKNOWN = Budget(remaining=None, reset_at=None, reserve=100)


def _config(**server: Any) -> GreenloopConfig:
    return GreenloopConfig(
        server=ServerSettings(**server), projects=tuple(ProjectConfig(name=n, repo=f"acme/{n}") for n in NAMES)
    )


def test_the_resync_period_is_the_interval_without_webhooks_an_hour_with_them_or_as_configured() -> None:
    plain = _config(interval_seconds=120)
    assert resync_period_seconds(plain) == 120
    hooked = plain.model_copy(update={"forge": ForgeSettings(webhook_secret=SecretStr("w" * 20))})
    assert resync_period_seconds(hooked) == DEFAULT_RESYNC_WITH_WEBHOOKS_SECONDS
    assert resync_period_seconds(_config(resync_interval_seconds=900)) == 900
    # The scheduler ticks about once per project, within [30 s, interval].
    assert tick_seconds(_config(interval_seconds=300)) == 30  # 300 s / 10 projects
    assert tick_seconds(_config(interval_seconds=300, resync_interval_seconds=2000)) == 200
    assert tick_seconds(_config(interval_seconds=0.5)) == 0.5


def test_each_tick_takes_its_share_and_every_project_is_covered_once_per_period() -> None:
    pacer = ResyncPacer()
    seen: list[str] = []
    for k in range(10):  # period 100 s, a tick every 10 s: one project per tick, round the list
        plan = pacer.plan(NAMES, urgent=(), period=100, tick=10, now=10.0 * k, budget=UNKNOWN, wall_now=0)
        assert plan.deferred == 0
        seen += plan.keys
    assert seen == list(NAMES)
    # A tick twice as late takes twice the share; never more than one full round however late.
    assert len(pacer.plan(NAMES, urgent=(), period=100, tick=10, now=110, budget=UNKNOWN, wall_now=0).keys) == 2
    assert len(pacer.plan(NAMES, urgent=(), period=100, tick=10, now=10_000, budget=UNKNOWN, wall_now=0).keys) == 10


def test_projects_with_an_active_attempt_are_in_every_tick_and_count_as_covered() -> None:
    pacer = ResyncPacer()
    plan = pacer.plan(NAMES, urgent={"p00", "p07"}, period=100, tick=50, now=0, budget=UNKNOWN, wall_now=0)
    assert plan.urgent == ("p00", "p07")
    # Half the projects were due; p00 was among them and already in the tick, so p01..p04 fill the share.
    assert plan.slice == ("p01", "p02", "p03", "p04")
    assert plan.deferred == 0


def test_the_budget_is_spread_until_its_reset_and_never_spent_below_the_reserve() -> None:
    pacer = ResyncPacer()
    wall = 1_000_000.0
    remaining = 106  # six requests above the reserve; each project observed costs one
    taken: list[str] = []
    deferred = []
    for k in range(10):  # the whole period (100 s) before the reset: ten projects due, six affordable
        budget = Budget(remaining=remaining, reset_at=wall + 100, reserve=100)
        plan = pacer.plan(NAMES, urgent=(), period=100, tick=10, now=10.0 * k, budget=budget, wall_now=wall + 10 * k)
        taken += plan.slice
        remaining -= len(plan.slice)
        deferred.append(plan.deferred)
    assert remaining >= 100
    assert len(taken) <= 6
    assert len(taken) >= 5  # spread evenly, not refused
    assert taken == list(NAMES[: len(taken)])  # the deferred ones are first in line, nothing is skipped over
    assert deferred[-1] == 10 - len(taken)

    # Below the reserve: nothing but urgent work, everything due deferred (no cliff in coverage: it waits).
    low = Budget(remaining=40, reset_at=wall + 3600, reserve=100)
    plan = ResyncPacer().plan(NAMES, urgent={"p03"}, period=100, tick=50, now=0, budget=low, wall_now=wall)
    assert plan.keys == ("p03",)
    assert plan.deferred == 5

    # Once the reset time has passed, the old figure no longer limits anything.
    after = ResyncPacer().plan(NAMES, urgent=(), period=100, tick=50, now=0, budget=low, wall_now=wall + 3601)
    assert len(after.keys) == 5 and after.deferred == 0


def test_the_cost_per_project_is_learned_from_the_slices() -> None:
    pacer = ResyncPacer()
    pacer.measured(4, 40)
    assert pacer.cost_per_project > 1.0
    before = pacer.cost_per_project
    pacer.measured(0, 0)  # an empty slice says nothing
    assert pacer.cost_per_project == before


@dataclass
class _Stats:
    requests: int = 0
    not_modified: int = 0
    rate_remaining: int | None = None
    rate_reset: float | None = None


@dataclass
class _Forge:
    stats: _Stats


@pytest.mark.anyio
async def test_a_scheduled_pass_reconciles_its_share_and_reports_the_budget_and_deferred(
    sessions: SessionFactory,
) -> None:
    config = _config(interval_seconds=300)  # no webhooks: the period is the interval, a tick every 30 s
    metrics = Metrics()
    ctx = ReconcilerContext(config=config, sessions=sessions, forge=None, dispatcher=None, metrics=metrics)
    summary = await Runner(ctx).run_pass(trigger="schedule", paced=True)
    assert summary.projects_scanned == 1 and summary.projects_deferred == 0
    assert (await Runner(ctx).run_pass(trigger="schedule")).projects_scanned == 10  # only `paced` is paced

    # The forge reports a budget below the reserve: the scheduled tick defers its share, spends nothing.
    stats = _Stats(rate_remaining=ctx.rate_limit_reserve - 1, rate_reset=time.time() + 3600)
    low = replace(ctx, forge=cast(Any, _Forge(stats)))
    low.caches.resync.last_tick = time.monotonic() - 60  # two ticks' worth due
    summary = await Runner(low).run_pass(trigger="schedule", paced=True)
    assert summary.projects_scanned == 0
    assert summary.projects_deferred == 2
    assert summary.rate_limit_remaining == ctx.rate_limit_reserve - 1
    assert metrics.value("greenloop_resync_projects_deferred") == 2
    assert metrics.value("greenloop_forge_rate_limit_remaining") == ctx.rate_limit_reserve - 1
    rows = await recent_passes(sessions, limit=1)
    assert '"projects_deferred":2' in (rows[0].summary or "")
