"""Who may see the operators' pages: a session cookie earned with the API's bearer token.

The login form takes the same token as `Authorization: Bearer` (compared in constant time) and answers with
a cookie that is HttpOnly (scripts cannot read it), SameSite=Strict (no other site can make the browser send
it), scoped to `/ui`, Secure on HTTPS, and valid for `SESSION_SECONDS`. The cookie holds its expiry and an
HMAC of it keyed by the token, never the token: changing the token ends every session. Without a configured
token (loopback development) the pages answer loopback clients only and need no login, like the API.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from reconciler.api_http import is_loopback_host

__all__ = ["COOKIE", "SESSION_SECONDS", "UiAuth"]

COOKIE: Final = "greenloop_ui"
SESSION_SECONDS: Final = 12 * 3600
_CONTEXT: Final = b"greenloop-ui-session:"


@dataclass(frozen=True)
class UiAuth:
    """Checks logins and session cookies against the API token (None: loopback-only development mode)."""

    token: bytes | None

    @property
    def needs_login(self) -> bool:
        return self.token is not None

    def allowed(self, request: Request) -> bool:
        """Whether this request may see a page."""
        if self.token is None:
            # Security: without a token only this machine is served (the API's rule, `BearerGuard`).
            return request.client is not None and is_loopback_host(request.client.host)
        return self._valid_session(request.cookies.get(COOKIE, ""))

    def token_matches(self, given: str) -> bool:
        """Whether a submitted token is the API token (constant time)."""
        if self.token is None:
            return False
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self.token)

    def start_session(self, request: Request, response: Response, *, now: float | None = None) -> None:
        """Set the session cookie on `response`."""
        assert self.token is not None
        expires = int((time.time() if now is None else now) + SESSION_SECONDS)
        response.set_cookie(
            COOKIE,
            f"{expires}.{self._sign(expires)}",
            max_age=SESSION_SECONDS,
            path="/ui",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )

    def end_session(self, request: Request, response: Response) -> None:
        """Clear the session cookie on `response`."""
        response.delete_cookie(
            COOKIE, path="/ui", secure=request.url.scheme == "https", httponly=True, samesite="strict"
        )

    def _sign(self, expires: int) -> str:
        assert self.token is not None
        return hmac.new(self.token, _CONTEXT + str(expires).encode(), hashlib.sha256).hexdigest()

    def _valid_session(self, value: str) -> bool:
        stamp, _, signature = value.partition(".")
        if not stamp.isdigit() or len(stamp) > 12 or int(stamp) < time.time():
            return False
        # Security: constant-time comparison of the signature.
        return hmac.compare_digest(signature.encode("ascii", "replace"), self._sign(int(stamp)).encode())
