"""The attempt store on SQLite and PostgreSQL: the database is the lock, transitions are compare-and-set."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from policy.types import TERMINAL_STATUSES, AttemptStatus
from reconciler.errors import StoreError, TransitionRefused, UnknownProject
from reconciler.store import (
    StartOutcome,
    active_attempts,
    attempt_history,
    attempt_transitions,
    can_transition,
    get_attempt,
    heartbeat,
    list_attempts,
    start_attempt,
    transition,
)
from reconciler.store.attempts import reopen_from_forge
from reconciler.store.engine import SessionFactory

pytestmark = pytest.mark.anyio

AddProject = Callable[[str], Awaitable[str]]
S = AttemptStatus


async def _start(sessions: SessionFactory, project: str, fingerprint: str, **kw: str) -> StartOutcome:
    return await start_attempt(
        sessions,
        project=project,
        job=kw.get("job", "nightly"),
        fingerprint=fingerprint,
        run_id=kw.get("run_id", "101"),
        head_sha=kw.get("head_sha", "a" * 40),
    )


async def test_start_attempt_inserts_a_pending_attempt_with_a_creation_transition(
    sessions: SessionFactory, project: str
) -> None:
    outcome = await start_attempt(
        sessions, project=project, job="nightly", fingerprint="fp-1", run_id="7", head_sha="b" * 40, trace_id="t-1"
    )

    assert outcome.started and outcome.reason == "started"
    assert outcome.attempt_id is not None and len(outcome.attempt_id) == 12
    row = await get_attempt(sessions, outcome.attempt_id)
    assert row is not None
    assert (row.project, row.job, row.fingerprint, row.run_id, row.head_sha, row.trace_id) == (
        project,
        "nightly",
        "fp-1",
        "7",
        "b" * 40,
        "t-1",
    )
    assert row.status == S.PENDING and row.is_active and row.finished_at is None
    assert row.created_at.tzinfo is not None and row.created_at.utcoffset() == UTC.utcoffset(None)
    trail = await attempt_transitions(sessions, outcome.attempt_id)
    assert [(t.from_status, t.to_status, t.reason) for t in trail] == [(None, "pending", "started")]


async def test_fifty_concurrent_starts_for_one_project_yield_exactly_one_attempt(
    sessions: SessionFactory, project: str
) -> None:
    outcomes = await asyncio.gather(*(_start(sessions, project, f"fp-{i}", run_id=str(i)) for i in range(50)))

    reasons = Counter(o.reason for o in outcomes)
    assert reasons == {"started": 1, "already_active": 49}
    winner = next(o for o in outcomes if o.started)
    assert all(o.attempt_id == winner.attempt_id for o in outcomes if not o.started)
    assert [a.id for a in await active_attempts(sessions, project)] == [winner.attempt_id]
    assert len(await list_attempts(sessions, project=project)) == 1


async def test_concurrent_starts_for_one_fingerprint_across_projects_yield_one_attempt(
    sessions: SessionFactory, add_project: AddProject
) -> None:
    names = [await add_project(f"p{i}") for i in range(12)]

    outcomes = await asyncio.gather(*(_start(sessions, name, "shared-fp") for name in names))

    assert Counter(o.reason for o in outcomes) == {"started": 1, "already_handled": 11}
    assert len(await list_attempts(sessions)) == 1


async def test_same_fingerprint_twice_is_already_handled(sessions: SessionFactory, project: str) -> None:
    first = await _start(sessions, project, "fp-same")
    second = await _start(sessions, project, "fp-same")

    assert first.reason == "started"
    assert second == StartOutcome(False, first.attempt_id, "already_handled")


async def test_fingerprint_stays_handled_after_the_attempt_finished(sessions: SessionFactory, project: str) -> None:
    first = await _start(sessions, project, "fp-done")
    assert first.attempt_id is not None
    assert await transition(sessions, first.attempt_id, S.FAILED, reason="guard stop")

    again = await _start(sessions, project, "fp-done")

    assert again == StartOutcome(False, first.attempt_id, "already_handled")


async def test_active_attempt_blocks_a_new_fingerprint_for_the_same_project(
    sessions: SessionFactory, project: str
) -> None:
    first = await _start(sessions, project, "fp-a")
    assert first.attempt_id is not None
    assert await transition(sessions, first.attempt_id, S.RUNNING, reason="dispatched")
    assert await transition(sessions, first.attempt_id, S.PR_OPEN, reason="pr", pr_number=3)

    blocked = await _start(sessions, project, "fp-b")

    assert blocked == StartOutcome(False, first.attempt_id, "already_active")


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES), ids=str)
async def test_a_terminal_attempt_does_not_block_a_new_one(
    sessions: SessionFactory, project: str, terminal: AttemptStatus
) -> None:
    first = await _start(sessions, project, "fp-old")
    assert first.attempt_id is not None
    if terminal is S.SUCCEEDED:
        assert await transition(sessions, first.attempt_id, S.VERIFYING, reason="merged")
    assert await transition(sessions, first.attempt_id, terminal, reason="end")

    second = await _start(sessions, project, "fp-new")

    assert second.reason == "started" and second.attempt_id != first.attempt_id
    assert [a.id for a in await active_attempts(sessions, project)] == [second.attempt_id]


async def test_other_projects_are_not_blocked(sessions: SessionFactory, add_project: AddProject) -> None:
    await add_project("one")
    await add_project("two")

    assert (await _start(sessions, "one", "fp-1")).started
    assert (await _start(sessions, "two", "fp-2")).started
    assert {a.project for a in await active_attempts(sessions)} == {"one", "two"}


async def test_start_for_an_unknown_project_raises(sessions: SessionFactory) -> None:
    with pytest.raises(UnknownProject) as info:
        await _start(sessions, "ghost", "fp-x")
    assert info.value.project == "ghost"


async def test_transition_walks_the_happy_path_and_records_each_change(sessions: SessionFactory, project: str) -> None:
    attempt_id = (await _start(sessions, project, "fp-happy")).attempt_id
    assert attempt_id is not None

    assert await transition(sessions, attempt_id, S.RUNNING, reason="dispatched")
    assert await transition(
        sessions,
        attempt_id,
        S.PR_OPEN,
        reason="pull request opened",
        branch="greenloop/fix-1",
        pr_number=12,
        pr_url="http://forge/pr/12",
        pushed_sha="c" * 40,
    )
    assert await transition(sessions, attempt_id, S.VERIFYING, reason="merged", merged_sha="d" * 40)
    assert await transition(
        sessions, attempt_id, S.SUCCEEDED, reason="job green", input_tokens=10, output_tokens=5, cost_usd=0.25
    )

    row = await get_attempt(sessions, attempt_id)
    assert row is not None
    assert row.status == S.SUCCEEDED and not row.is_active
    assert (row.branch, row.pr_number, row.pr_url) == ("greenloop/fix-1", 12, "http://forge/pr/12")
    assert (row.pushed_sha, row.merged_sha) == ("c" * 40, "d" * 40)
    assert (row.input_tokens, row.output_tokens, row.cost_usd) == (10, 5, 0.25)
    assert row.finished_at is not None and row.finished_at >= row.created_at
    trail = [(t.from_status, t.to_status, t.reason) for t in await attempt_transitions(sessions, attempt_id)]
    assert trail == [
        (None, "pending", "started"),
        ("pending", "running", "dispatched"),
        ("running", "pr_open", "pull request opened"),
        ("pr_open", "verifying", "merged"),
        ("verifying", "succeeded", "job green"),
    ]


async def test_transition_is_compare_and_set_on_the_expected_status(sessions: SessionFactory, project: str) -> None:
    attempt_id = (await _start(sessions, project, "fp-cas")).attempt_id
    assert attempt_id is not None

    assert await transition(sessions, attempt_id, S.RUNNING, reason="first", expected=S.PENDING)
    # A second worker that also saw `pending` loses.
    assert not await transition(sessions, attempt_id, S.RUNNING, reason="second", expected=S.PENDING)
    assert not await transition(sessions, attempt_id, S.FAILED, reason="stale", expected=S.PENDING)

    row = await get_attempt(sessions, attempt_id)
    assert row is not None and row.status == S.RUNNING
    assert [t.reason for t in await attempt_transitions(sessions, attempt_id)] == ["started", "first"]


async def test_a_pass_holding_an_earlier_revision_round_starts_no_second_one_nor_overwrites_checks(
    sessions: SessionFactory, project: str
) -> None:
    attempt_id = (await _start(sessions, project, "fp-round")).attempt_id
    assert attempt_id is not None
    assert await transition(sessions, attempt_id, S.RUNNING, reason="started", expected=S.PENDING)
    assert await transition(sessions, attempt_id, S.PR_OPEN, reason="pr_opened", expected=S.RUNNING)
    # Pass A reads round 0 and starts round 1; the round ends with the PR open again.
    assert await transition(
        sessions,
        attempt_id,
        S.RUNNING,
        reason="revision_round",
        expected=S.PR_OPEN,
        expected_revisions=0,
        revisions=1,
    )
    assert await transition(sessions, attempt_id, S.PR_OPEN, reason="pr_opened", expected=S.RUNNING)
    # Pass B still holds its read of round 0 (checks failing on the old head): it starts nothing.
    assert not await transition(
        sessions, attempt_id, S.RUNNING, reason="stale", expected=S.PR_OPEN, expected_revisions=0, revisions=1
    )
    # Once merged (verifying), a stale `pr_open` verdict is not written over the newer one.
    assert await transition(sessions, attempt_id, S.VERIFYING, reason="merged", checks="passed")
    assert not await heartbeat(sessions, attempt_id, expected=S.PR_OPEN, checks="failing")
    row = await get_attempt(sessions, attempt_id)
    assert row is not None and (row.status, row.revisions, row.checks) == (S.VERIFYING, 1, "passed")


async def test_concurrent_terminal_transitions_have_one_winner(sessions: SessionFactory, project: str) -> None:
    attempt_id = (await _start(sessions, project, "fp-race")).attempt_id
    assert attempt_id is not None
    assert await transition(sessions, attempt_id, S.RUNNING, reason="dispatched")

    targets = [S.FAILED, S.CANCELLED, S.ESCALATED] * 4
    results = await asyncio.gather(
        *(transition(sessions, attempt_id, to, reason=f"racer {i}", expected=S.RUNNING) for i, to in enumerate(targets))
    )

    assert results.count(True) == 1
    trail = await attempt_transitions(sessions, attempt_id)
    assert [t.from_status for t in trail] == [None, "pending", "running"]
    winner = targets[results.index(True)]
    row = await get_attempt(sessions, attempt_id)
    assert row is not None and row.status == winner and row.finished_at is not None


async def test_transition_of_a_finished_or_missing_attempt_changes_nothing(
    sessions: SessionFactory, project: str
) -> None:
    attempt_id = (await _start(sessions, project, "fp-fin")).attempt_id
    assert attempt_id is not None
    assert await transition(sessions, attempt_id, S.CANCELLED, reason="operator")

    assert not await transition(sessions, attempt_id, S.FAILED, reason="late")
    assert not await transition(sessions, "nope", S.RUNNING, reason="ghost")
    assert len(await attempt_transitions(sessions, attempt_id)) == 2


@pytest.mark.parametrize(
    ("current", "to"),
    [
        pytest.param(S.PENDING, S.SUCCEEDED, id="pending-to-succeeded"),
        pytest.param(S.RUNNING, S.PENDING, id="backwards"),
        pytest.param(S.PENDING, S.PENDING, id="same-state"),
    ],
)
async def test_transition_outside_the_state_machine_is_refused(
    sessions: SessionFactory, project: str, current: AttemptStatus, to: AttemptStatus
) -> None:
    attempt_id = (await _start(sessions, project, "fp-bad")).attempt_id
    assert attempt_id is not None
    if current is not S.PENDING:
        assert await transition(sessions, attempt_id, current, reason="setup")

    with pytest.raises(TransitionRefused) as info:
        await transition(sessions, attempt_id, to, reason="bad")

    assert (info.value.from_status, info.value.to_status) == (current.value, to.value)
    row = await get_attempt(sessions, attempt_id)
    assert row is not None and row.status == current


@pytest.mark.parametrize(
    "field",
    [
        pytest.param("status", id="status"),
        pytest.param("project", id="project"),
        pytest.param("fingerprint", id="fingerprint"),
        pytest.param("finished_at", id="finished_at"),
        pytest.param("id", id="id"),
    ],
)
async def test_transition_and_heartbeat_refuse_fields_the_store_owns(
    sessions: SessionFactory, project: str, field: str
) -> None:
    attempt_id = (await _start(sessions, project, "fp-fields")).attempt_id
    assert attempt_id is not None

    with pytest.raises(TypeError, match=field):
        await transition(sessions, attempt_id, S.RUNNING, reason="x", **{field: "evil"})
    with pytest.raises(TypeError, match=field):
        await heartbeat(sessions, attempt_id, **{field: "evil"})
    row = await get_attempt(sessions, attempt_id)
    assert row is not None and row.status == S.PENDING


async def test_heartbeat_touches_active_attempts_only(sessions: SessionFactory, project: str) -> None:
    attempt_id = (await _start(sessions, project, "fp-hb")).attempt_id
    assert attempt_id is not None

    assert await heartbeat(sessions, attempt_id, turns=3, input_tokens=100)
    row = await get_attempt(sessions, attempt_id)
    assert row is not None and row.heartbeat_at is not None and (row.turns, row.input_tokens) == (3, 100)

    assert await transition(sessions, attempt_id, S.FAILED, reason="worker died")
    assert not await heartbeat(sessions, attempt_id)
    assert not await heartbeat(sessions, "missing")


async def test_history_lists_newest_first_and_filters(sessions: SessionFactory, project: str) -> None:
    ids = []
    for i in range(3):
        outcome = await _start(sessions, project, f"fp-h{i}")
        assert outcome.attempt_id is not None
        ids.append(outcome.attempt_id)
        if i < 2:
            assert await transition(sessions, outcome.attempt_id, S.FAILED, reason="no fix")

    history = await attempt_history(sessions, project)
    assert [a.id for a in history] == ids[::-1]
    failed = await list_attempts(sessions, project=project, statuses=[S.FAILED])
    assert [a.id for a in failed] == ids[1::-1]
    assert [a.id for a in await list_attempts(sessions, project=project, limit=1, offset=1)] == [ids[1]]
    assert await attempt_history(sessions, "other") == []
    assert await get_attempt(sessions, "missing") is None


@pytest.mark.parametrize(
    ("current", "to", "allowed"),
    [
        (S.PENDING, S.RUNNING, True),
        (S.RUNNING, S.VERIFYING, True),
        (S.VERIFYING, S.SUCCEEDED, True),
        (S.PR_OPEN, S.SUCCEEDED, False),
        (S.PENDING, S.ESCALATED, True),
        (S.VERIFYING, S.PR_OPEN, False),
        (S.PR_OPEN, S.RUNNING, True),  # a revision round: the PR's checks failed
        (S.VERIFYING, S.RUNNING, False),
        (S.PR_OPEN, S.PENDING, False),
        (S.FAILED, S.RUNNING, False),
        (S.SUCCEEDED, S.FAILED, False),
    ],
    ids=lambda v: str(v),
)
def test_can_transition_follows_the_attempt_lifecycle(current: AttemptStatus, to: AttemptStatus, allowed: bool) -> None:
    assert can_transition(current, to) is allowed


async def test_a_refusal_by_neither_rule_raises_instead_of_reporting_busy(
    sessions: SessionFactory, project: str
) -> None:
    with pytest.raises(StoreError, match="refused by the database"):
        await start_attempt(
            sessions,
            project=project,
            job=None,  # type: ignore[arg-type]  # NOT NULL: neither the active index nor the fingerprint
            fingerprint="fp-null",
            run_id="1",
            head_sha="a" * 40,
        )
    assert await list_attempts(sessions) == []


async def test_reopen_from_forge_is_the_one_way_out_of_a_terminal_state_and_waits_for_the_active_attempt(
    sessions: SessionFactory, project: str
) -> None:
    first = await _start(sessions, project, "fp-reopen-1")
    assert first.attempt_id is not None
    assert await transition(sessions, first.attempt_id, S.FAILED, reason="no_fix")
    second = await _start(sessions, project, "fp-reopen-2")
    assert second.attempt_id is not None

    found = {"expected": S.FAILED, "reason": "pull_request_found_on_forge", "pr_number": 9}
    assert not await reopen_from_forge(sessions, first.attempt_id, S.PR_OPEN, **found), "one active attempt"
    assert await transition(sessions, second.attempt_id, S.CANCELLED, reason="test")
    assert await reopen_from_forge(sessions, first.attempt_id, S.PR_OPEN, **found)
    reopened = await get_attempt(sessions, first.attempt_id)
    assert reopened is not None
    assert (reopened.status, reopened.pr_number, reopened.finished_at) == ("pr_open", 9, None)
    steps = [(t.from_status, t.to_status, t.reason) for t in await attempt_transitions(sessions, first.attempt_id)]
    assert steps[-1] == ("failed", "pr_open", "pull_request_found_on_forge")
    assert not await reopen_from_forge(sessions, first.attempt_id, S.PR_OPEN, **found), "no longer failed"
    with pytest.raises(ValueError, match="Invalid reopen"):
        await reopen_from_forge(sessions, first.attempt_id, S.RUNNING, expected=S.FAILED, reason="x")
    with pytest.raises(ValueError, match="Invalid reopen"):
        await reopen_from_forge(sessions, first.attempt_id, S.VERIFYING, expected=S.PR_OPEN, reason="x")


async def test_a_refused_start_is_decided_by_a_read_and_never_tries_to_write(
    engine: AsyncEngine, sessions: SessionFactory, project: str
) -> None:
    # Issue 20: most starts are refused; an INSERT takes SQLite's write lock even when it is refused.
    first = await _start(sessions, project, "fp-1")
    writes: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            writes.append(statement)

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        active = await _start(sessions, project, "fp-2")
        handled = await _start(sessions, project, "fp-1")
    finally:
        sa.event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert (active.reason, active.attempt_id) == ("already_active", first.attempt_id)
    assert (handled.reason, handled.attempt_id) == ("already_handled", first.attempt_id)
    assert writes == []
