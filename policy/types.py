"""Shared names for greenloop's rules: autonomy levels, attempt states, gate outcomes."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "AttemptStatus",
    "Autonomy",
    "SkipReason",
]


class Autonomy(StrEnum):
    """How far the system may go on its own for one project."""

    OBSERVE = "observe"  # watch and report; never start an attempt
    PROPOSE = "propose"  # open a pull request; a human merges it (default)
    AUTO_MERGE = "auto_merge"  # the agent may squash-merge its own PR


class AttemptStatus(StrEnum):
    """Lifecycle of one remediation attempt (see docs/architecture.md)."""

    PENDING = "pending"
    RUNNING = "running"
    PR_OPEN = "pr_open"
    VERIFYING = "verifying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ESCALATED = "escalated"


TERMINAL_STATUSES: frozenset[AttemptStatus] = frozenset(
    {AttemptStatus.SUCCEEDED, AttemptStatus.FAILED, AttemptStatus.CANCELLED, AttemptStatus.ESCALATED}
)
ACTIVE_STATUSES: frozenset[AttemptStatus] = frozenset(set(AttemptStatus) - TERMINAL_STATUSES)


class SkipReason(StrEnum):
    """Machine-readable reasons the remediation gate declines to start an attempt."""

    KILL_SWITCH = "kill_switch"
    OBSERVE_ONLY = "observe_only"
    PAUSED = "paused"
    JOB_NOT_WATCHED = "job_not_watched"
    NOT_FAILING = "not_failing"
    OWN_CHANGE = "own_change"  # circuit breaker: the failure came from the agent's own change
    ACTIVE_ATTEMPT = "active_attempt"
    ALREADY_HANDLED = "already_handled"
    ESCALATED = "escalated"  # consecutive-failure cap reached
    BACKOFF = "backoff"
    FLAKY_RERUN = "flaky_rerun"  # not a skip of the failure: a re-run is asked for instead
