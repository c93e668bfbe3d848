"""The gate's transient rules: a failure stopped by the outside may start again, after a backoff, a bounded
number of times; it neither counts toward nor breaks the consecutive-failure streak."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from policy.config import Backoff, ProjectConfig
from policy.gate import AttemptRecord, Decision, ObservedFailure, consecutive_failures, decide, failure_fingerprint
from policy.types import AttemptStatus, FailureClass, SkipReason

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
SHA = "0123456789abcdef0123456789abcdef01234567"
FP = failure_fingerprint("demo", "ci", SHA)
_ids = iter(range(1, 10_000))


def _project(**overrides: Any) -> ProjectConfig:
    fields: dict[str, Any] = {
        "name": "demo",
        "repo": "acme/demo",
        "backoff": Backoff(base_seconds=300, factor=2),
        "max_transient_retries": 2,
    }
    fields.update(overrides)
    return ProjectConfig(**fields)


def _failure() -> ObservedFailure:
    return ObservedFailure(project="demo", job="ci", run_id="9", head_sha=SHA, conclusion="failure")


def _attempt(
    status: AttemptStatus = AttemptStatus.FAILED,
    *,
    failure_class: FailureClass | None = FailureClass.TRANSIENT,
    ago: float = 86_400,
    fingerprint: str = FP,
) -> AttemptRecord:
    n = next(_ids)
    return AttemptRecord(
        id=f"a{n:05d}",
        job="ci",
        status=status,
        fingerprint=fingerprint,
        created_at=NOW - timedelta(seconds=ago + 60 + n),
        finished_at=NOW - timedelta(seconds=ago + n),
        failure_class=failure_class,
    )


def _decide(history: list[AttemptRecord], **project: Any) -> Decision:
    return decide(_project(**project), _failure(), history, now=NOW, kill_switch=False, bot_logins=())


def test_a_transient_failure_starts_again_once_its_backoff_is_over() -> None:
    decision = _decide([_attempt(ago=301)])
    assert decision.action == "start"
    assert "retry 1 of 2 after a transient failure" in decision.detail


def test_a_transient_failure_backs_off_first_with_a_requeue_time() -> None:
    decision = _decide([_attempt(ago=100)])
    assert (decision.action, decision.reason) == ("skip", SkipReason.BACKOFF)
    assert decision.retry_after is not None and timedelta(seconds=190) < decision.retry_after <= timedelta(seconds=200)


def test_the_backoff_grows_with_each_transient_failure_of_the_same_failure() -> None:
    # Two transient failures: 300 * 2 = 600 s; 400 s after the second, it still waits.
    decision = _decide([_attempt(ago=400), _attempt(ago=5_000)])
    assert (decision.action, decision.reason) == ("skip", SkipReason.BACKOFF)
    assert _decide([_attempt(ago=700), _attempt(ago=5_000)]).action == "start"


def test_retries_stop_at_max_transient_retries() -> None:
    history = [_attempt(), _attempt(), _attempt()]  # the first attempt and 2 retries, all transient
    decision = _decide(history)
    assert (decision.action, decision.reason) == ("skip", SkipReason.ALREADY_HANDLED)
    assert "max_transient_retries (2) used up" in decision.detail
    assert _decide(history, max_transient_retries=3).action == "start"


def test_zero_retries_means_a_transient_failure_is_final() -> None:
    decision = _decide([_attempt()], max_transient_retries=0)
    assert (decision.action, decision.reason) == ("skip", SkipReason.ALREADY_HANDLED)


def test_a_permanent_failure_is_never_retried() -> None:
    decision = _decide([_attempt(failure_class=FailureClass.PERMANENT)])
    assert (decision.action, decision.reason) == ("skip", SkipReason.ALREADY_HANDLED)


def test_an_unclassified_failure_counts_as_permanent() -> None:
    decision = _decide([_attempt(failure_class=None)])
    assert (decision.action, decision.reason) == ("skip", SkipReason.ALREADY_HANDLED)


def test_only_the_newest_attempt_of_the_failure_decides() -> None:
    # A permanent failure after a transient one: the failure is handled.
    history = [_attempt(failure_class=FailureClass.PERMANENT, ago=1_000), _attempt(ago=5_000)]
    assert _decide(history).reason is SkipReason.ALREADY_HANDLED


def test_an_escalated_or_cancelled_attempt_is_not_a_transient_one() -> None:
    for status in (AttemptStatus.ESCALATED, AttemptStatus.CANCELLED, AttemptStatus.SUCCEEDED):
        assert _decide([_attempt(status)]).reason is SkipReason.ALREADY_HANDLED


def test_transient_failures_neither_count_nor_break_the_streak() -> None:
    other = failure_fingerprint("demo", "ci", "f" * 40)
    permanent = [_attempt(failure_class=FailureClass.PERMANENT, fingerprint=other, ago=90_000 + i) for i in range(2)]
    transient = _attempt(fingerprint=failure_fingerprint("demo", "ci", "e" * 40), ago=80_000)
    assert consecutive_failures([transient, *permanent]) == sorted(permanent, key=lambda a: a.created_at, reverse=True)
    # Two permanent failures in a row with a cap of 2: escalated, whatever transient failures lie between.
    decision = _decide([transient, *permanent], max_consecutive_failures=2)
    assert decision.reason is SkipReason.ESCALATED


def test_a_transient_retry_still_obeys_the_kill_switch() -> None:
    decision = decide(_project(), _failure(), [_attempt(ago=301)], now=NOW, kill_switch=True, bot_logins=())
    assert decision.reason is SkipReason.KILL_SWITCH
