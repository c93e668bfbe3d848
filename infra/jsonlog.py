"""Structured logs: one JSON object per event, carrying attempt and trace ids when there are any.

Every package above `policy` logs through `log_event`; `configure_json_logging` installs the formatter on
the root logger (the CLI entry points call it). Values are redacted before they are written.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

from policy.redaction import redact_obj

__all__ = ["QUIET_HTTP_LOGGERS", "JsonFormatter", "bind_context", "configure_json_logging", "log_event"]

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("greenloop_log_context", default={})  # noqa: B039


class bind_context:
    """Add fields (e.g. attempt_id, trace_id, project) to every event logged inside the block.

    A class rather than a `contextmanager` generator: the runner enters one per project per pass."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: Any) -> None:
        self._fields = fields
        self._token: contextvars.Token[dict[str, Any]] | None = None

    def __enter__(self) -> None:
        self._token = _context.set({**_context.get(), **self._fields})

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _context.reset(self._token)
            self._token = None


def log_event(
    logger: logging.Logger, event: str, *, level: int = logging.INFO, redacted: bool = False, **fields: Any
) -> None:
    """Log one structured event: `event` names it, `fields` carry its data. `redacted`: the fields were
    redacted when the event was built (the MCP audit trail), so the formatter does not redact them again."""
    if not logger.isEnabledFor(level):
        return
    handler = _sole_json_handler(logger, level) if redacted else None
    if handler is not None:
        # The configured setup (one JSON handler on the root): the line is rendered once, here, as the formatter
        # would, and written under the handler's lock, without a log record passing through logging's layers.
        created = time.time()
        line = _render(created, int((created - int(created)) * 1000), level, logger.name, event, fields, None, True)
        with _locked(handler):
            try:
                handler.stream.write(line + handler.terminator)
                handler.flush()
                return
            except Exception:  # the record below goes through logging's own error handling
                pass
    logger.log(level, event, extra={"greenloop_fields": fields, "greenloop_redacted": redacted})


def _sole_json_handler(logger: logging.Logger, level: int) -> logging.StreamHandler[TextIO] | None:
    """The root's one JSON stream handler when it is the only place a record of `logger` at `level` would go
    (no filters, no other handler on the way), else None."""
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        if current.handlers:
            if current.parent is not None or len(current.handlers) != 1:
                return None
            (handler,) = current.handlers
            if (
                type(handler) is logging.StreamHandler
                and type(handler.formatter) is JsonFormatter
                and not handler.filters
                and level >= handler.level
            ):
                return handler
            return None
        if not current.propagate:
            return None
        current = current.parent
    return None


@contextmanager
def _locked(handler: logging.Handler) -> Iterator[None]:
    handler.acquire()
    try:
        yield
    finally:
        handler.release()


def _render(
    created: float,
    msecs: int,
    level: int,
    name: str,
    event: str,
    fields: Mapping[str, Any],
    exception: str | None,
    redacted: bool,
) -> str:
    """One event as its JSON line: ts, level, logger, event, context fields, event fields (`JsonFormatter`)."""
    payload: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{msecs:03d}Z",
        "level": logging.getLevelName(level).lower(),
        "logger": name,
        "event": event,
    }
    payload.update(_context.get())
    payload.update(fields)
    if exception is not None:
        payload["exception"] = exception
    if not redacted:
        return json.dumps(redact_obj(payload), default=str, separators=(",", ":"))
    # The event's own fields were redacted as it was built (the audit trail): only the rest is, here.
    kept = {k: v for k, v in fields.items() if payload.get(k) is v}
    masked = redact_obj({k: v for k, v in payload.items() if k not in kept})
    return json.dumps({**masked, **kept}, default=str, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """Formats every record as one JSON line: ts, level, logger, event, context fields, event fields."""

    def format(self, record: logging.LogRecord) -> str:
        return _render(
            record.created,
            int(record.msecs),
            record.levelno,
            record.name,
            record.getMessage(),
            getattr(record, "greenloop_fields", {}),
            self.formatException(record.exc_info) if record.exc_info else None,
            getattr(record, "greenloop_redacted", False),
        )


# HTTP client libraries log every request at INFO with its full URL, and a URL can be a credential (the
# signed, short-lived URL a job log is downloaded from). Their INFO and DEBUG lines are never wanted.
QUIET_HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2")


def configure_json_logging(level: int = logging.INFO, *, stream: TextIO | None = None) -> None:
    """Send every log record to `stream` (stderr) as one JSON object a line, redacted.

    The HTTP client libraries' loggers are set to WARNING whatever `level` is; what they still log goes
    through the same redacting formatter.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_HTTP_LOGGERS:
        # Security: request lines carry URLs, and a signed URL is a bearer credential until it expires.
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
