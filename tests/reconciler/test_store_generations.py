"""One attempt per failure and generation: the store starts another attempt at a failure only after a transient
failure (at most `max_transient_retries`) or an operator reset, and the database refuses a second attempt of
one generation, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import sqlalchemy as sa

from policy.types import AttemptStatus, FailureClass
from reconciler.errors import StoreError
from reconciler.store import StartOutcome, get_attempt, list_attempts, start_attempt, transition
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt, utcnow
from reconciler.store.projects import reset_escalation

pytestmark = pytest.mark.anyio


async def _start(sessions: SessionFactory, project: str, *, retries: int = 2) -> StartOutcome:
    return await start_attempt(
        sessions,
        project=project,
        job="nightly",
        fingerprint="fp-g",
        run_id="7",
        head_sha="a" * 40,
        max_transient_retries=retries,
    )


async def _fail(sessions: SessionFactory, outcome: StartOutcome, failure_class: FailureClass | None) -> None:
    assert outcome.started and outcome.attempt_id is not None
    fields = {} if failure_class is None else {"failure_class": failure_class.value}
    assert await transition(sessions, outcome.attempt_id, AttemptStatus.FAILED, reason="stopped", **fields)


async def _generation(sessions: SessionFactory, outcome: StartOutcome) -> int:
    assert outcome.attempt_id is not None
    row = await get_attempt(sessions, outcome.attempt_id)
    assert row is not None
    return row.generation


async def test_a_transient_failure_lets_the_next_generation_start(sessions: SessionFactory, project: str) -> None:
    first = await _start(sessions, project)
    await _fail(sessions, first, FailureClass.TRANSIENT)

    second = await _start(sessions, project)

    assert second.reason == "started" and second.attempt_id != first.attempt_id
    assert (await _generation(sessions, first), await _generation(sessions, second)) == (0, 1)


async def test_a_permanent_or_unclassified_failure_keeps_the_failure_handled(
    sessions: SessionFactory, project: str
) -> None:
    first = await _start(sessions, project)
    await _fail(sessions, first, FailureClass.PERMANENT)
    assert await _start(sessions, project) == StartOutcome(False, first.attempt_id, "already_handled")


async def test_an_active_attempt_keeps_the_failure_handled(sessions: SessionFactory, project: str) -> None:
    first = await _start(sessions, project)
    assert await _start(sessions, project) == StartOutcome(False, first.attempt_id, "already_handled")


async def test_transient_retries_stop_at_the_limit(sessions: SessionFactory, project: str) -> None:
    outcomes = []
    for _ in range(3):  # the first attempt and two retries
        outcome = await _start(sessions, project, retries=2)
        outcomes.append(outcome)
        await _fail(sessions, outcome, FailureClass.TRANSIENT)

    refused = await _start(sessions, project, retries=2)

    assert refused == StartOutcome(False, outcomes[-1].attempt_id, "already_handled")
    assert [await _generation(sessions, o) for o in outcomes] == [0, 1, 2]


async def test_an_operator_reset_opens_the_next_generation_once(sessions: SessionFactory, project: str) -> None:
    first = await _start(sessions, project)
    await _fail(sessions, first, FailureClass.PERMANENT)
    assert await reset_escalation(sessions, project, at=utcnow())

    after_reset = await _start(sessions, project)
    assert after_reset.reason == "started" and await _generation(sessions, after_reset) == 1
    await _fail(sessions, after_reset, FailureClass.PERMANENT)

    # One reset, one more attempt: the attempt started after the reset handles the failure again.
    assert await _start(sessions, project) == StartOutcome(False, after_reset.attempt_id, "already_handled")


async def test_a_reset_also_renews_the_transient_retries(sessions: SessionFactory, project: str) -> None:
    for _ in range(2):
        await _fail(sessions, await _start(sessions, project, retries=1), FailureClass.TRANSIENT)
    assert (await _start(sessions, project, retries=1)).reason == "already_handled"
    assert await reset_escalation(sessions, project, at=utcnow())

    again = await _start(sessions, project, retries=1)

    assert again.reason == "started" and await _generation(sessions, again) == 2


async def test_concurrent_retries_of_one_failure_start_one_attempt(sessions: SessionFactory, project: str) -> None:
    await _fail(sessions, await _start(sessions, project), FailureClass.TRANSIENT)

    outcomes = await asyncio.gather(*(_start(sessions, project) for _ in range(10)))

    assert Counter(o.reason for o in outcomes) == {"started": 1, "already_handled": 9}
    assert len(await list_attempts(sessions, project=project)) == 2


async def test_the_database_refuses_a_second_attempt_of_one_generation(sessions: SessionFactory, project: str) -> None:
    first = await _start(sessions, project)
    await _fail(sessions, first, FailureClass.TRANSIENT)
    now = utcnow()
    row = {
        "project": project,
        "job": "nightly",
        "fingerprint": "fp-g",
        "run_id": "7",
        "head_sha": "a" * 40,
        "status": AttemptStatus.FAILED.value,
        "generation": 0,
        "created_at": now,
        "updated_at": now,
    }
    with pytest.raises(sa.exc.IntegrityError):  # the wall itself, past the store's read
        async with sessions() as session, session.begin():
            await session.execute(sa.insert(Attempt).values(id="dup0000000", **row))
    with pytest.raises(sa.exc.IntegrityError):
        async with sessions() as session, session.begin():
            await session.execute(sa.insert(Attempt).values(id="neg0000000", **{**row, "generation": -1}))


async def test_unknown_project_is_still_reported(sessions: SessionFactory) -> None:
    with pytest.raises(StoreError):
        await _start(sessions, "no-such-project")
