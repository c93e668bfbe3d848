"""Runtime state on SQLite and PostgreSQL: the kill switch flag and the per-pass lease between replicas."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from reconciler.store import (
    KILL_SWITCH,
    acquire_lease,
    current_lease,
    default_holder,
    get_flag,
    kill_switch_enabled,
    pass_lease,
    release_lease,
    renew_lease,
    set_flag,
    set_kill_switch,
)
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.models import Flag

pytestmark = pytest.mark.anyio


@pytest.fixture
async def replicas(db_url: str, sessions: SessionFactory) -> AsyncIterator[Callable[[int], list[SessionFactory]]]:
    """`replicas(n)`: n session factories on n separate engines (n processes sharing one database)."""
    engines: list[AsyncEngine] = []

    def _make(n: int) -> list[SessionFactory]:
        made = [make_engine(db_url) for _ in range(n)]
        engines.extend(made)
        return [make_sessionmaker(e) for e in made]

    try:
        yield _make
    finally:
        for engine in engines:
            await engine.dispose()


# --- kill switch -------------------------------------------------------------------------------------------


async def test_kill_switch_is_off_until_set_and_round_trips(sessions: SessionFactory) -> None:
    assert await kill_switch_enabled(sessions) is False

    await set_kill_switch(sessions, True)
    assert await kill_switch_enabled(sessions) is True
    assert await get_flag(sessions, KILL_SWITCH) == "true"

    await set_kill_switch(sessions, False)
    assert await kill_switch_enabled(sessions) is False
    await set_kill_switch(sessions, True)
    assert await kill_switch_enabled(sessions) is True


async def test_kill_switch_set_by_one_replica_is_seen_by_another(
    sessions: SessionFactory, replicas: Callable[[int], list[SessionFactory]]
) -> None:
    (other,) = replicas(1)
    assert await kill_switch_enabled(other) is False
    await set_kill_switch(sessions, True)
    assert await kill_switch_enabled(other) is True


@pytest.mark.parametrize(
    ("stored", "enabled"),
    [
        pytest.param("true", True, id="true"),
        pytest.param("1", True, id="one"),
        pytest.param("YES", True, id="yes-upper"),
        pytest.param("banana", True, id="unknown-fails-safe"),
        pytest.param("false", False, id="false"),
        pytest.param(" OFF ", False, id="off-padded"),
        pytest.param("0", False, id="zero"),
        pytest.param("", False, id="empty"),
    ],
)
async def test_kill_switch_reads_hand_written_values_failing_safe(
    sessions: SessionFactory, stored: str, enabled: bool
) -> None:
    await set_flag(sessions, KILL_SWITCH, stored)
    assert await kill_switch_enabled(sessions) is enabled


async def test_kill_switch_read_is_one_statement(engine: AsyncEngine, sessions: SessionFactory) -> None:
    await set_kill_switch(sessions, True)
    seen: list[str] = []

    def _capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", _capture)
    try:
        assert await kill_switch_enabled(sessions) is True
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", _capture)

    sql = [s for s in seen if s.strip().upper() not in {"BEGIN", "COMMIT", "ROLLBACK"}]
    assert len(sql) == 1, seen
    assert sql[0].lstrip().upper().startswith("SELECT") and "reconciler_flag" in sql[0]


async def test_set_flag_keeps_one_row_per_key(engine: AsyncEngine, sessions: SessionFactory) -> None:
    for value in ("a", "b", "c"):
        await set_flag(sessions, "mode", value)
    async with engine.connect() as connection:
        rows = (await connection.execute(sa.select(Flag.key, Flag.value))).all()
    assert [tuple(r) for r in rows] == [("mode", "c")]


@pytest.mark.parametrize("key", [pytest.param("", id="empty"), pytest.param("k" * 65, id="too-long")])
async def test_set_flag_refuses_bad_keys(sessions: SessionFactory, key: str) -> None:
    with pytest.raises(ValueError, match="Invalid flag key"):
        await set_flag(sessions, key, "x")


# --- pass lease --------------------------------------------------------------------------------------------


async def _race(factories: list[SessionFactory], *, ttl: float = 30.0) -> list[bool]:
    """Every replica enters `pass_lease` at once and holds the block until all of them have decided."""
    results: list[bool] = []
    decided = asyncio.Event()
    start = asyncio.Event()

    async def _contender(i: int, sf: SessionFactory) -> None:
        await start.wait()
        async with pass_lease(sf, holder=f"replica-{i}", ttl_seconds=ttl) as got:
            results.append(got)
            if len(results) == len(factories):
                decided.set()
            await decided.wait()

    tasks = [asyncio.create_task(_contender(i, sf)) for i, sf in enumerate(factories)]
    await asyncio.sleep(0)
    start.set()
    async with asyncio.timeout(30):
        await asyncio.gather(*tasks)
    return results


@pytest.mark.parametrize("contenders", [2, 8])
async def test_concurrent_holders_race_and_exactly_one_gets_the_lease(
    sessions: SessionFactory, replicas: Callable[[int], list[SessionFactory]], contenders: int
) -> None:
    factories = replicas(contenders)
    for _round in range(5):
        results = await _race(factories)
        assert sorted(results) == [False] * (contenders - 1) + [True]
        assert await current_lease(sessions) is None  # the winner released it on exit


async def test_racing_takeover_of_an_expired_lease_has_one_winner(
    sessions: SessionFactory, replicas: Callable[[int], list[SessionFactory]]
) -> None:
    factories = replicas(6)
    for _round in range(3):
        assert await acquire_lease(sessions, holder="crashed", ttl_seconds=0.1) is not None
        await asyncio.sleep(0.15)
        results = await _race(factories)
        assert sorted(results) == [False] * 5 + [True]


async def test_raw_acquires_racing_give_exactly_one_token(
    sessions: SessionFactory, replicas: Callable[[int], list[SessionFactory]]
) -> None:
    factories = replicas(4)
    tokens = await asyncio.gather(
        *(acquire_lease(sf, holder=f"r{i}", ttl_seconds=30) for i, sf in enumerate(factories))
    )
    won = [t for t in tokens if t is not None]
    assert len(won) == 1
    lease = await current_lease(sessions)
    assert lease is not None and lease.token == won[0]
    assert lease.holder == f"r{tokens.index(won[0])}"


async def test_a_held_lease_refuses_others_and_is_free_again_after_release(sessions: SessionFactory) -> None:
    async with pass_lease(sessions, holder="a", ttl_seconds=30) as got_a:
        assert got_a is True
        lease = await current_lease(sessions)
        assert lease is not None and lease.holder == "a" and lease.name == "reconcile"
        async with pass_lease(sessions, holder="b", ttl_seconds=30) as got_b:
            assert got_b is False
    assert await current_lease(sessions) is None
    async with pass_lease(sessions, holder="b", ttl_seconds=30) as got_b:
        assert got_b is True


async def test_the_lease_is_not_reentrant_even_for_the_same_holder(sessions: SessionFactory) -> None:
    async with pass_lease(sessions, holder="same", ttl_seconds=30) as outer:
        async with pass_lease(sessions, holder="same", ttl_seconds=30) as inner:
            assert (outer, inner) == (True, False)
        # The inner refusal must not have released the outer lease.
        lease = await current_lease(sessions)
        assert lease is not None and lease.holder == "same"


async def test_leases_with_different_names_are_independent(sessions: SessionFactory) -> None:
    async with (
        pass_lease(sessions, name="reconcile", holder="a", ttl_seconds=30) as one,
        pass_lease(sessions, name="retention", holder="b", ttl_seconds=30) as two,
    ):
        assert (one, two) == (True, True)


async def test_an_expired_lease_of_a_crashed_holder_is_taken_over(sessions: SessionFactory) -> None:
    crashed = await acquire_lease(sessions, holder="crashed", ttl_seconds=0.5)  # never renewed nor released
    assert crashed is not None
    async with pass_lease(sessions, holder="b", ttl_seconds=30) as early:
        assert early is False

    await asyncio.sleep(0.65)
    async with pass_lease(sessions, holder="b", ttl_seconds=30) as late:
        assert late is True
        lease = await current_lease(sessions)
        assert lease is not None and lease.holder == "b"
        # The crashed holder, should it come back, can neither extend nor release b's lease.
        assert await renew_lease(sessions, token=crashed, ttl_seconds=30) is False
        assert await release_lease(sessions, token=crashed) is False
        still = await current_lease(sessions)
        assert still is not None and still.holder == "b"


async def test_a_held_lease_is_renewed_past_its_ttl(sessions: SessionFactory) -> None:
    async with pass_lease(sessions, holder="long-pass", ttl_seconds=0.6) as got:
        assert got is True
        first = await current_lease(sessions)
        for _ in range(5):  # 1.25 s in all: about twice the TTL (renewed every 0.2 s)
            await asyncio.sleep(0.25)
            async with pass_lease(sessions, holder="intruder", ttl_seconds=30) as intruder:
                assert intruder is False
        last = await current_lease(sessions)
    assert first is not None and last is not None
    assert last.expires_at > first.expires_at
    assert last.token == first.token


async def test_without_renewal_an_overrunning_holder_loses_the_lease_and_its_exit_keeps_the_new_one(
    sessions: SessionFactory,
) -> None:
    async with pass_lease(sessions, holder="slow", ttl_seconds=0.2, renew=False) as slow:
        assert slow is True
        await asyncio.sleep(0.35)
        taker = await acquire_lease(sessions, holder="taker", ttl_seconds=30)
        assert taker is not None
    lease = await current_lease(sessions)
    assert lease is not None and lease.holder == "taker" and lease.token == taker


async def test_the_lease_is_released_when_the_body_raises(sessions: SessionFactory) -> None:
    with pytest.raises(RuntimeError, match="pass crashed"):
        async with pass_lease(sessions, holder="a", ttl_seconds=30) as got:
            assert got is True
            raise RuntimeError("pass crashed")
    assert await current_lease(sessions) is None


async def test_the_lease_is_released_when_the_holder_is_cancelled(sessions: SessionFactory) -> None:
    entered = asyncio.Event()

    async def _hold() -> None:
        async with pass_lease(sessions, holder="a", ttl_seconds=30) as got:
            assert got is True
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(_hold())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await current_lease(sessions) is None


async def test_the_lease_lasts_its_ttl_on_the_database_clock(sessions: SessionFactory) -> None:
    token = await acquire_lease(sessions, holder="a", ttl_seconds=42.5)
    lease = await current_lease(sessions)
    assert token is not None and lease is not None
    assert lease.acquired_at.tzinfo is not None
    assert math.isclose((lease.expires_at - lease.acquired_at).total_seconds(), 42.5, abs_tol=0.01)


def test_default_holders_are_distinct() -> None:
    assert default_holder() != default_holder()
    assert len(default_holder()) <= 200


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param({"ttl_seconds": 0}, "TTL", id="ttl-zero"),
        pytest.param({"ttl_seconds": -1.0}, "TTL", id="ttl-negative"),
        pytest.param({"ttl_seconds": math.nan}, "TTL", id="ttl-nan"),
        pytest.param({"ttl_seconds": math.inf}, "TTL", id="ttl-inf"),
        pytest.param({"ttl_seconds": True}, "TTL", id="ttl-bool"),
        pytest.param({"holder": ""}, "holder", id="holder-empty"),
        pytest.param({"holder": "h" * 201}, "holder", id="holder-too-long"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": "n" * 65}, "name", id="name-too-long"),
    ],
)
async def test_pass_lease_refuses_bad_arguments(sessions: SessionFactory, kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"holder": "a", "ttl_seconds": 30.0, **kwargs}
    async with AsyncExitStack() as stack:
        with pytest.raises(ValueError, match=match):
            await stack.enter_async_context(pass_lease(sessions, **args))
    assert await current_lease(sessions, args.get("name") or "reconcile") is None
