"""What one reconcile pass did: the `RunSummary` returned by `reconcile()` and served by the API."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["RedJob", "RunSummary", "StartedAttempt", "TransitionNote", "Trigger"]

Trigger = Literal["schedule", "debug", "cli", "demo", "event"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedJob(_Model):
    """A job whose latest completed run on the default branch is not green."""

    project: str
    job: str
    run_id: str
    head_sha: str
    conclusion: str
    decision: Literal["start", "skip", "rerun"]
    reason: str | None = None
    detail: str = ""


class StartedAttempt(_Model):
    """An attempt the pass started (or, in a dry run, would have started)."""

    project: str
    job: str
    attempt_id: str | None
    run_id: str


class TransitionNote(_Model):
    """One state change of an attempt made by the pass."""

    attempt_id: str
    project: str
    from_status: str
    to_status: str
    reason: str | None = None


class RunSummary(_Model):
    """The outcome of one pass. Empty lists mean nothing was red and nothing moved."""

    trigger: Trigger
    dry_run: bool = False
    started_at: datetime
    duration_ms: float = 0.0
    projects_scanned: int = 0
    projects_red: int = 0
    red: list[RedJob] = Field(default_factory=list)
    attempts_started: list[StartedAttempt] = Field(default_factory=list)
    attempts_already_active: int = 0
    reruns: list[RedJob] = Field(default_factory=list)
    skips: dict[str, int] = Field(default_factory=dict)
    transitions: list[TransitionNote] = Field(default_factory=list)
    errors: dict[str, str] = Field(default_factory=dict)
    forge_requests: int = 0
    forge_not_modified: int = 0
    # The forge's request budget left after the pass (None: not reported), and the projects a paced
    # scheduled pass had due but left for a later tick to stay above the reserve (`reconciler.pacing`).
    rate_limit_remaining: int | None = None
    projects_deferred: int = 0

    def count_skip(self, reason: str) -> None:
        """Add one skip for `reason`."""
        counts = Counter(self.skips)
        counts[reason] += 1
        self.skips = dict(counts)
