"""GitHub App authentication: an RS256 JWT exchanged for a cached, self-refreshing installation token.

The private key is read once, from a path, when `GitHubApp` is built; it never leaves this object. The
installation token (optionally scoped to some repositories and permissions, which GitHub then enforces) is
cached and refreshed five minutes before its `expires_at`, or at once after the forge answers 401 to it
(`invalidate`). `secrets()` lists the credentials in circulation so that logs and tool output can be
scrubbed of them.
"""

from __future__ import annotations

import asyncio
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

from mcp_server.errors import ForgeAuthError, ForgeError, ForgeNotFound, ForgeUnavailable
from policy.config import ForgeSettings
from policy.redaction import redact

__all__ = [
    "API_VERSION",
    "JWT_BACKDATE_SECONDS",
    "JWT_TTL_SECONDS",
    "REFRESH_MARGIN_SECONDS",
    "GitHubApp",
    "TokenSource",
]

API_VERSION = "2022-11-28"  # sent as X-GitHub-Api-Version on every request, the token exchange included
# GitHub accepts App JWTs of at most ten minutes; backdating covers clock drift between us and the forge.
JWT_BACKDATE_SECONDS = 60
JWT_TTL_SECONDS = 540
REFRESH_MARGIN_SECONDS = 300.0
_KEEP_OLD_TOKENS = 3  # tokens replaced recently may still sit in a log line being written


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
        # permissions; None asks for everything the installation has.
        self._scope: dict[str, Any] = {}
        if repositories is not None:
            self._scope["repositories"] = list(repositories)
        if permissions is not None:
            self._scope["permissions"] = dict(permissions)
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
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
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
        token = self._token
        if token is not None and not self._lock.locked() and self._clock() < self._expires_at - self._refresh_margin:
            return token  # the usual case, without taking the lock
        async with self._lock:
            token = self._token
            if token is None or self._clock() >= self._expires_at - self._refresh_margin:
                token = await self._exchange()
            return token

    def invalidate(self, token: str) -> None:
        """Forget `token` after the forge answered 401 to it; the next `token()` fetches a new one."""
        if token == self._token:
            self._old = [token, *self._old][:_KEEP_OLD_TOKENS]
            self._token = None
            self._expires_at = 0.0

    def secrets(self) -> tuple[str, ...]:
        """The live installation token, recently replaced ones and the last JWT, for redaction."""
        live = [self._token] if self._token else []
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

    async def _exchange(self) -> str:
        url = f"{self._api_url}/app/installations/{self._installation_id}/access_tokens"
        what = f"installation {self._installation_id!r}"
        try:
            response = await self._http.post(
                url,
                headers={"Authorization": f"Bearer {self.jwt()}"},
                json=self._scope or None,
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
        if self._token is not None and self._token != parsed.token:
            self._old = [self._token, *self._old][:_KEEP_OLD_TOKENS]
        self._token = parsed.token
        self._expires_at = parsed.expires_at.timestamp()
        self.exchanges += 1
        return parsed.token
