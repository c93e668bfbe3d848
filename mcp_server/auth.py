"""Bearer tokens for the streamable-HTTP transport: short-lived HS256 JWTs bound to one session.

The reconciler mints one token per attempt (`mint_token`); the MCP server verifies it (`JwtTokenVerifier`)
and binds the MCP session to the token's project, attempt, job and mode. The token carries no forge
credential: it only says which session the caller may open.

Claims: `iss` = "greenloop", `aud` = "greenloop-mcp", `sub` = the project, `iat`, `nbf`, `exp`, `jti`, and
the greenloop claims `project`, `attempt_id`, `job`, `mode`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from mcp.server.auth.provider import AccessToken

from mcp_server.session import Mode, SessionGrant

__all__ = [
    "AUDIENCE",
    "ISSUER",
    "MAX_TTL_SECONDS",
    "MIN_SECRET_BYTES",
    "OPERATOR_AUDIENCE",
    "OPERATOR_TTL_SECONDS",
    "TOKEN_SECRET_ENV",
    "JwtTokenVerifier",
    "TokenClaims",
    "grant_from_access_token",
    "mint_operator_token",
    "mint_token",
    "verify_operator_token",
]

ISSUER = "greenloop"
AUDIENCE = "greenloop-mcp"
OPERATOR_AUDIENCE = "greenloop-operator"  # the sidecar's operator routes; never accepted as an MCP session
OPERATOR_TTL_SECONDS = 300
TOKEN_SECRET_ENV = "GREENLOOP_MCP_TOKEN_SECRET"
# Security: HS256 keys shorter than the hash output are brute-forceable offline.
MIN_SECRET_BYTES = 32
# Security: tokens are per attempt; a day is far longer than any attempt may run.
MAX_TTL_SECONDS = 24 * 3600
_ALGORITHM = "HS256"
_LEEWAY_SECONDS = 5
_CLIENT_ID = "greenloop-session"


def _key(secret: str | bytes) -> bytes:
    key = secret.encode() if isinstance(secret, str) else secret
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"Invalid token secret: it must be at least {MIN_SECRET_BYTES} bytes long.")
    return key


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says about the session it opens."""

    project: str
    mode: Mode
    attempt_id: str | None
    job: str | None
    expires_at: int
    token_id: str


def mint_token(
    secret: str | bytes,
    *,
    project: str,
    attempt_id: str | None = None,
    job: str | None = None,
    mode: Mode | str = Mode.READ_ONLY,
    ttl_seconds: int = 3600,
) -> str:
    """Sign a short-lived bearer token for one MCP session.

    Raises:
        ValueError: the secret is too short, the TTL is out of range, or the mode is unknown.
    """
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"Invalid token TTL: it must be 1..{MAX_TTL_SECONDS} seconds: {ttl_seconds!r}.")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": project,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
        "project": project,
        "attempt_id": attempt_id,
        "job": job,
        "mode": Mode(mode).value,
    }
    return jwt.encode(claims, _key(secret), algorithm=_ALGORITHM)


def mint_operator_token(secret: str | bytes, *, ttl_seconds: int = OPERATOR_TTL_SECONDS) -> str:
    """Sign the reconciler's short-lived bearer token for the sidecar's operator routes (not an MCP session).

    Raises:
        ValueError: the secret is too short.
    """
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": OPERATOR_AUDIENCE, "sub": "reconciler", "iat": now, "nbf": now,
              "exp": now + ttl_seconds, "jti": uuid.uuid4().hex}  # fmt: skip
    return jwt.encode(claims, _key(secret), algorithm=_ALGORITHM)


def verify_operator_token(secret: str | bytes, token: str) -> bool:
    """Whether `token` is a valid, unexpired operator token (pinned algorithm, issuer, audience, TTL)."""
    try:
        raw: dict[str, Any] = jwt.decode(
            token,
            _key(secret),
            algorithms=[_ALGORITHM],
            audience=OPERATOR_AUDIENCE,
            issuer=ISSUER,
            leeway=_LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "aud", "iss", "sub", "jti"]},
        )
        return raw.get("sub") == "reconciler" and int(raw["exp"]) - int(raw["iat"]) <= OPERATOR_TTL_SECONDS
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return False


def _optional_str(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(name)
    return value


class JwtTokenVerifier:
    """The MCP SDK `TokenVerifier` for greenloop tokens.

    A token is accepted only with a valid HS256 signature, an unexpired `exp`, the greenloop issuer and
    audience, a known mode, and a project in `projects`. Anything else verifies to None, which the SDK
    answers with HTTP 401.
    """

    def __init__(self, secret: str | bytes, *, projects: Iterable[str]) -> None:
        self._key = _key(secret)
        self._projects = frozenset(projects)

    def claims(self, token: str) -> TokenClaims | None:
        """The verified claims of `token`, or None when it must be refused."""
        try:
            # Security: pin the algorithm list; never let the token header pick it ("alg": "none").
            raw: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[_ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "aud", "iss", "sub", "jti"]},
            )
            project = raw.get("project")
            if not isinstance(project, str) or project != raw.get("sub") or project not in self._projects:
                return None
            mode = Mode(str(raw.get("mode")))
            exp = raw["exp"]
            if not isinstance(exp, int) or exp - int(raw["iat"]) > MAX_TTL_SECONDS:
                return None
            return TokenClaims(
                project=project,
                mode=mode,
                attempt_id=_optional_str(raw, "attempt_id"),
                job=_optional_str(raw, "job"),
                expires_at=exp,
                token_id=str(raw["jti"]),
            )
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            return None

    async def verify_token(self, token: str) -> AccessToken | None:
        """Verify a bearer token (the SDK `TokenVerifier` protocol); None means 401."""
        claims = self.claims(token)
        if claims is None:
            return None
        return AccessToken(
            token=token,
            client_id=_CLIENT_ID,
            scopes=[claims.mode.value],
            expires_at=claims.expires_at,
            # The principal the SDK binds an HTTP session to: one session per project/attempt/job/mode.
            subject=f"{claims.project}/{claims.attempt_id or '-'}/{claims.job or '-'}/{claims.mode.value}",
            claims={
                "iss": ISSUER,
                "project": claims.project,
                "attempt_id": claims.attempt_id,
                "job": claims.job,
                "mode": claims.mode.value,
            },
        )


def grant_from_access_token(token: AccessToken) -> SessionGrant | None:
    """The session grant a token verified by `JwtTokenVerifier` carries, or None for any other token."""
    claims = token.claims or {}
    project = claims.get("project")
    if token.client_id != _CLIENT_ID or not isinstance(project, str):
        return None
    try:
        mode = Mode(str(claims.get("mode")))
    except ValueError:
        return None
    attempt_id = claims.get("attempt_id")
    job = claims.get("job")
    return SessionGrant(
        project=project,
        mode=mode,
        attempt_id=attempt_id if isinstance(attempt_id, str) else None,
        job=job if isinstance(job, str) else None,
        client="http",
    )
