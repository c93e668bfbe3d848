"""GitHub App authentication: an RS256 JWT exchanged for a cached, self-refreshing installation token.

The private key is read once, from a path, when `GitHubApp` is built; it never leaves this object. The
installation token (optionally scoped to some repositories and permissions, which GitHub then enforces) is
cached and refreshed five minutes before its `expires_at`, or at once after the forge answers 401 to it
(`invalidate`). `GitHubApp.scoped(repositories, permissions)` is a `TokenSource` for a down-scoped token
(the body of the exchange names the repositories and permissions), cached per scope and refreshed the same
way: one App, one key, a token per purpose. `secrets()` lists every credential in circulation (every scope's)
so that logs and tool output can be scrubbed of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import httpx2
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from pydantic import BaseModel, ConfigDict, ValidationError

from infra.jsonlog import log_event
from mcp_server.errors import ForgeAuthError, ForgeError, ForgeNotFound, ForgeUnavailable
from policy.config import ForgeSettings
from policy.redaction import redact

__all__ = [
    "API_VERSION",
    "JWT_BACKDATE_SECONDS",
    "JWT_TTL_SECONDS",
    "REFRESH_MARGIN_SECONDS",
    "GitHubApp",
    "ObserverTokens",
    "ScopedTokens",
    "StaticToken",
    "TokenSource",
]

API_VERSION = "2022-11-28"  # sent as X-GitHub-Api-Version on every request, the token exchange included
# GitHub accepts App JWTs of at most ten minutes; backdating covers clock drift between us and the forge.
JWT_BACKDATE_SECONDS = 60
JWT_TTL_SECONDS = 540
REFRESH_MARGIN_SECONDS = 300.0
_KEEP_OLD_TOKENS = 3
logger = logging.getLogger("greenloop.github_app")  # tokens replaced recently may still sit in a log line being written


class TokenSource(Protocol):
    """Where the forge client gets its bearer token. `GitHubApp` is the production one."""

    async def token(self) -> str:
        """A token valid for at least a few minutes."""
        ...

    def invalidate(self, token: str) -> None:
        """Forget `token` (the forge rejected it), so the next `token()` fetches a new one."""
        ...

    def secrets(self) -> tuple[str, ...]:
        """Every credential in circulation, for redaction."""
        ...


class StaticToken:
    """A token given from outside (a person's own GitHub token): never refreshed, never exchanged.

    The forge judges it as that person: they see what they may see. A 401 leaves nothing to refresh.
    """

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ForgeAuthError("GitHub token: the token is empty.")
        self._token = token.strip()

    async def token(self) -> str:
        """The token as given."""
        return self._token

    def invalidate(self, token: str) -> None:
        """Nothing to refresh: the next request fails the same way and says so."""

    def secrets(self) -> tuple[str, ...]:
        """The token, for redaction."""
        return (self._token,)


def scope_key(repositories: Sequence[str] | None, permissions: Mapping[str, str] | None) -> str:
    """A stable key for a token scope (sorted repository names and permissions)."""
    repos = "*" if repositories is None else ",".join(sorted(r.lower() for r in repositories))
    perms = "*" if permissions is None else ",".join(f"{k}:{permissions[k]}" for k in sorted(permissions))
    return f"{repos}|{perms}"


class _TokenCache:
    """One scope's installation token: the request body that asks for it, the live token, its expiry."""

    def __init__(self, repositories: Sequence[str] | None, permissions: Mapping[str, str] | None) -> None:
        self.body: dict[str, Any] = {}
        if repositories is not None:
            self.body["repositories"] = sorted(repositories)
        if permissions is not None:
            self.body["permissions"] = dict(permissions)
        self.lock = asyncio.Lock()
        self.token: str | None = None
        self.expires_at = 0.0


class ScopedTokens:
    """A `TokenSource` for one scope of a `GitHubApp` (same key, same HTTP client, its own cached token)."""

    def __init__(self, app: GitHubApp, cache: _TokenCache) -> None:
        self._app = app
        self._cache = cache

    @property
    def scope(self) -> Mapping[str, Any]:
        """The exchange body: {"repositories": [...], "permissions": {...}}."""
        return self._cache.body

    @property
    def expires_at(self) -> float:
        """When the token `token()` last returned expires (epoch seconds; 0 before the first)."""
        return self._cache.expires_at

    async def token(self) -> str:
        """This scope's installation token, fetched or refreshed before it expires."""
        return await self._app._cached(self._cache)

    def invalidate(self, token: str) -> None:
        """Forget `token` after the forge answered 401 to it."""
        self._app.invalidate(token)

    def secrets(self) -> tuple[str, ...]:
        """Every credential of the App in circulation (all scopes), for redaction."""
        return self._app.secrets()


class ObserverTokens:
    """The observation token: read-only over the named repositories, or, when the forge refuses that scope
    (422: a configured repository is not in the installation), the same permissions over every repository
    of the installation, so one misconfigured project does not blind the pass to all the others. Logged."""

    def __init__(self, app: GitHubApp, *, repositories: Sequence[str] | None, permissions: Mapping[str, str]) -> None:
        self._named = app.scoped(repositories=repositories, permissions=permissions)
        self._wide = app.scoped(repositories=None, permissions=permissions)
        self._current = self._named
        self._app = app

    @property
    def expires_at(self) -> float:
        """When the token `token()` last returned expires (epoch seconds)."""
        return self._current.expires_at

    async def token(self) -> str:
        """The observation token."""
        if self._current is self._named:
            try:
                return await self._named.token()
            except ForgeError as exc:
                if exc.status != 422:
                    raise
                log_event(
                    logger,
                    "observer_scope_refused",
                    level=logging.WARNING,
                    reason=str(exc),
                    fallback="every repository of the installation, read-only",
                )
                self._current = self._wide
        return await self._wide.token()

    def invalidate(self, token: str) -> None:
        """Forget `token` after a 401."""
        self._app.invalidate(token)

    def secrets(self) -> tuple[str, ...]:
        """Every credential of the App in circulation, for redaction."""
        return self._app.secrets()


class _InstallationToken(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    token: str
    expires_at: datetime


def _load_key(path: Path) -> RSAPrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ForgeAuthError(f"GitHub App: cannot read the private key: {str(path)!r}.") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ForgeAuthError(f"GitHub App: the private key is not an unencrypted PEM key: {str(path)!r}.") from exc
    if not isinstance(key, RSAPrivateKey):
        raise ForgeAuthError(f"GitHub App: the private key is not an RSA key: {str(path)!r}.")
    return key


class GitHubApp:
    """One GitHub App installation: mints JWTs and keeps an installation token fresh.

    Raises (from the constructor):
        ForgeAuthError: the private key can't be read or isn't an RSA PEM key.
    """

    def __init__(
        self,
        *,
        api_url: str,
        app_id: str,
        installation_id: str,
        private_key_path: str | Path,
        timeout: float = 20.0,
        transport: httpx2.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = REFRESH_MARGIN_SECONDS,
        repositories: Sequence[str] | None = None,
        permissions: Mapping[str, str] | None = None,
    ) -> None:
        if not str(installation_id).isdigit():
            raise ForgeAuthError(f"GitHub App: installation id must be a number: {installation_id!r}.")
        self._api_url = api_url.rstrip("/")
        self._app_id = str(app_id)
        self._installation_id = str(installation_id)
        # Security: the key is read once and kept only in memory, inside this object.
        self._key = _load_key(Path(private_key_path))
        self._clock = clock
        self._refresh_margin = refresh_margin
        # Least privilege: GitHub scopes the token to these repositories (names without the owner) and
        # permissions; None asks for everything the installation has. `scoped()` asks for narrower ones.
        self._default = _TokenCache(repositories, permissions)
        self._caches: dict[str, _TokenCache] = {}
        self._timeout = timeout
        self._http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout),
            transport=transport,
            trust_env=False,
            follow_redirects=False,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "greenloop",
            },
        )
        self._old: list[str] = []
        self._last_jwt: str | None = None
        self.exchanges = 0  # how many installation tokens were fetched (observable in tests and metrics)

    @classmethod
    def from_settings(cls, settings: ForgeSettings, *, transport: httpx2.AsyncBaseTransport | None = None) -> GitHubApp:
        """Build from `[forge]`.

        Raises:
            ForgeAuthError: app_id, installation_id or private_key_path is missing, or the key is unreadable.
        """
        app_id, installation_id, key_path = settings.app_id, settings.installation_id, settings.private_key_path
        for name, value in (("app_id", app_id), ("installation_id", installation_id), ("private_key_path", key_path)):
            if not value:
                raise ForgeAuthError(f"GitHub App: [forge] is missing a setting: {name!r}.")
        return cls(
            api_url=settings.api_url,
            app_id=app_id or "",
            installation_id=installation_id or "",
            private_key_path=key_path or "",
            timeout=settings.timeout_seconds,
            transport=transport,
        )

    async def __aenter__(self) -> GitHubApp:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client used for token exchanges."""
        await self._http.aclose()

    def jwt(self) -> str:
        """A fresh App JWT: iat = now-60, exp = now+540, iss = app id, signed RS256."""
        now = int(self._clock())
        payload: dict[str, Any] = {
            "iat": now - JWT_BACKDATE_SECONDS,
            "exp": now + JWT_TTL_SECONDS,
            "iss": self._app_id,
        }
        encoded = jwt.encode(payload, self._key, algorithm="RS256")
        self._last_jwt = encoded
        return encoded

    async def token(self) -> str:
        """The installation token, fetched or refreshed when it expires within the refresh margin.

        Raises:
            ForgeAuthError: the forge rejected the App JWT (wrong key, app id or installation).
            ForgeNotFound: no such installation.
            ForgeUnavailable: the forge could not be reached or failed.
        """
        return await self._cached(self._default)

    def scoped(self, *, repositories: Sequence[str] | None, permissions: Mapping[str, str]) -> ScopedTokens:
        """A token source for exactly these repositories (names without the owner; None: every repository of
        the installation) and permissions.

        Sources of the same scope share one cached token; the forge refuses a scope beyond the installation's.
        """
        key = scope_key(repositories, permissions)
        cache = self._caches.get(key)
        if cache is None:
            cache = self._caches[key] = _TokenCache(repositories, permissions)
        return ScopedTokens(self, cache)

    async def _cached(self, cache: _TokenCache) -> str:
        token = cache.token
        if token is not None and not cache.lock.locked() and self._clock() < cache.expires_at - self._refresh_margin:
            return token  # the usual case, without taking the lock
        async with cache.lock:
            token = cache.token
            if token is None or self._clock() >= cache.expires_at - self._refresh_margin:
                token = await self._exchange(cache)
            return token

    def _all_caches(self) -> list[_TokenCache]:
        return [self._default, *self._caches.values()]

    def invalidate(self, token: str) -> None:
        """Forget `token` after the forge answered 401 to it; the next `token()` of its scope fetches a new one."""
        for cache in self._all_caches():
            if token == cache.token:
                self._old = [token, *self._old][:_KEEP_OLD_TOKENS]
                cache.token = None
                cache.expires_at = 0.0

    def secrets(self) -> tuple[str, ...]:
        """Every scope's live installation token, recently replaced ones and the last JWT, for redaction."""
        live = [c.token for c in self._all_caches() if c.token]
        jwts = [self._last_jwt] if self._last_jwt else []
        return tuple(live + self._old + jwts)

    def _refusal(self, response: httpx2.Response) -> str:
        """GitHub's own message (redacted) for an error answer, with the fix when it is the clock; "." if none."""
        try:
            body = response.json()
        except ValueError:
            return "."
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message:
            return "."
        text = f": {redact(message[:300], extra_secrets=self.secrets())!r}"
        if "('exp')" in message or "('iat')" in message:
            # GitHub judges iat/exp by its own clock: a skewed clock here is the usual cause.
            text += (
                ". The JWT's time claims were refused: check this machine's clock (it must be within a minute of "
                "GitHub's; run NTP)"
            )
        return text + "."

    async def _exchange(self, cache: _TokenCache) -> str:
        url = f"{self._api_url}/app/installations/{self._installation_id}/access_tokens"
        what = f"installation {self._installation_id!r}"
        try:
            response = await self._http.post(
                url,
                headers={"Authorization": f"Bearer {self.jwt()}"},
                json=cache.body or None,
                timeout=self._timeout,
            )
        except httpx2.TimeoutException as exc:
            raise ForgeUnavailable(f"Forge unavailable: token exchange timed out for {what}.") from exc
        except httpx2.HTTPError as exc:
            raise ForgeUnavailable(
                f"Forge unavailable: token exchange failed for {what}: {exc.__class__.__name__}."
            ) from exc
        status = response.status_code
        said = self._refusal(response)
        if status in (401, 403):
            raise ForgeAuthError(f"Forge refused the GitHub App JWT for {what}: HTTP {status}{said}", status=status)
        if status == 404:
            raise ForgeNotFound(
                f"Forge has no GitHub App installation: {self._installation_id!r}: HTTP 404{said}", status=status
            )
        if status >= 500:
            raise ForgeUnavailable(f"Forge unavailable: token exchange for {what}: HTTP {status}{said}", status=status)
        if status != 201 and status != 200:
            raise ForgeError(f"Forge token exchange failed for {what}: HTTP {status}{said}", status=status)
        try:
            parsed = _InstallationToken.model_validate_json(response.content)
        except ValidationError as exc:
            raise ForgeError(f"Forge token exchange returned an unexpected body for {what}.") from exc
        if cache.token is not None and cache.token != parsed.token:
            self._old = [cache.token, *self._old][:_KEEP_OLD_TOKENS]
        cache.token = parsed.token
        cache.expires_at = parsed.expires_at.timestamp()
        self.exchanges += 1
        return parsed.token
