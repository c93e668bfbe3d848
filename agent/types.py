"""Shared names for the agent: why a run stopped, and the task it was given."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["AttemptTask", "StopReason"]


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


class AttemptTask(BaseModel):
    """What one attempt is about: the failing job run the agent must make green."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: Annotated[str, Field(min_length=1, max_length=63)]
    job: Annotated[str, Field(min_length=1, max_length=200)]
    failing_run_id: Annotated[int, Field(ge=0)]
    head_sha: Annotated[str, Field(min_length=1, max_length=64)]
    log_hint: Annotated[str | None, Field(max_length=4_000)] = None
