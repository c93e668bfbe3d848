"""The store's boundary: driver exceptions become `reconciler.errors` types, busy databases are retried.

Errors are classified by type and code (SQLite's `sqlite_errorcode`, PostgreSQL's SQLSTATE), never by
message text.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from reconciler.errors import StoreBusy, StoreError
from reconciler.store.engine import SessionFactory

__all__ = [
    "TRIES",
    "ConstraintRefused",
    "backoff",
    "fetch_all",
    "is_busy_error",
    "rowcount",
    "translated",
    "with_retry",
]

# Bounded retry of a unit of work the database reported busy/locked: 6 tries, ~1.5 s of sleeping at most
# (plus the driver's own busy_timeout per try on SQLite).
TRIES: Final = 6
_BACKOFF_BASE_S: Final = 0.05
_BACKOFF_CAP_S: Final = 0.5

_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6
# PostgreSQL SQLSTATEs worth a retry: serialization_failure, deadlock_detected, lock_not_available.
_PG_RETRYABLE: Final = frozenset({"40001", "40P01", "55P03"})

_T = TypeVar("_T")


class ConstraintRefused(Exception):
    """A write the database refused on a constraint; the caller looks up which (internal to the store)."""


def is_busy_error(exc: DBAPIError) -> bool:
    """Whether a driver error means "locked/busy, try again" (by error code, never by message text)."""
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return getattr(orig, "sqlstate", None) in _PG_RETRYABLE


@asynccontextmanager
async def translated() -> AsyncIterator[None]:
    """Translate driver exceptions: integrity -> `ConstraintRefused`, busy -> `StoreBusy`, else `StoreError`."""
    try:
        yield
    except IntegrityError as exc:
        raise ConstraintRefused() from exc
    except DBAPIError as exc:
        if is_busy_error(exc):
            raise StoreBusy(f"Store busy: the database is locked: {type(exc.orig).__name__}.") from exc
        raise StoreError(f"Store error: database operation failed: {exc.orig!r}") from exc
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"Store error: database unavailable: {exc!r}") from exc


def backoff(n: int) -> float:
    """Seconds to sleep before retry `n + 1`: exponential, capped, with jitter."""
    delay: float = min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2**n)
    return delay * random.uniform(0.5, 1.0)  # jitter keeps contending writers apart


async def with_retry(operation: Callable[[], Awaitable[_T]]) -> _T:
    """Run `operation` (one whole unit of work), retrying with bounded backoff while the database is busy.

    Raises:
        StoreBusy: still busy after the last try.
        StoreError: any other database failure (a constraint refusal included).
    """
    for n in range(TRIES):
        try:
            async with translated():
                return await operation()
        except StoreBusy:
            if n + 1 == TRIES:
                raise
        except ConstraintRefused as exc:
            raise StoreError(f"Store error: constraint violated: {exc.__cause__!r}") from exc.__cause__
        await asyncio.sleep(backoff(n))
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


async def fetch_all(session_factory: SessionFactory, query: sa.Select[_T]) -> list[_T]:
    """All rows of a one-entity query, detached (the sessions keep attributes loaded).

    Raises:
        StoreError: the database failed.
    """
    async with translated(), session_factory() as session:
        return list((await session.scalars(query)).all())


def rowcount(result: object) -> int:
    """Rows matched by an UPDATE/DELETE (`Session.execute` is typed as a plain `Result`)."""
    return int(getattr(result, "rowcount"))  # noqa: B009 (the attribute is not in the static type)
