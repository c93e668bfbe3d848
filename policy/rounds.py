"""Rounds of one attempt: what its budgets leave after earlier runs, and whether a failing fix PR goes back to
the agent for a revision round or escalates.

One attempt may run the agent more than once: a resume (its worker died) and each revision round (its fix
PR's checks failed). `Budgets` are per attempt, so every run gets only what the earlier runs left
(`remaining`). Pure rules: the dispatcher and the status table bring the numbers from the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from policy.config import Budgets, ProjectConfig

__all__ = ["BudgetUse", "RoundDecision", "next_round", "remaining", "spent"]

RoundDecision = Literal["revise", "revisions_exhausted", "budget_spent"]


@dataclass(frozen=True)
class BudgetUse:
    """What earlier runs of one attempt used: model turns, budget tokens (every input and output token), USD
    and wall-clock seconds of agent runs."""

    turns: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    wall_seconds: float = 0.0


def remaining(budgets: Budgets, used: BudgetUse) -> Budgets:
    """`budgets` less what `used` took: the limits of the attempt's next run.

    A spent limit is left at zero (never negative), so the guard of that limit stops the run at its first
    check; the change limits (files, lines, bytes) and the loop guards are per change and per run, unchanged.
    """
    return budgets.model_copy(
        update={
            "max_turns": max(0, budgets.max_turns - used.turns),
            "max_tokens": max(0, budgets.max_tokens - used.tokens),
            "wall_seconds": max(0.0, budgets.wall_seconds - used.wall_seconds),
        }
    )


def spent(budgets: Budgets, used: BudgetUse) -> str | None:
    """The first per-attempt limit `used` has reached ("max_turns", "max_tokens", "wall_seconds"), or None."""
    if used.turns >= budgets.max_turns:
        return "max_turns"
    if used.tokens >= budgets.max_tokens:
        return "max_tokens"
    if used.wall_seconds >= budgets.wall_seconds:
        return "wall_seconds"
    return None


def next_round(project: ProjectConfig, revisions: int, used: BudgetUse) -> RoundDecision:
    """The fix PR's checks failed after `revisions` revision rounds: revise again, or escalate (and why).

    Both autonomy levels revise: a wrong fix is wrong whoever merges it.
    """
    if revisions >= project.max_revisions:
        return "revisions_exhausted"
    if spent(project.budgets, used) is not None:
        return "budget_spent"
    return "revise"
