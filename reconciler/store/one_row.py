"""One row of a hot read: a single SELECT with the fewest round trips the driver allows.

On SQLite, aiosqlite runs every driver call on the connection's own thread, and SQLAlchemy makes several per
statement (cursor, execute, fetch, close, then `BEGIN` and the rollback around them). Each hop hands the GIL
to another thread and back; on a busy machine that costs far more than the query itself (measured on the
start refusal read: ~1.9 ms of CPU a call through a `Connection`, ~0.1 ms for the query on a held connection).
`one_row` compiles the statement once per dialect and, on SQLite, runs it with aiosqlite's `execute_fetchall`
(one hop) on a pooled connection, outside any transaction: one statement is its own consistent snapshot. On
every other backend it is `connection.execute(statement, params).one()`.

The fast path hands back the driver's values as they are, so a statement given here must select only columns
whose Python value is the driver's own (text, integers, booleans, which SQLite returns as 0/1) and bind only
such values; `tests/reconciler/test_store_one_row.py` runs each such statement both ways and compares.
Driver errors are raised as SQLAlchemy's `DBAPIError` subclasses, so `translate.translated` classifies them
as it does everything else (busy, constraint, other).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["one_row"]

_compiled: dict[tuple[int, str], tuple[sa.Select[Any], SQLCompiler]] = {}


async def one_row(engine: AsyncEngine, statement: sa.Select[Any], params: Mapping[str, Any]) -> Sequence[Any]:
    """The one row `statement` returns for `params` (a statement that returns no row or several is a bug).

    Raises:
        sqlalchemy.exc.DBAPIError: the driver failed (wrap the call in `translate.translated`).
    """
    async with engine.connect() as connection:
        if engine.dialect.name != "sqlite":
            return tuple((await connection.execute(statement, params)).one())
        compiled = _compile(statement, engine.dialect)
        values = compiled.construct_params(dict(params)) or {}
        positional = tuple(values[name] for name in compiled.positiontup or ())
        sql = compiled.string
        raw = await connection.get_raw_connection()
        try:
            rows = await raw.driver_connection.execute_fetchall(sql, positional)  # type: ignore[union-attr]
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, positional, exc, sqlite3.Error) from exc
    (row,) = rows
    return tuple(row)


def _compile(statement: sa.Select[Any], dialect: Dialect) -> SQLCompiler:
    key = (id(statement), dialect.name)
    cached = _compiled.get(key)
    if cached is None or cached[0] is not statement:  # the statement is kept so its id is never reused
        cached = (statement, statement.compile(dialect=dialect))
        _compiled[key] = cached
    return cached[1]
