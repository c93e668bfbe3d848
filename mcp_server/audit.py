"""The audit trail of MCP tool calls: one event per call, whatever its outcome.

The server builds an `AuditEvent` for every `tools/call` (including unknown tools and rejected arguments)
with its arguments and message already redacted, and hands it to an `AuditSink`:

- `JsonLogAuditSink` writes one JSON line per call to a logger;
- `SqlAuditSink` inserts one row per call into the `mcp_tool_call` table (created by the reconciler's
  migrations; `MCP_TOOL_CALL` below mirrors its columns for SQLAlchemy Core).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mcp_server.jsonlog import log_event

__all__ = [
    "MCP_TOOL_CALL",
    "AuditEvent",
    "AuditSink",
    "FanOutAuditSink",
    "JsonLogAuditSink",
    "Outcome",
    "SqlAuditSink",
    "metadata",
]

Outcome = Literal["ok", "refused", "error"]

metadata = sa.MetaData()

# The reconciler's migrations own this table; this is a Core mirror of exactly its columns.
MCP_TOOL_CALL = sa.Table(
    "mcp_tool_call",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("attempt_id", sa.String(32), nullable=True, index=True),
    sa.Column("project", sa.String(200), nullable=False),
    sa.Column("client", sa.String(200), nullable=False),
    sa.Column("tool", sa.String(64), nullable=False),
    sa.Column("arguments", sa.Text, nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=True),
    sa.Column("result_bytes", sa.Integer, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class AuditEvent:
    """One tool call. Every text field (`client`, `tool`, `arguments`, `message`) is already redacted when the
    event is built, so a sink writes it as it is (the JSON log formatter does not redact it again)."""

    project: str
    client: str
    tool: str
    arguments: Mapping[str, Any]
    outcome: Outcome
    message: str | None
    result_bytes: int
    duration_ms: float
    attempt_id: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def arguments_json(self) -> str:
        """The arguments as compact JSON (keys sorted), as stored."""
        return json.dumps(self.arguments, sort_keys=True, separators=(",", ":"), default=str)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the event."""
        return {
            "attempt_id": self.attempt_id,
            "project": self.project,
            "client": self.client,
            "tool": self.tool,
            "arguments": dict(self.arguments),
            "outcome": self.outcome,
            "message": self.message,
            "result_bytes": self.result_bytes,
            "duration_ms": round(self.duration_ms, 3),
            "created_at": self.created_at.isoformat(),
        }


class AuditSink(Protocol):
    """Where audit events go. `record` must not raise for a storage problem it can log instead."""

    async def record(self, event: AuditEvent) -> None:
        """Store one event."""
        ...


class JsonLogAuditSink:
    """Writes each event as one JSON object on one line to `logger` (default `greenloop.mcp.audit`)."""

    def __init__(self, logger: logging.Logger | None = None, *, level: int = logging.INFO) -> None:
        self._logger = logger or logging.getLogger("greenloop.mcp.audit")
        self._level = level

    async def record(self, event: AuditEvent) -> None:
        """Log the event as one JSON line."""
        # The event's fields are the record's fields: the JSON formatter writes them once, not as a JSON string.
        log_event(self._logger, "mcp_tool_call", level=self._level, redacted=True, **event.as_dict())


class SqlAuditSink:
    """Inserts each event as one row of `mcp_tool_call` through SQLAlchemy Core (async).

    Pass a database URL (the sink owns and disposes its engine) or an existing `AsyncEngine`.
    """

    def __init__(self, database_url: str | AsyncEngine, *, timeout_seconds: float = 10.0) -> None:
        if isinstance(database_url, AsyncEngine):
            self._engine = database_url
            self._owns_engine = False
        else:
            self._engine = create_async_engine(database_url)
            self._owns_engine = True
        self._timeout = timeout_seconds
        self._logger = logging.getLogger("greenloop.mcp.audit")

    async def record(self, event: AuditEvent) -> None:
        """Insert the event; a database failure is logged (without the row's contents), not raised."""
        row = {
            "attempt_id": event.attempt_id,
            "project": event.project[:200],
            "client": event.client[:200],
            "tool": event.tool[:64],
            "arguments": event.arguments_json(),
            "outcome": event.outcome,
            "message": event.message,
            "result_bytes": event.result_bytes,
            "duration_ms": event.duration_ms,
            "created_at": event.created_at,
        }
        try:
            with anyio.fail_after(self._timeout):
                async with self._engine.begin() as conn:
                    await conn.execute(MCP_TOOL_CALL.insert().values(**row))
        except Exception as exc:  # top-level boundary: an audit store outage must not crash the tool call
            log_event(
                self._logger,
                "mcp_audit_write_failed",
                level=logging.ERROR,
                tool=event.tool,
                error=exc.__class__.__name__,
            )

    async def aclose(self) -> None:
        """Dispose the engine when this sink created it."""
        if self._owns_engine:
            await self._engine.dispose()


class FanOutAuditSink:
    """Sends every event to each of several sinks, in order."""

    def __init__(self, sinks: Sequence[AuditSink]) -> None:
        self._sinks = tuple(sinks)

    async def record(self, event: AuditEvent) -> None:
        """Record the event in every sink."""
        for sink in self._sinks:
            await sink.record(event)
