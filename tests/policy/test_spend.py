"""Fleet budgets: spend against the daily and monthly limits, the 80% notice, the gate's `budget` skip,
and the fallback model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policy.config import AgentSettings, GreenloopConfig, ProjectConfig, SpendLimits
from policy.gate import ObservedFailure, decide
from policy.spend import Spend, SpendStatus, choose_model, spend_status, spend_windows
from policy.types import SkipReason

NOW = datetime(2026, 12, 3, 10, 30, tzinfo=UTC)


def _project(**overrides: Any) -> ProjectConfig:
    return ProjectConfig(**{"name": "demo", "repo": "acme/demo", **overrides})


def _failure(job: str = "ci") -> ObservedFailure:
    return ObservedFailure(project="demo", job=job, run_id="1", head_sha="a" * 40, conclusion="failure")


def test_windows_are_the_utc_day_and_month() -> None:
    day, tomorrow, month, next_month = spend_windows(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (day, tomorrow) == (datetime(2026, 12, 31, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
    assert (month, next_month) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("spend", "level", "limit"),
    [
        pytest.param(Spend(), "ok", None, id="nothing-spent"),
        pytest.param(Spend(project_today=7.9, fleet_today=7.9, fleet_month=7.9), "ok", "project_daily", id="below-80%"),
        pytest.param(Spend(project_today=8.0), "notice", "project_daily", id="project-at-80%"),
        pytest.param(Spend(project_today=10.0), "exhausted", "project_daily", id="project-at-100%"),
        pytest.param(Spend(fleet_today=85.0), "notice", "fleet_daily", id="fleet-day-at-85%"),
        pytest.param(Spend(project_today=9.0, fleet_month=1000.0), "exhausted", "fleet_monthly", id="month-spent"),
    ],
)
def test_status_names_the_worst_limit(spend: Spend, level: str, limit: str | None) -> None:
    limits = SpendLimits(daily_usd=100.0, monthly_usd=1000.0)
    status = spend_status(_project(daily_cost_usd=10.0), limits, spend, now=NOW)
    assert (status.level, status.limit) == (level, limit)


def test_no_limits_configured_is_always_ok() -> None:
    spend = Spend(project_today=1e6, fleet_today=1e6, fleet_month=1e6)
    status = spend_status(_project(), SpendLimits(), spend, now=NOW)
    assert status.level == "ok" and status.limit is None


def test_an_exhausted_budget_skips_new_attempts_until_the_window_resets() -> None:
    status = spend_status(_project(), SpendLimits(daily_usd=50.0), Spend(fleet_today=50.0), now=NOW)
    decision = decide(_project(), _failure(), [], now=NOW, kill_switch=False, bot_logins=(), spend=status)
    assert decision.action == "skip" and decision.reason is SkipReason.BUDGET
    assert "the fleet today spent $50.00 of its $50.00 limit" in decision.detail
    assert decision.retry_after == timedelta(hours=13, minutes=30)


def test_a_notice_or_no_status_still_starts_and_a_flaky_rerun_is_not_stopped_by_the_budget() -> None:
    notice = SpendStatus(level="notice", limit="fleet_daily", share=0.9)
    assert decide(_project(), _failure(), [], now=NOW, kill_switch=False, bot_logins=(), spend=notice).action == "start"
    assert decide(_project(), _failure(), [], now=NOW, kill_switch=False, bot_logins=()).action == "start"
    spent = SpendStatus(level="exhausted", limit="fleet_daily", share=1.2)
    flaky = _project(flaky_jobs=("ci",))
    assert decide(flaky, _failure(), [], now=NOW, kill_switch=False, bot_logins=(), spend=spent).action == "rerun"


def test_the_fallback_model_is_used_past_the_notice_mark_and_the_choice_says_why() -> None:
    agent = AgentSettings(model="claude-sonnet-4-6", fallback_model="claude-haiku-4-5")
    ok = SpendStatus(level="ok")
    notice = SpendStatus(level="notice", limit="project_daily", share=0.85, detail="project 'demo' spent 85%")
    assert choose_model(_project(), agent, ok).model == "claude-sonnet-4-6"
    assert choose_model(_project(model="claude-opus-4-5"), agent, ok).reason == "project model"
    chosen = choose_model(_project(), agent, notice)
    assert (chosen.model, chosen.fallback) == ("claude-haiku-4-5", True) and "85%" in chosen.reason
    assert choose_model(_project(), AgentSettings(), notice).fallback is False  # no fallback configured


def test_limits_are_validated_and_read_from_the_config() -> None:
    config = GreenloopConfig.model_validate(
        {
            "spend": {"daily_usd": 20, "monthly_usd": 400},
            "projects": [{"name": "a", "repo": "o/a", "daily_cost_usd": 5}],
        }
    )
    assert config.spend.daily_usd == 20.0 and config.projects[0].daily_cost_usd == 5.0
    with pytest.raises(ValueError, match="greater than 0"):
        SpendLimits(daily_usd=0)
    with pytest.raises(ValueError, match="less than 1"):
        SpendLimits(notice_share=1.0)
