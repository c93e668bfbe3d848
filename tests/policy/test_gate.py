"""The remediation gate: one test per reason, the circuit breaker, and the order of the checks."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from policy.config import Backoff, ProjectConfig
from policy.gate import (
    ATTEMPT_TRAILER,
    AttemptRecord,
    Decision,
    ObservedFailure,
    attempt_trailer,
    backoff_seconds,
    consecutive_failures,
    decide,
    failure_fingerprint,
    has_attempt_trailer,
)
from policy.types import ACTIVE_STATUSES, AttemptStatus, Autonomy, SkipReason

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
BOT = "greenloop[bot]"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _project(**overrides: Any) -> ProjectConfig:
    fields: dict[str, Any] = {"name": "demo", "repo": "acme/demo", "backoff": Backoff(base_seconds=300, factor=2)}
    fields.update(overrides)
    return ProjectConfig(**fields)


def _failure(**overrides: Any) -> ObservedFailure:
    fields: dict[str, Any] = {
        "project": "demo",
        "job": "ci",
        "run_id": "101",
        "head_sha": SHA,
        "conclusion": "failure",
        "triggered_by": "alice",
        "commit_message": "Bump the parser\n\nIt was old.",
        "event": "push",
    }
    fields.update(overrides)
    return ObservedFailure(**fields)


_counter = iter(range(1, 10_000))


def _attempt(status: AttemptStatus, *, ago: float = 3600, sha: str | None = None, **overrides: Any) -> AttemptRecord:
    n = next(_counter)
    fields: dict[str, Any] = {
        "id": f"att{n:06d}",
        "job": "ci",
        "status": status,
        "fingerprint": failure_fingerprint("demo", "ci", sha or f"{n:040x}"),
        "created_at": NOW - timedelta(seconds=ago + 60),
        "finished_at": None if status in ACTIVE_STATUSES else NOW - timedelta(seconds=ago),
    }
    fields.update(overrides)
    return AttemptRecord(**fields)


def _decide(
    project: ProjectConfig | None = None,
    failure: ObservedFailure | None = None,
    history: Sequence[AttemptRecord] = (),
    *,
    now: datetime = NOW,
    kill_switch: bool = False,
    already_rerun: bool = False,
) -> Decision:
    return decide(
        project or _project(),
        failure or _failure(),
        history,
        now=now,
        kill_switch=kill_switch,
        bot_logins={BOT},
        already_rerun=already_rerun,
    )


def _assert_skip(decision: Decision, reason: SkipReason) -> None:
    assert (decision.action, decision.reason) == ("skip", reason), decision
    assert decision.detail


def test_starts_an_attempt_for_a_plain_failure() -> None:
    decision = _decide()
    assert (decision.action, decision.reason) == ("start", None)


@pytest.mark.parametrize("conclusion", ["failure", "timed_out", "startup_failure", "FAILURE"])
def test_failing_conclusions_start(conclusion: str) -> None:
    assert _decide(failure=_failure(conclusion=conclusion)).action == "start"


def test_kill_switch_skips_everything() -> None:
    _assert_skip(_decide(kill_switch=True), SkipReason.KILL_SWITCH)


def test_kill_switch_comes_before_pause() -> None:
    _assert_skip(_decide(_project(paused=True), kill_switch=True), SkipReason.KILL_SWITCH)


def test_paused_project_is_skipped() -> None:
    _assert_skip(_decide(_project(paused=True)), SkipReason.PAUSED)


def test_paused_comes_before_observe_only() -> None:
    _assert_skip(_decide(_project(paused=True, autonomy=Autonomy.OBSERVE)), SkipReason.PAUSED)


def test_observe_only_project_is_skipped() -> None:
    _assert_skip(_decide(_project(autonomy=Autonomy.OBSERVE)), SkipReason.OBSERVE_ONLY)


@pytest.mark.parametrize("autonomy", [Autonomy.PROPOSE, Autonomy.AUTO_MERGE])
def test_acting_autonomy_levels_start(autonomy: Autonomy) -> None:
    assert _decide(_project(autonomy=autonomy)).action == "start"


def test_unwatched_job_is_skipped() -> None:
    _assert_skip(_decide(_project(jobs=("lint",)), _failure(job="ci")), SkipReason.JOB_NOT_WATCHED)


def test_watched_job_in_explicit_list_starts() -> None:
    assert _decide(_project(jobs=("lint", "ci"))).action == "start"


@pytest.mark.parametrize("conclusion", ["success", "cancelled", "skipped", "neutral", "action_required", ""])
def test_not_failing_run_is_skipped(conclusion: str) -> None:
    _assert_skip(_decide(failure=_failure(conclusion=conclusion)), SkipReason.NOT_FAILING)


# --- circuit breaker --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("login", [BOT, "GreenLoop[bot]"])
def test_run_triggered_by_the_bot_trips_the_breaker(login: str) -> None:
    _assert_skip(_decide(failure=_failure(triggered_by=login)), SkipReason.OWN_CHANGE)


def test_breaker_beats_flaky_rerun_and_empty_history() -> None:
    # Even a flaky job that greenloop broke is not re-run or remediated: the loop stops here.
    decision = _decide(_project(flaky_jobs=("ci",)), _failure(triggered_by=BOT, passed_before_on_same_sha=True))
    _assert_skip(decision, SkipReason.OWN_CHANGE)


def test_commit_with_attempt_trailer_trips_the_breaker() -> None:
    message = f"Fix the parser\n\nThe tests were red.\n\n{attempt_trailer('a1b2c3d4e5f6')}\n"
    _assert_skip(_decide(failure=_failure(commit_message=message)), SkipReason.OWN_CHANGE)


def test_commit_merged_by_a_previous_attempt_trips_the_breaker() -> None:
    history = [_attempt(AttemptStatus.SUCCEEDED, merged_sha=SHA.upper())]
    _assert_skip(_decide(history=history), SkipReason.OWN_CHANGE)


def test_commit_pushed_by_a_previous_attempt_trips_the_breaker() -> None:
    history = [_attempt(AttemptStatus.FAILED, pushed_sha=SHA)]
    _assert_skip(_decide(history=history), SkipReason.OWN_CHANGE)


def test_breaker_comes_before_active_attempt() -> None:
    history = [_attempt(AttemptStatus.RUNNING)]
    _assert_skip(_decide(failure=_failure(triggered_by=BOT), history=history), SkipReason.OWN_CHANGE)


def test_human_push_is_not_own_change() -> None:
    history = [_attempt(AttemptStatus.SUCCEEDED, merged_sha="f" * 40)]
    assert _decide(failure=_failure(triggered_by="alice"), history=history).action == "start"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param("Fix\n\nGreenloop-Attempt: a1b2c3d4e5f6", True, id="trailer"),
        pytest.param("Fix\n\nBody.\n\nSigned-off-by: A <a@x>\nGreenloop-Attempt: a1b2c3", True, id="among-trailers"),
        pytest.param("Fix\r\n\r\ngreenloop-attempt:a1b2c3d4\r\n", True, id="crlf-lowercase-key"),
        pytest.param("Fix\n\nGreenloop-Attempt: a1b2c3d4\n\n\n", True, id="trailing-blank-lines"),
        pytest.param("Greenloop-Attempt: a1b2c3d4", True, id="single-paragraph"),
        pytest.param("Fix\n\nGreenloop-Attempt: a1b2c3\n\nMore prose after.", False, id="not-last-paragraph"),
        pytest.param("Fix\n\nSee Greenloop-Attempt: a1b2c3 for details", False, id="mentioned-in-prose"),
        pytest.param("Fix\n\nGreenloop-Attempt: ", False, id="no-id"),
        pytest.param("Fix\n\nGreenloop-Attempt: x", False, id="bad-id"),
        pytest.param("Fix\n\nGreenloop-Attempted: a1b2c3", False, id="other-key"),
        pytest.param("", False, id="empty"),
        pytest.param(None, False, id="none"),
    ],
)
def test_has_attempt_trailer(message: str | None, expected: bool) -> None:
    assert has_attempt_trailer(message) is expected


def test_attempt_trailer_round_trips() -> None:
    line = attempt_trailer("a1b2c3d4e5f6")
    assert line.startswith(ATTEMPT_TRAILER + ": ")
    assert has_attempt_trailer(f"Subject\n\n{line}")


# --- attempts in flight and history -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", sorted(ACTIVE_STATUSES))
def test_active_attempt_on_the_project_skips(status: AttemptStatus) -> None:
    history = [_attempt(status, job="other-job")]
    _assert_skip(_decide(history=history), SkipReason.ACTIVE_ATTEMPT)


def test_same_failure_already_handled_is_skipped() -> None:
    history = [_attempt(AttemptStatus.SUCCEEDED, sha=SHA)]
    _assert_skip(_decide(history=history), SkipReason.ALREADY_HANDLED)


def test_same_job_on_a_new_commit_is_a_new_failure() -> None:
    history = [_attempt(AttemptStatus.SUCCEEDED, sha="e" * 40)]
    assert _decide(history=history).action == "start"


def test_consecutive_failures_reaching_the_cap_escalate() -> None:
    history = [_attempt(AttemptStatus.FAILED, ago=10_000 + i) for i in range(3)]
    _assert_skip(_decide(_project(max_consecutive_failures=3), history=history), SkipReason.ESCALATED)


def test_newest_attempt_escalated_stays_escalated() -> None:
    history = [_attempt(AttemptStatus.SUCCEEDED, ago=50_000), _attempt(AttemptStatus.ESCALATED, ago=40_000)]
    _assert_skip(_decide(history=history), SkipReason.ESCALATED)


@pytest.mark.parametrize("breaker", [AttemptStatus.SUCCEEDED, AttemptStatus.CANCELLED])
def test_success_or_cancel_resets_the_failure_streak(breaker: AttemptStatus) -> None:
    old_failures = [_attempt(AttemptStatus.FAILED, ago=90_000 + i) for i in range(5)]
    history = [*old_failures, _attempt(breaker, ago=50_000)]
    assert _decide(_project(max_consecutive_failures=3), history=history).action == "start"


def test_consecutive_failures_counts_newest_first_until_a_success() -> None:
    history = [
        _attempt(AttemptStatus.FAILED, ago=100),
        _attempt(AttemptStatus.SUCCEEDED, ago=200),
        _attempt(AttemptStatus.FAILED, ago=300),
        _attempt(AttemptStatus.ESCALATED, ago=50),
    ]
    streak = consecutive_failures(history)
    assert [a.status for a in streak] == [AttemptStatus.ESCALATED, AttemptStatus.FAILED]
    assert streak[0].id == history[3].id


def test_backoff_after_a_recent_failure() -> None:
    history = [_attempt(AttemptStatus.FAILED, ago=100)]
    decision = _decide(history=history)
    _assert_skip(decision, SkipReason.BACKOFF)
    assert decision.retry_after == timedelta(seconds=200)


def test_backoff_grows_with_consecutive_failures() -> None:
    history = [_attempt(AttemptStatus.FAILED, ago=400), _attempt(AttemptStatus.FAILED, ago=5_000)]
    decision = _decide(history=history)  # wait is 300 * 2 = 600s, 400s elapsed
    _assert_skip(decision, SkipReason.BACKOFF)
    assert decision.retry_after == timedelta(seconds=200)


def test_backoff_elapsed_starts_again() -> None:
    history = [_attempt(AttemptStatus.FAILED, ago=301)]
    assert _decide(history=history).action == "start"


def test_naive_datetimes_are_taken_as_utc() -> None:
    naive_finished = (NOW - timedelta(seconds=100)).replace(tzinfo=None)
    history = [_attempt(AttemptStatus.FAILED, finished_at=naive_finished, created_at=naive_finished)]
    _assert_skip(_decide(history=history, now=NOW.replace(tzinfo=None)), SkipReason.BACKOFF)


@pytest.mark.parametrize(
    ("failures", "expected"),
    [
        pytest.param(0, 0.0, id="none"),
        pytest.param(-1, 0.0, id="negative"),
        pytest.param(1, 300.0, id="first"),
        pytest.param(2, 600.0, id="second"),
        pytest.param(3, 1200.0, id="third"),
        pytest.param(20, 3600.0, id="capped"),
        pytest.param(100_000, 3600.0, id="overflow-capped"),
    ],
)
def test_backoff_seconds(failures: int, expected: float) -> None:
    backoff = Backoff(base_seconds=300, factor=2, max_seconds=3600)
    assert backoff_seconds(backoff, failures) == expected


def test_backoff_seconds_zero_base_never_waits() -> None:
    assert backoff_seconds(Backoff(base_seconds=0, factor=10, max_seconds=60), 5_000) == 0.0


# --- flaky jobs ---------------------------------------------------------------------------------------------------


def test_flaky_job_is_rerun_first() -> None:
    decision = _decide(_project(flaky_jobs=("ci",)))
    assert (decision.action, decision.reason) == ("rerun", SkipReason.FLAKY_RERUN)


def test_job_that_passed_before_on_the_same_commit_is_rerun() -> None:
    decision = _decide(failure=_failure(passed_before_on_same_sha=True))
    assert (decision.action, decision.reason) == ("rerun", SkipReason.FLAKY_RERUN)


def test_flaky_job_already_rerun_gets_an_attempt() -> None:
    decision = _decide(_project(flaky_jobs=("ci",)), already_rerun=True)
    assert (decision.action, decision.reason) == ("start", None)


def test_backoff_comes_before_flaky_rerun() -> None:
    history = [_attempt(AttemptStatus.FAILED, ago=10)]
    _assert_skip(_decide(_project(flaky_jobs=("ci",)), history=history), SkipReason.BACKOFF)


# --- fingerprint --------------------------------------------------------------------------------------------------


def test_failure_fingerprint_is_stable_and_specific() -> None:
    fp = failure_fingerprint("demo", "ci", SHA)
    assert fp == failure_fingerprint("demo", "ci", SHA.upper())
    # Golden value: fingerprints are stored, so the recipe must never change silently.
    assert fp == "28f3af2ed38165e9862c75438dc70f380fed7f3e09ddefa1cebaec3de0c8f58e"
    others = {
        failure_fingerprint("demo2", "ci", SHA),
        failure_fingerprint("demo", "ci2", SHA),
        failure_fingerprint("demo", "ci", "f" * 40),
        failure_fingerprint("dem", "oci", SHA),  # field boundaries matter
    }
    assert fp not in others
    assert len(others) == 4
