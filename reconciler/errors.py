"""Errors raised by the reconciler.

    ReconcilerError
    └── StoreError               the attempt store failed or refused a request
        ├── StoreBusy            the database stayed locked/busy through every retry; try again later
        ├── DatabaseUrlInvalid   the database URL cannot be used (unparseable, unsupported or missing driver)
        ├── UnknownProject       a write names a project that has no reconciler_project row
        └── TransitionRefused    an attempt status change the state machine does not allow

Driver exceptions (sqlite3, asyncpg, SQLAlchemy) never cross the store's boundary: they are translated
into these types there, with the original as `__cause__`.
"""

from __future__ import annotations

__all__ = [
    "DatabaseUrlInvalid",
    "ReconcilerError",
    "StoreBusy",
    "StoreError",
    "TransitionRefused",
    "UnknownProject",
]


class ReconcilerError(Exception):
    """Base class of every error in `reconciler`."""


class StoreError(ReconcilerError):
    """The attempt store failed or refused a request."""


class StoreBusy(StoreError):
    """The database stayed locked or busy through every bounded retry; the caller may try again later."""


class DatabaseUrlInvalid(StoreError):
    """The database URL cannot be used; the message is one line fit for a terminal (no password)."""


class UnknownProject(StoreError):
    """A write names a project that has no `reconciler_project` row; sync projects first."""

    def __init__(self, message: str, *, project: str) -> None:
        super().__init__(message)
        self.project = project


class TransitionRefused(StoreError):
    """An attempt status change the state machine does not allow (a programming error, not a race)."""

    def __init__(self, message: str, *, from_status: str, to_status: str) -> None:
        super().__init__(message)
        self.from_status = from_status
        self.to_status = to_status
