"""Which session a request is for, and one live binding per session grant.

A request's grant comes from its bearer token (HTTP) or else from the grant the server was started with
(stdio, in memory); a grant asking for more than the server's mode is cut down to read-only. Bindings (a
clone, a forge client) are built once per grant by the `BindingFactory`, kept while they are used, closed
after `idle_seconds` without a call and when the server's lifespan ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer

from mcp_server.auth import grant_from_access_token
from mcp_server.deadline import DEFAULT_CALL_DEADLINE_SECONDS
from mcp_server.session import BindingFactory, Mode, SessionBinding, SessionGrant

__all__ = ["SessionCache"]


class SessionCache:
    """Resolves each request's grant and caches one binding per grant, until it has been idle for
    `idle_seconds` or the server shuts down. Also carries what every call of the server is checked against:
    each tool's declared `parameters` and the per-call `deadline_seconds`."""

    def __init__(
        self,
        factory: BindingFactory,
        *,
        mode: Mode,
        grant: SessionGrant | None,
        parameters: Mapping[str, frozenset[str]],
        idle_seconds: float,
        deadline_seconds: float = DEFAULT_CALL_DEADLINE_SECONDS,
    ) -> None:
        self.parameters = parameters
        self.deadline_seconds = deadline_seconds
        self._factory = factory
        self._mode = mode
        self._grant = grant
        self._idle_seconds = idle_seconds
        self._bindings: dict[SessionGrant, SessionBinding] = {}
        self._used: dict[SessionGrant, float] = {}
        self._creating: dict[SessionGrant, anyio.Lock] = {}
        self._lock = anyio.Lock(fast_acquire=True)

    def grant_for(self, ctx: ServerRequestContext[Any, Any]) -> SessionGrant | None:
        """The grant `ctx` acts under (its bearer token's, else the server's), never above the server's mode."""
        return self.grant_of(_access_token(ctx))

    def grant_of(self, token: AccessToken | None) -> SessionGrant | None:
        """The grant a request with bearer `token` (None: none) acts under, never above the server's mode."""
        grant = grant_from_access_token(token) if token is not None else self._grant
        if grant is None:
            return None
        # Security: a session never gets more than the server was started with.
        if grant.mode is Mode.AGENT and self._mode is not Mode.AGENT:
            grant = SessionGrant(project=grant.project, mode=Mode.READ_ONLY, client=grant.client)
        return grant

    async def binding(self, grant: SessionGrant) -> SessionBinding:
        """The live binding of `grant`, built on its first call; closes the bindings idle for too long."""
        found = self._bindings.get(grant)
        if found is not None and len(self._bindings) == 1:
            # The one live binding (a stdio server's): no other binding to close, no lock to wait on. Nothing
            # awaits between the look-up and the return, so no eviction can come in between.
            self._used[grant] = time.monotonic()
            return found
        async with self._lock:
            await self._evict_idle(keep=grant)
            creating = self._creating.setdefault(grant, anyio.Lock(fast_acquire=True))
        async with creating:  # one grant's clone doesn't hold up the others
            found = self._bindings.get(grant)
            if found is None:
                found = await self._factory(grant)
                self._bindings[grant] = found
            self._used[grant] = time.monotonic()
            return found

    async def _evict_idle(self, *, keep: SessionGrant) -> None:
        now = time.monotonic()
        for grant, used in list(self._used.items()):
            binding = self._bindings.get(grant)
            creating = self._creating.get(grant)
            if grant == keep or binding is None or now - used < self._idle_seconds:
                continue
            if binding.lock.locked() or (creating is not None and creating.locked()):
                continue
            del self._bindings[grant], self._used[grant]
            self._creating.pop(grant, None)
            with anyio.CancelScope(shield=True):
                await binding.aclose()

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer[Any]) -> AsyncIterator[dict[str, Any]]:
        """The server's lifespan: every binding still open is closed when it ends."""
        try:
            yield {}
        finally:
            with anyio.CancelScope(shield=True):
                bindings, self._bindings, self._used = list(self._bindings.values()), {}, {}
                for b in bindings:
                    await b.aclose()


def _access_token(ctx: ServerRequestContext[Any, Any]) -> AccessToken | None:
    request = ctx.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, Mapping) else None
    if isinstance(user, AuthenticatedUser):
        return user.access_token
    return get_access_token()
