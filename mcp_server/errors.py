"""Errors raised by the MCP server's I/O layer (forge client, GitHub App auth, git workspace).

    McpServerError
    ├── ForgeError                 the forge (GitHub REST) refused or failed a request
    │   ├── ForgeAuthError         401/403: the App key, installation token or permission is wrong
    │   ├── ForgeNotFound          404: no such repository, run, job or pull request
    │   ├── ForgeRateLimited       primary or secondary rate limit still hit after bounded retries
    │   ├── ForgeConflict          409/405/422: stale sha, not mergeable, pull request already exists
    │   └── ForgeUnavailable       5xx, timeouts, connection errors after bounded retries
    ├── WorkspaceError             the local working copy could not do what was asked
    │   ├── GitError               a git subprocess failed or timed out (stderr redacted)
    │   └── WorkspaceRefused       a path the rules refuse (also a ToolRefused)
    └── ToolRefused                a refusal the model can act on; the message is safe to show it
        └── WorkspaceRefused

Foreign exceptions (`httpx2.*`, `OSError` from subprocesses, `policy.errors.PathRefused`) are translated at
the boundary with `raise X(msg) from exc`; nothing above `forge.py`/`workspace.py` catches them. Messages
never contain a token, an Authorization header or a host path outside the workspace.
"""

from __future__ import annotations

__all__ = [
    "OUTSIDE_FAILURE_PREFIXES",
    "ForgeAuthError",
    "ForgeConflict",
    "ForgeError",
    "ForgeNotFound",
    "ForgeRateLimited",
    "ForgeUnavailable",
    "GitError",
    "McpServerError",
    "ToolRefused",
    "WorkspaceError",
    "WorkspaceRefused",
]


class McpServerError(Exception):
    """Base class of every error in `mcp_server`."""


class ForgeError(McpServerError):
    """The forge refused or failed a request. `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


OUTSIDE_FAILURE_PREFIXES: tuple[str, ...] = ("Forge unavailable:", "Forge rate limit")
"""How a tool error caused by the outside (`ForgeUnavailable`, `ForgeRateLimited`) begins, as the model and the
agent see it (`mcp_server.server` ensures it): the agent tells an outage from its own mistakes by it."""


class ForgeAuthError(ForgeError):
    """Authentication or authorisation failed (bad App key, revoked installation, missing permission)."""


class ForgeNotFound(ForgeError):
    """The repository, run, job or pull request does not exist (or the installation can't see it)."""


class ForgeRateLimited(ForgeError):
    """A rate limit is still in force after bounded retries; `retry_after` is seconds to wait, if known."""

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class ForgeConflict(ForgeError):
    """The request conflicts with the forge's state: stale head sha, not mergeable, duplicate pull request."""


class ForgeUnavailable(ForgeError):
    """The forge is down, slow or unreachable (5xx, timeout, connection error) after bounded retries."""


class ToolRefused(McpServerError):
    """A refusal the model can act on (wrong branch, nothing to commit, binary file). Safe to show it."""


class WorkspaceError(McpServerError):
    """The local working copy could not do what was asked."""


class GitError(WorkspaceError):
    """A git subprocess failed or timed out. The message carries redacted stderr, never a token."""


class WorkspaceRefused(WorkspaceError, ToolRefused):
    """A path the rules refuse (outside the workspace, under .git, protected glob, symlink).

    `reason` is the `policy` refusal reason (or `symlink` for a write onto a symlink); `path` is the path
    as requested.
    """

    def __init__(self, message: str, *, reason: str, path: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = path
