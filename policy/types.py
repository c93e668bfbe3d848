"""Shared names for greenloop's rules: autonomy levels, attempt states, gate outcomes."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "AttemptStatus",
    "Autonomy",
    "FailureClass",
    "RefusalReason",
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


class FailureClass(StrEnum):
    """Why a `failed` attempt failed (its `failure_class`): only a transient failure may start again."""

    TRANSIENT = "transient"  # stopped by the outside: model API errors after retries, forge down or rate limited
    PERMANENT = "permanent"  # the attempt itself ended without a fix (a guard, no fix, a crash of ours)


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
    BUDGET = "budget"  # a daily or monthly cost limit is spent (policy/spend.py)


class RefusalReason(StrEnum):
    """Machine-readable reasons a path is refused (`PathRefused.reason`)."""

    EMPTY = "empty"
    ABSOLUTE = "absolute"  # '/x', '//x', '~/x'
    TRAVERSAL = "traversal"  # a '..' component anywhere
    NUL_BYTE = "nul_byte"
    BACKSLASH = "backslash"
    DRIVE = "drive"  # 'C:...'
    CONTROL_CHAR = "control_char"  # control, format (zero-width, bidi), surrogate or line-separator characters
    TOO_LONG = "too_long"
    ENCODED = "encoded"  # percent-encoded '.', '/', '\\', '%', NUL or non-ASCII byte
    LOOKALIKE = "lookalike"  # unicode that NFKC changes, or a look-alike of '.', '/' or '\\'
    GIT_DIR = "git_dir"  # any '.git' component, before or after resolving symlinks
    OUTSIDE_ROOT = "outside_root"  # resolves (through symlinks) outside the workspace
    SYMLINK_LOOP = "symlink_loop"
    ROOT = "root"  # names the workspace root itself where a file is expected
    DENIED_GLOB = "denied_glob"
    NOT_ALLOWED = "not_allowed"
