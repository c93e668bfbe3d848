"""Narrowing a per-pass query to the pass's projects, without binding thousands of names.

A pass over N projects reads a few tables "for these N names". As `name IN (:n1, ..., :nN)` every name is a
bound parameter that SQLAlchemy expands and the driver binds on every execution: at N = 1,000 that was most of
`load_scope`'s CPU. The queries narrowed here return only the few rows that differ from a quiet project's (an
active attempt, a pause, a failure), so for a long list the database returns those rows for every project
and the caller keeps the ones it asked for; a short list (an event pass, one project) stays in SQL.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute

__all__ = ["IN_LIST_MAX", "narrowed"]

IN_LIST_MAX: Final = 100
"""Longest list of names sent as `IN (...)`; longer lists are applied by the caller (`narrowed`)."""

_S = TypeVar("_S", bound="sa.Select[*tuple[Any, ...]]")


def narrowed(query: _S, column: InstrumentedAttribute[str], names: Collection[str]) -> _S:
    """`query` limited to rows whose `column` is in `names` when the list is short; unchanged when it is long.
    Either way the caller keeps only the rows of `names` (a set lookup per returned row)."""
    if len(names) <= IN_LIST_MAX:
        return query.where(column.in_(list(names)))
    return query
