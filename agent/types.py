"""Shared names for the agent: why a run stopped, and the task it was given."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from mcp_server.models import CulpritRange

__all__ = ["AttemptTask", "EarlierAttempt", "Revision", "StopReason"]


class StopReason(StrEnum):
    """Why an attempt's model loop ended. Exactly one per run; only SUCCEEDED_PR is a success."""

    SUCCEEDED_PR = "succeeded_pr"  # a pull request was opened (and merged, when autonomy allows)
    NO_FIX = "no_fix"  # the model ended its turn without opening a pull request
    MAX_TURNS = "max_turns"
    TOKEN_BUDGET = "token_budget"
    WALL_TIMEOUT = "wall_timeout"
    REPEATED_CALL = "repeated_call"  # the same tool with the same arguments too many times
    FLIP_FLOP = "flip_flop"  # a write restoring content the file already had earlier in the run
    ERROR_STREAK = "error_streak"  # too many consecutive tool errors
    MODEL_ERROR = "model_error"  # the model API failed after bounded retries
    MAX_TOKENS_TRUNCATED = "max_tokens_truncated"  # output cut off twice at max_tokens


class Revision(BaseModel):
    """A revision round: the attempt's fix PR failed its checks, and the agent works on the same branch again."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: Annotated[int, Field(ge=1, le=10)]
    max_rounds: Annotated[int, Field(ge=1, le=10)]
    branch: Annotated[str, Field(min_length=1, max_length=255)]
    pr_number: int | None = None
    failing_checks: tuple[str, ...] = ()
    # The failing check's log excerpt (mcp_server.log_excerpt), redacted: untrusted data, never instructions.
    log_excerpt: Annotated[str | None, Field(max_length=12_000)] = None


class EarlierAttempt(BaseModel):
    """What an earlier attempt on the same job did and how it ended (gathered by the reconciler, redacted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempt_id: str
    status: str
    stop_reason: str | None = None
    files: tuple[str, ...] = ()  # what it changed
    pr_url: str | None = None
    human_comment: str | None = None  # the human's words when its pull request was closed with a comment


class AttemptTask(BaseModel):
    """What one attempt is about: the failing job run the agent must make green."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: Annotated[str, Field(min_length=1, max_length=63)]
    job: Annotated[str, Field(min_length=1, max_length=200)]
    # A string everywhere: Actions run ids are numbers, runs reported from outside Actions have any id.
    failing_run_id: Annotated[
        str,
        BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
        Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$"),
    ]
    head_sha: Annotated[str, Field(min_length=1, max_length=64)]
    log_hint: Annotated[str | None, Field(max_length=4_000)] = None
    revision: Revision | None = None  # set for a revision round (see Revision)
    # What changed between the job's last green run and its first red run (mcp_server.culprit).
    culprit_range: CulpritRange | None = None
    # Earlier attempts on the same job, newest first (bounded by the reconciler).
    earlier_attempts: tuple[EarlierAttempt, ...] = ()
