"""Runtime state shared by every replica: flags an operator flips at run time, and per-pass leases.

**Flags** (`reconciler_flag`): key -> text value. The kill switch is one of them; reading it is one
primary-key SELECT, cheap enough for every pass.

**Leases** (`reconciler_lease`): so several replicas on one database never run the same pass at once.
`pass_lease` takes the lease with ONE conditional upsert::

    INSERT INTO reconciler_lease (name, holder, token, acquired_at, expires_at) VALUES (...)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, ...
        WHERE reconciler_lease.expires_at <= :now
    RETURNING token

A row comes back only to the replica that inserted the row or took over an expired one; PostgreSQL
serialises concurrent upserts on the row (the loser re-checks the WHERE against the winner's row) and SQLite
has one writer at a time, so exactly one contender wins. While the body runs, a background task extends the
lease every `ttl_seconds / 3`, so `ttl_seconds` is not a bound on the pass's length but how long the others
wait after a holder crashed. Leaving the block releases the lease (deletes the row, matched by a random
per-acquisition token).

Why a lease row rather than PostgreSQL's `pg_try_advisory_lock`:

* one code path and one test matrix for SQLite and PostgreSQL (an advisory lock would need the row lease
  as SQLite fallback anyway);
* it survives connection poolers: a session advisory lock breaks behind PgBouncer in transaction mode;
* it holds no connection for the whole pass (the pass needs its pool), and
  a crashed or partitioned holder is bounded by the TTL, not by when the server notices the dead socket;
* it is visible: who holds which lease until when is a row an operator or the API can read
  (`current_lease`).

On PostgreSQL every lease time is the database's clock (`now()`), so replicas whose clocks drift still agree
on expiry; SQLite is one file on one host, whose clock all its replicas share.

The lease is a courtesy that saves duplicate work (forge requests, doubled transitions), not the safety
wall: two attempts for one project are still refused by the one-active-attempt index (see `models`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Final

import sqlalchemy as sa

from infra.jsonlog import log_event
from reconciler.errors import StoreError
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Flag, Lease, UTCDateTime, utcnow
from reconciler.store.translate import rowcount, translated, with_retry
from reconciler.store.upsert import insert_for

__all__ = [
    "KILL_SWITCH",
    "PASS_LEASE",
    "acquire_lease",
    "claim_flag",
    "current_lease",
    "default_holder",
    "get_flag",
    "kill_switch_enabled",
    "pass_lease",
    "ping",
    "release_lease",
    "renew_lease",
    "set_flag",
    "set_kill_switch",
]

logger = logging.getLogger(__name__)

KILL_SWITCH: Final = "kill_switch"
PASS_LEASE: Final = "reconcile"

# Flag values that mean "off"; anything else stored under the kill switch means "on" (it fails safe).
_OFF_VALUES: Final = frozenset({"", "0", "false", "no", "off"})
_MAX_KEY: Final = 64
_MAX_HOLDER: Final = 200
_MIN_RENEW_INTERVAL_S: Final = 0.05


# --- flags -------------------------------------------------------------------------------------------------


async def ping(session_factory: SessionFactory) -> None:
    """Ask the database for one trivial row (the health check).

    Raises:
        StoreError: the database is unreachable or failed.
    """
    async with translated(), session_factory() as session:
        await session.execute(sa.text("SELECT 1"))


async def get_flag(session_factory: SessionFactory, key: str) -> str | None:
    """The value of a runtime flag, or None when it was never set (one primary-key SELECT).

    Raises:
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """

    async def _once() -> str | None:
        async with session_factory() as session:
            return await session.scalar(sa.select(Flag.value).where(Flag.key == key))

    return await with_retry(_once)


async def set_flag(session_factory: SessionFactory, key: str, value: str) -> None:
    """Set a runtime flag (one upsert; the last writer wins).

    Raises:
        ValueError: an empty key or one longer than 64 characters.
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """
    await _upsert_flag(session_factory, key, value, only_if_changed=False)


async def claim_flag(session_factory: SessionFactory, key: str, value: str) -> bool:
    """Set flag `key` to `value` unless it holds `value` already; True for the one caller that changed it.

    One conditional upsert, so of several replicas (or passes) claiming the same value only one gets True:
    the way to do something once per value (e.g. one spend notice per limit and window).

    Raises:
        ValueError: an empty key or one longer than 64 characters.
        StoreBusy: the database stayed locked through every bounded retry.
        StoreError: any other database failure.
    """
    return await _upsert_flag(session_factory, key, value, only_if_changed=True)


async def _upsert_flag(session_factory: SessionFactory, key: str, value: str, *, only_if_changed: bool) -> bool:
    """One upsert of flag `key`; with `only_if_changed`, a row already holding `value` is left alone. True when
    the row was written."""
    if not key or len(key) > _MAX_KEY:
        raise ValueError(f"Invalid flag key: expected 1 to {_MAX_KEY} characters: {key!r}.")

    async def _once() -> bool:
        now = utcnow()
        async with session_factory() as session, session.begin():
            stmt = insert_for(session, Flag).values(key=key, value=value, updated_at=now)
            stmt = stmt.on_conflict_do_update(
                index_elements=[Flag.key],
                set_={"value": stmt.excluded.value, "updated_at": now},
                where=(Flag.value != stmt.excluded.value) if only_if_changed else None,
            )
            won = (await session.execute(stmt.returning(Flag.key))).scalar_one_or_none()
        return won is not None

    return await with_retry(_once)


async def kill_switch_enabled(session_factory: SessionFactory) -> bool:
    """Whether an operator stopped all remediation at run time (one primary-key SELECT).

    Unset means off. A stored value other than '', '0', 'false', 'no' or 'off' (any case) means on: a
    hand-edited row the code does not understand stops remediation rather than allowing it.

    Raises:
        StoreBusy, StoreError: see `get_flag`.
    """
    value = await get_flag(session_factory, KILL_SWITCH)
    return value is not None and value.strip().lower() not in _OFF_VALUES


async def set_kill_switch(session_factory: SessionFactory, enabled: bool) -> None:
    """Turn the run-time kill switch on or off for every replica (seen by each one's next pass).

    Raises:
        StoreBusy, StoreError: see `set_flag`.
    """
    await set_flag(session_factory, KILL_SWITCH, "true" if enabled else "false")


# --- leases ------------------------------------------------------------------------------------------------


def default_holder() -> str:
    """A holder name for this process: host, pid and a random suffix (unique per call)."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def pass_lease(
    session_factory: SessionFactory,
    *,
    name: str = PASS_LEASE,
    holder: str,
    ttl_seconds: float,
    renew: bool = True,
) -> AsyncIterator[bool]:
    """Yield whether `holder` got the lease `name`; hold it (renewed every ttl/3) until the block exits.

    Not re-entrant: a second `pass_lease` for the same name gets False while the first is held, even with
    the same holder. A lease whose holder crashed can be taken once its `expires_at` has passed. On exit
    the lease is released; if the release fails it is logged and the lease simply expires. If a renewal
    finds the lease taken over (the database was unreachable for longer than the TTL), that is logged and
    the body runs on: the one-active-attempt index still refuses duplicate attempts.

    Raises:
        ValueError: `ttl_seconds` not a positive finite number, or `name`/`holder` empty or too long.
        StoreBusy: taking the lease found the database locked through every bounded retry.
        StoreError: any other database failure while taking the lease.
    """
    token = await acquire_lease(session_factory, name=name, holder=holder, ttl_seconds=ttl_seconds)
    if token is None:
        yield False
        return
    renewer = (
        asyncio.create_task(_keep_renewed(session_factory, name=name, holder=holder, token=token, ttl=ttl_seconds))
        if renew
        else None
    )
    try:
        yield True
    finally:
        if renewer is not None:
            renewer.cancel()
            await asyncio.wait([renewer])
        try:
            await release_lease(session_factory, name=name, token=token)
        except StoreError as exc:
            log_event(logger, "lease_release_failed", level=logging.WARNING, lease=name, holder=holder, error=str(exc))


async def acquire_lease(
    session_factory: SessionFactory, *, name: str = PASS_LEASE, holder: str, ttl_seconds: float
) -> str | None:
    """Take the lease `name` if it is free or expired: its token when taken, None when someone holds it.

    One conditional upsert (see the module docstring). Prefer `pass_lease`, which renews and releases.

    Raises:
        ValueError, StoreBusy, StoreError: see `pass_lease`.
    """
    _check_lease_args(name=name, holder=holder, ttl_seconds=ttl_seconds)
    token = uuid.uuid4().hex

    async def _once() -> str | None:
        async with session_factory() as session, session.begin():
            now, expires = _now_and_expiry(session.get_bind().dialect.name, ttl_seconds)
            stmt = insert_for(session, Lease).values(
                name=name, holder=holder, token=token, acquired_at=now, expires_at=expires
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=[Lease.name],
                set_={
                    "holder": stmt.excluded.holder,
                    "token": stmt.excluded.token,
                    "acquired_at": stmt.excluded.acquired_at,
                    "expires_at": stmt.excluded.expires_at,
                },
                where=Lease.expires_at <= now,
            )
            won = (await session.execute(stmt.returning(Lease.token))).scalar_one_or_none()
        return token if won == token else None

    return await with_retry(_once)


async def renew_lease(
    session_factory: SessionFactory, *, name: str = PASS_LEASE, token: str, ttl_seconds: float
) -> bool:
    """Extend a lease this acquisition still holds to now + `ttl_seconds`; False when it was taken over.

    Raises:
        ValueError: `ttl_seconds` not a positive finite number.
        StoreBusy, StoreError: see `pass_lease`.
    """
    _check_ttl(ttl_seconds)

    async def _once() -> bool:
        async with session_factory() as session, session.begin():
            _now, expires = _now_and_expiry(session.get_bind().dialect.name, ttl_seconds)
            result = await session.execute(
                sa.update(Lease)
                .where(Lease.name == name, Lease.token == token)
                .values(expires_at=expires)
                .execution_options(synchronize_session=False)
            )
            return rowcount(result) == 1

    return await with_retry(_once)


async def release_lease(session_factory: SessionFactory, *, name: str = PASS_LEASE, token: str) -> bool:
    """Give a lease back (delete its row); False when this acquisition no longer held it.

    Raises:
        StoreBusy, StoreError: see `pass_lease`.
    """

    async def _once() -> bool:
        async with session_factory() as session, session.begin():
            result = await session.execute(
                sa.delete(Lease)
                .where(Lease.name == name, Lease.token == token)
                .execution_options(synchronize_session=False)
            )
            return rowcount(result) == 1

    return await with_retry(_once)


async def current_lease(session_factory: SessionFactory, name: str = PASS_LEASE) -> Lease | None:
    """The lease row for `name`, or None when nobody took it (its `expires_at` may be past: a crashed holder).

    Raises:
        StoreError: the database failed.
    """
    async with translated(), session_factory() as session:
        return await session.get(Lease, name)


# --- internals ---------------------------------------------------------------------------------------------


def _now_and_expiry(dialect: str, ttl_seconds: float) -> tuple[sa.ColumnElement[datetime], sa.ColumnElement[datetime]]:
    """`now` and `now + ttl` as SQL: the database's clock on PostgreSQL, this host's on SQLite."""
    if dialect == "postgresql":
        # Replicas on several hosts: expiry must not depend on whose clock is ahead.
        now: sa.ColumnElement[datetime] = sa.func.now(type_=UTCDateTime())
        return now, sa.type_coerce(now + sa.literal(timedelta(seconds=ttl_seconds), sa.Interval()), UTCDateTime())
    at = utcnow()
    return sa.literal(at, UTCDateTime()), sa.literal(at + timedelta(seconds=ttl_seconds), UTCDateTime())


async def _keep_renewed(session_factory: SessionFactory, *, name: str, holder: str, token: str, ttl: float) -> None:
    interval = max(ttl / 3.0, _MIN_RENEW_INTERVAL_S)
    while True:
        await asyncio.sleep(interval)
        try:
            if not await renew_lease(session_factory, name=name, token=token, ttl_seconds=ttl):
                log_event(logger, "lease_lost", level=logging.WARNING, lease=name, holder=holder)
                return
        except StoreError as exc:  # try again next tick; the lease lasts ttl, three ticks
            log_event(logger, "lease_renew_failed", level=logging.WARNING, lease=name, holder=holder, error=str(exc))


def _check_ttl(ttl_seconds: float) -> None:
    number = isinstance(ttl_seconds, int | float) and not isinstance(ttl_seconds, bool)
    if not (number and math.isfinite(ttl_seconds) and ttl_seconds > 0):
        raise ValueError(f"Invalid lease TTL: expected a positive number of seconds: {ttl_seconds!r}.")


def _check_lease_args(*, name: str, holder: str, ttl_seconds: float) -> None:
    _check_ttl(ttl_seconds)
    if not name or len(name) > _MAX_KEY:
        raise ValueError(f"Invalid lease name: expected 1 to {_MAX_KEY} characters: {name!r}.")
    if not holder or len(holder) > _MAX_HOLDER:
        raise ValueError(f"Invalid lease holder: expected 1 to {_MAX_HOLDER} characters: {holder!r}.")
