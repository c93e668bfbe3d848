"""The audit trail of MCP tool calls: one event per call, whatever its outcome.

The server builds an `AuditEvent` for every `tools/call` (including unknown tools and rejected arguments)
with its arguments and message already redacted, and hands it to an `AuditSink`:

- `JsonLogAuditSink` writes one JSON line per call to a logger;
- `FanOutAuditSink` hands each event to several sinks.

The database sink lives with the table it writes, in the reconciler's store
(`reconciler.store.audit.StoreAuditSink`): the MCP server never touches SQL, and whoever wires a server to a
database passes that sink in.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from infra.jsonlog import log_event

__all__ = [
    "AuditEvent",
    "AuditSink",
    "ClosableAuditSink",
    "FanOutAuditSink",
    "JsonLogAuditSink",
    "Outcome",
]

Outcome = Literal["ok", "refused", "error"]


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


class ClosableAuditSink(AuditSink, Protocol):
    """A sink that holds a resource (a database engine) released by `aclose`."""

    async def aclose(self) -> None:
        """Release what the sink holds."""
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


class FanOutAuditSink:
    """Sends every event to each of several sinks, in order."""

    def __init__(self, sinks: Sequence[AuditSink]) -> None:
        self._sinks = tuple(sinks)

    async def record(self, event: AuditEvent) -> None:
        """Record the event in every sink."""
        for sink in self._sinks:
            await sink.record(event)
