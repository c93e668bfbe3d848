"""The remediation gate: the single decision whether a red job gets an attempt.

`decide` is pure: the reconciler gathers the observed failure, the project's attempt history, the clock and
the switches, and acts on the returned `Decision`. Checks run in a fixed order and the first that applies
wins:

    kill switch -> paused -> observe-only -> job not watched -> not failing -> own change (circuit breaker)
    -> active attempt -> already handled (or a transient retry, after its own backoff) -> escalated -> backoff
    -> flaky (rerun) -> budget -> start

A re-run costs no model tokens, so a spent budget (`policy.spend`) stops only new attempts. An attempt that
failed `transient` (stopped by the outside: the model API or the forge) does not spend its failure: the same
failure may start again after a backoff, at most `max_transient_retries` times; it neither counts toward
nor breaks the consecutive-failure streak. The store enforces the same rule when it inserts the attempt
(`reconciler.store.attempts.start_attempt`, one attempt per failure and generation).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from policy.config import Backoff, ProjectConfig
from policy.spend import SpendStatus
from policy.types import ACTIVE_STATUSES, AttemptStatus, Autonomy, FailureClass, SkipReason

__all__ = [
    "ATTEMPT_TRAILER",
    "FAILING_CONCLUSIONS",
    "AttemptRecord",
    "Decision",
    "ObservedFailure",
    "attempt_trailer",
    "backoff_seconds",
    "consecutive_failures",
    "decide",
    "failure_fingerprint",
    "has_attempt_trailer",
    "is_transient",
]

ATTEMPT_TRAILER = "Greenloop-Attempt"
FAILING_CONCLUSIONS: frozenset[str] = frozenset({"failure", "timed_out", "startup_failure"})

_TRAILER_RE = re.compile(rf"^{re.escape(ATTEMPT_TRAILER)}[ \t]*:[ \t]*[a-z0-9]{{6,32}}[ \t]*$", re.IGNORECASE)
_FAILED = frozenset({AttemptStatus.FAILED, AttemptStatus.ESCALATED})
_STREAK_BREAKERS = frozenset({AttemptStatus.SUCCEEDED, AttemptStatus.CANCELLED})
_MAX_WAIT_SECONDS = 100 * 365 * 86_400.0  # timedelta can't hold infinity


def _as_utc(value: datetime) -> datetime:
    """Naive datetimes (SQLite hands them back) are taken to be UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObservedFailure(_Frozen):
    """The latest run of one job of one project, as the forge reported it."""

    project: str
    job: str
    run_id: str
    head_sha: str
    conclusion: str
    triggered_by: str | None = None  # login of the actor who triggered the run
    commit_message: str | None = None  # of head_sha
    event: str | None = None  # push, schedule, workflow_dispatch, ...
    passed_before_on_same_sha: bool = False


class AttemptRecord(_Frozen):
    """One past or running remediation attempt of the project (the gate reads the whole project history)."""

    id: str
    job: str
    status: AttemptStatus
    fingerprint: str
    created_at: datetime
    finished_at: datetime | None = None
    pushed_sha: str | None = None  # head of the fix branch the attempt pushed
    merged_sha: str | None = None  # commit its pull request merged as
    failure_class: FailureClass | None = None  # of a failed attempt: transient ones may start again

    @field_validator("created_at", "finished_at")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return None if v is None else _as_utc(v)


class Decision(_Frozen):
    """What to do about one failure: start an attempt, skip it (with a reason), or re-run the job.

    `retry_after` is set for BACKOFF: the earliest moment the gate could say something else.
    """

    action: Literal["start", "skip", "rerun"]
    reason: SkipReason | None
    detail: str
    retry_after: timedelta | None = None


def failure_fingerprint(project: str, job: str, head_sha: str) -> str:
    """A stable hex digest naming one failure: the same job of the same project red on the same commit."""
    raw = "\x1f".join((project, job, head_sha.strip().lower()))
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def attempt_trailer(attempt_id: str) -> str:
    """The trailer line every commit of attempt `attempt_id` carries: 'Greenloop-Attempt: <id>'."""
    return f"{ATTEMPT_TRAILER}: {attempt_id}"


def has_attempt_trailer(commit_message: str | None) -> bool:
    """True when the message's last paragraph has a 'Greenloop-Attempt: <id>' trailer line."""
    if not commit_message:
        return False
    text = commit_message.replace("\r\n", "\n").replace("\r", "\n").strip()
    paragraphs = [p for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if not paragraphs:
        return False
    return any(_TRAILER_RE.match(line.strip()) for line in paragraphs[-1].split("\n"))


def backoff_seconds(backoff: Backoff, consecutive_failures: int) -> float:
    """Seconds to wait after `consecutive_failures` failed attempts: base * factor**(n-1), capped; 0 for n<1."""
    if consecutive_failures < 1 or backoff.base_seconds == 0:
        return 0.0
    try:
        value = backoff.base_seconds * backoff.factor ** (consecutive_failures - 1)
    except OverflowError:
        value = math.inf
    return min(value, backoff.max_seconds)


def is_transient(attempt: AttemptRecord) -> bool:
    """Whether the attempt failed because of the outside (model API, forge): its failure may start again."""
    return attempt.status is AttemptStatus.FAILED and attempt.failure_class is FailureClass.TRANSIENT


def _newest_first(history: Sequence[AttemptRecord]) -> list[AttemptRecord]:
    return sorted(history, key=lambda a: a.created_at, reverse=True)


def consecutive_failures(history: Sequence[AttemptRecord]) -> list[AttemptRecord]:
    """The unbroken run of failed/escalated attempts, newest first, ending at a succeeded/cancelled one.

    Attempts still running, and transient failures (stopped by the outside), neither count nor break it.
    """
    streak: list[AttemptRecord] = []
    for attempt in _newest_first(history):
        if is_transient(attempt):
            continue
        if attempt.status in _STREAK_BREAKERS:
            break
        if attempt.status in _FAILED:
            streak.append(attempt)
    return streak


def _skip(reason: SkipReason, detail: str, *, retry_after: timedelta | None = None) -> Decision:
    return Decision(action="skip", reason=reason, detail=detail, retry_after=retry_after)


def _is_own_change(failure: ObservedFailure, history: Sequence[AttemptRecord], bots: set[str]) -> str | None:
    if failure.triggered_by is not None and failure.triggered_by.casefold() in bots:
        return f"run was triggered by greenloop's own account {failure.triggered_by!r}"
    if has_attempt_trailer(failure.commit_message):
        return f"commit carries a {ATTEMPT_TRAILER} trailer"
    sha = failure.head_sha.strip().lower()
    for attempt in history:
        for produced in (attempt.merged_sha, attempt.pushed_sha):
            if produced and produced.strip().lower() == sha:
                return f"commit {sha[:12]} was produced by attempt {attempt.id!r}"
    return None


def decide(
    project: ProjectConfig,
    failure: ObservedFailure,
    history: Sequence[AttemptRecord],
    *,
    now: datetime,
    kill_switch: bool,
    bot_logins: Collection[str],
    already_rerun: bool = False,
    spend: SpendStatus | None = None,
) -> Decision:
    """Decide whether `failure` gets a remediation attempt, a re-run, or nothing (and why).

    `history` is every attempt recorded for the project (any job); `already_rerun` says a re-run of this
    failure was already asked for; `spend` is where the cost limits stand (None: not checked). Naive
    datetimes are taken as UTC. Never raises for well-typed input.
    """
    # Security: the kill switch and the pause come first; nothing below can override them.
    if kill_switch:
        return _skip(SkipReason.KILL_SWITCH, "the global kill switch is on")
    if project.paused:
        return _skip(SkipReason.PAUSED, f"project {project.name!r} is paused")
    if project.autonomy is Autonomy.OBSERVE:
        return _skip(SkipReason.OBSERVE_ONLY, f"project {project.name!r} is observe-only")
    if not project.watches(failure.job):
        return _skip(SkipReason.JOB_NOT_WATCHED, f"job {failure.job!r} is not watched")
    if failure.conclusion.strip().lower() not in FAILING_CONCLUSIONS:
        return _skip(SkipReason.NOT_FAILING, f"run {failure.run_id!r} concluded {failure.conclusion!r}")
    # Security: circuit breaker: never remediate a failure greenloop caused, or it would chase its own tail.
    own = _is_own_change(failure, history, {b.casefold() for b in bot_logins})
    if own is not None:
        return _skip(SkipReason.OWN_CHANGE, own)
    active = [a for a in history if a.status in ACTIVE_STATUSES]
    if active:
        return _skip(SkipReason.ACTIVE_ATTEMPT, f"attempt {active[0].id!r} is still {active[0].status.value}")
    fingerprint = failure_fingerprint(project.name, failure.job, failure.head_sha)
    handled = _newest_first([a for a in history if a.fingerprint == fingerprint])
    retry = ""
    if handled:
        refused = _transient_retry(project, handled, now)
        if refused is not None:
            return refused
        retries = sum(map(is_transient, handled))
        retry = f" (retry {retries} of {project.max_transient_retries} after a transient failure)"
    streak = consecutive_failures(history)
    newest = _newest_first(history)
    if len(streak) >= project.max_consecutive_failures or (newest and newest[0].status is AttemptStatus.ESCALATED):
        return _skip(
            SkipReason.ESCALATED,
            f"{len(streak)} consecutive failed attempt(s); escalated to a human",
        )
    if streak:
        last = streak[0]
        finished = last.finished_at or last.created_at
        wait = timedelta(seconds=min(backoff_seconds(project.backoff, len(streak)), _MAX_WAIT_SECONDS))
        elapsed = _as_utc(now) - finished
        if elapsed < wait:
            return _skip(
                SkipReason.BACKOFF,
                f"backing off after {len(streak)} failed attempt(s); {int((wait - elapsed).total_seconds())}s left",
                retry_after=wait - elapsed,
            )
    is_flaky = failure.job in project.flaky_jobs or failure.passed_before_on_same_sha
    if is_flaky and not already_rerun:
        why = "is marked flaky" if failure.job in project.flaky_jobs else "passed before on the same commit"
        return Decision(action="rerun", reason=SkipReason.FLAKY_RERUN, detail=f"job {failure.job!r} {why}")
    if spend is not None and spend.level == "exhausted":
        until = _as_utc(spend.resets_at) - _as_utc(now) if spend.resets_at is not None else None
        return _skip(SkipReason.BUDGET, f"cost limit reached: {spend.detail}", retry_after=until)
    return Decision(action="start", reason=None, detail=f"job {failure.job!r} is red on {failure.head_sha[:12]}{retry}")


def _transient_retry(project: ProjectConfig, handled: Sequence[AttemptRecord], now: datetime) -> Decision | None:
    """None when a failure already attempted (`handled`, newest first) may start again: its newest attempt
    failed transient, `max_transient_retries` are not used up and their backoff is over; else the skip."""
    newest = handled[0]
    if not is_transient(newest):
        return _skip(
            SkipReason.ALREADY_HANDLED, f"attempt {newest.id!r} already handled this failure ({newest.status.value})"
        )
    transient = sum(map(is_transient, handled))
    if transient > project.max_transient_retries:
        return _skip(
            SkipReason.ALREADY_HANDLED,
            f"{transient} attempt(s) at this failure were stopped by the outside; "
            f"max_transient_retries ({project.max_transient_retries}) used up",
        )
    finished = newest.finished_at or newest.created_at
    wait = timedelta(seconds=min(backoff_seconds(project.backoff, transient), _MAX_WAIT_SECONDS))
    elapsed = _as_utc(now) - finished
    if elapsed < wait:
        return _skip(
            SkipReason.BACKOFF,
            f"backing off after {transient} transient failure(s) of this failure; "
            f"{int((wait - elapsed).total_seconds())}s left",
            retry_after=wait - elapsed,
        )
    return None
