"""The audit trail in the store: MCP tool calls as rows of `mcp_tool_call` (the one definition is
`reconciler.store.models.McpToolCall`).

`StoreAuditSink` is the `mcp_server.audit.AuditSink` that writes them; the MCP server itself never touches
SQL (it sits below the reconciler), so whoever wires a server to a database passes this sink in: the
reconciler's runtime for in-process sessions, `greenloop-mcp --audit-db` for the sidecar.
"""

from __future__ import annotations

import json
import logging

import anyio
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from mcp_server.audit import AuditEvent
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.models import McpToolCall
from reconciler.store.translate import fetch_all

__all__ = ["StoreAuditSink", "tool_calls"]


class StoreAuditSink:
    """Inserts each event as one `mcp_tool_call` row.

    Pass a database URL (the sink owns and disposes its engine) or an existing `AsyncEngine`.

    Raises:
        DatabaseUrlInvalid: the URL cannot be used (raised when the sink is built, not per call).
    """

    def __init__(self, database: str | AsyncEngine, *, timeout_seconds: float = 10.0) -> None:
        self._owns_engine = not isinstance(database, AsyncEngine)
        self._engine = make_engine(database) if isinstance(database, str) else database
        self._sessions = make_sessionmaker(self._engine)
        self._timeout = timeout_seconds
        self._logger = logging.getLogger("greenloop.mcp.audit")

    async def record(self, event: AuditEvent) -> None:
        """Insert the event; a database failure is logged (without the row's contents), not raised."""
        row = McpToolCall(
            attempt_id=event.attempt_id,
            project=event.project[:200],
            client=event.client[:200],
            tool=event.tool[:64],
            arguments=event.arguments_json(),
            outcome=event.outcome,
            message=event.message,
            result_bytes=event.result_bytes,
            duration_ms=event.duration_ms,
            created_at=event.created_at,
        )
        try:
            with anyio.fail_after(self._timeout):
                async with self._sessions() as session, session.begin():
                    session.add(row)
        except Exception as exc:  # top-level boundary: an audit store outage must not crash the tool call
            self._logger.error(
                json.dumps(
                    {"event": "mcp_audit_write_failed", "tool": event.tool, "error": exc.__class__.__name__},
                    separators=(",", ":"),
                )
            )

    async def aclose(self) -> None:
        """Dispose the engine when this sink created it."""
        if self._owns_engine:
            await self._engine.dispose()


async def tool_calls(session_factory: SessionFactory, *, attempt_id: str | None = None) -> list[McpToolCall]:
    """Recorded tool calls in the order they were made, of one attempt or of all.

    Raises:
        StoreError: the database failed.
    """
    query = sa.select(McpToolCall)
    if attempt_id is not None:
        query = query.where(McpToolCall.attempt_id == attempt_id)
    return await fetch_all(session_factory, query.order_by(McpToolCall.id))
