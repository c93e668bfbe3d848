"""Rounds of one attempt: budgets are per attempt, and a failing fix PR is revised or escalated."""

from __future__ import annotations

import pytest

from policy.config import Budgets, ProjectConfig
from policy.rounds import BudgetUse, next_round, remaining, spent

BUDGETS = Budgets(max_turns=30, max_tokens=400_000, wall_seconds=600.0)


def test_a_later_run_gets_what_earlier_runs_left() -> None:
    left = remaining(BUDGETS, BudgetUse(turns=12, tokens=150_000, cost_usd=1.5, wall_seconds=200.0))
    assert (left.max_turns, left.max_tokens, left.wall_seconds) == (18, 250_000, 400.0)
    # Per-change and per-run limits are not spent by earlier runs.
    assert (left.max_files_changed, left.max_repeat_calls) == (BUDGETS.max_files_changed, BUDGETS.max_repeat_calls)


def test_nothing_used_leaves_the_whole_budget() -> None:
    assert remaining(BUDGETS, BudgetUse()) == BUDGETS


def test_a_spent_limit_is_zero_never_negative() -> None:
    left = remaining(BUDGETS, BudgetUse(turns=31, tokens=500_000, wall_seconds=700.0))
    assert (left.max_turns, left.max_tokens, left.wall_seconds) == (0, 0, 0.0)


@pytest.mark.parametrize(
    ("used", "limit"),
    [
        (BudgetUse(turns=30), "max_turns"),
        (BudgetUse(tokens=400_000), "max_tokens"),
        (BudgetUse(wall_seconds=600.0), "wall_seconds"),
        (BudgetUse(turns=29, tokens=399_999, wall_seconds=599.0), None),
    ],
)
def test_spent_names_the_first_limit_reached(used: BudgetUse, limit: str | None) -> None:
    assert spent(BUDGETS, used) == limit


@pytest.mark.parametrize(
    ("revisions", "used", "decision"),
    [
        (0, BudgetUse(), "revise"),
        (1, BudgetUse(turns=20), "revise"),
        (2, BudgetUse(), "revisions_exhausted"),
        (1, BudgetUse(turns=30), "budget_spent"),
    ],
)
def test_next_round(revisions: int, used: BudgetUse, decision: str) -> None:
    project = ProjectConfig(name="p", repo="acme/p", budgets=BUDGETS)
    assert project.max_revisions == 2
    assert next_round(project, revisions, used) == decision


def test_no_revision_rounds_when_max_revisions_is_zero() -> None:
    project = ProjectConfig(name="p", repo="acme/p", max_revisions=0)
    assert next_round(project, 0, BudgetUse()) == "revisions_exhausted"
