"""greenloop's rules: pure code, no I/O.

The configuration model (`config`), the path wall (`paths`), fix-branch names (`branches`) and the single
remediation decision (`gate`). Everything here is a pure function of its arguments; a test enforces that no
I/O library is imported (the one injected exception is `confine`'s `realpath`/`islink`, passed in by callers).
"""

from __future__ import annotations

from policy.branches import attempt_id_of, fix_branch_name, is_fix_branch
from policy.config import (
    AgentSettings,
    Backoff,
    Budgets,
    ForgeSettings,
    GreenloopConfig,
    ProjectConfig,
    ServerSettings,
    WriteRules,
    load_config_text,
)
from policy.errors import ConfigError, PathRefused, PolicyError, PolicyViolation
from policy.gate import (
    ATTEMPT_TRAILER,
    AttemptRecord,
    Decision,
    ObservedFailure,
    attempt_trailer,
    backoff_seconds,
    decide,
    failure_fingerprint,
    has_attempt_trailer,
)
from policy.paths import check_relative, check_write_allowed, confine, is_within, matches_glob
from policy.types import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    AttemptStatus,
    Autonomy,
    FailureClass,
    RefusalReason,
    SkipReason,
)

__all__ = [
    "ACTIVE_STATUSES",
    "ATTEMPT_TRAILER",
    "TERMINAL_STATUSES",
    "AgentSettings",
    "AttemptRecord",
    "AttemptStatus",
    "Autonomy",
    "Backoff",
    "Budgets",
    "ConfigError",
    "Decision",
    "FailureClass",
    "ForgeSettings",
    "GreenloopConfig",
    "ObservedFailure",
    "PathRefused",
    "PolicyError",
    "PolicyViolation",
    "ProjectConfig",
    "RefusalReason",
    "ServerSettings",
    "SkipReason",
    "WriteRules",
    "attempt_id_of",
    "attempt_trailer",
    "backoff_seconds",
    "check_relative",
    "check_write_allowed",
    "confine",
    "decide",
    "failure_fingerprint",
    "fix_branch_name",
    "has_attempt_trailer",
    "is_fix_branch",
    "is_within",
    "load_config_text",
    "matches_glob",
]
