"""Errors raised by the agent.

    AgentError
    ├── ModelError           the model API failed after the SDK's bounded retries (overloaded, 5xx,
    │                        rate limit, timeout, connection, bad request); `kind` says which
    ├── ScriptError          a scripted or recorded model session is invalid or has run out
    │   └── ReplayMismatch   a replayed session was asked something it never recorded
    └── ToolSessionError     the MCP session cannot even list its tools (the run cannot start)

Guards do not raise these: a guard ends the run with a recorded `StopReason` (see `agent.guards`).
"""

from __future__ import annotations

__all__ = ["AgentError", "ModelError", "ReplayMismatch", "ScriptError", "ToolSessionError"]


class AgentError(Exception):
    """Base class of every error in `agent`."""


class ModelError(AgentError):
    """The model back-end could not produce a response.

    `kind` is machine-readable: overloaded, rate_limited, server_error, timeout, connection, auth,
    bad_request, invalid_response.
    """

    TRANSIENT_KINDS = frozenset({"overloaded", "rate_limited", "server_error", "timeout", "connection"})

    def __init__(self, message: str, *, kind: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status_code = status_code

    @property
    def transient(self) -> bool:
        """Whether the outside failed (overloaded, rate limited, 5xx, timeout, connection): worth a later try."""
        return self.kind in self.TRANSIENT_KINDS


class ScriptError(AgentError):
    """A scripted or recorded model session is invalid or has no more responses."""


class ReplayMismatch(ScriptError):
    """A replayed session received a request that differs from the recorded one."""


class ToolSessionError(AgentError):
    """The MCP session could not list its tools, so no run was started."""
