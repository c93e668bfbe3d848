"""HTTP plumbing of the reconciler's API: errors as JSON answers, capped bodies, strict parsing, the bearer guard.

Nothing here knows a route: `reconciler.api` holds the handlers.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from typing import Any, Final, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from infra.jsonlog import log_event
from reconciler.api_models import ErrorBody, FieldError

__all__ = [
    "SMALL_BODY",
    "ApiError",
    "BearerGuard",
    "error_response",
    "is_loopback_host",
    "json_response",
    "not_found",
    "parse_body",
    "parse_json",
    "parse_query",
    "read_body",
]

logger = logging.getLogger("greenloop.api")

SMALL_BODY: Final = 64 * 1024

_M = TypeVar("_M", bound=BaseModel)


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an IP address or 'localhost') is a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiError(Exception):
    """An answer other than success, raised by a handler and rendered as an `ErrorBody`."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        *,
        fields: list[FieldError] | None = None,
        unknown: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.body = ErrorBody(error=error, detail=detail, fields=fields, unknown=unknown)
        self.headers = headers


def json_response(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`model` as an application/json answer (an `ErrorBody` leaves out its empty optional fields)."""
    return Response(
        model.model_dump_json(exclude_none=isinstance(model, ErrorBody)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def error_response(exc: ApiError) -> Response:
    """The JSON answer for `exc`."""
    return json_response(exc.body, exc.status, exc.headers)


# --- input ------------------------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, at most `limit` bytes.

    Raises:
        ApiError: 400 for a malformed Content-Length, 413 past the limit.
    """
    # Security: the cap is enforced while reading, so an endless body costs at most `limit` bytes of memory.
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", f"Invalid Content-Length header: {declared[:40]!r}.")
        if int(declared) > limit:
            raise ApiError(413, "too_large", f"Request body too large: {int(declared)} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"Request body too large: more than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _field_name(loc: tuple[int | str, ...]) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "(body)"


def _invalid(exc: ValidationError, what: str) -> ApiError:
    errors = exc.errors(include_url=False, include_input=False)
    if any(e["type"] == "json_invalid" for e in errors):
        bad = next(e for e in errors if e["type"] == "json_invalid")
        why = str(bad.get("ctx", {}).get("error") or bad["msg"].removeprefix("Invalid JSON: "))
        return ApiError(400, "invalid_json", f"Invalid JSON: {why}.")
    fields = [FieldError(field=_field_name(tuple(e["loc"])), message=e["msg"]) for e in errors]
    first = fields[0]
    more = f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""
    return ApiError(422, "invalid_request", f"Invalid {what}: {first.field!r}: {first.message}.{more}", fields=fields)


async def parse_body(request: Request, model: type[_M], *, limit: int = SMALL_BODY, optional: bool = False) -> _M:
    """The request body as `model` (an empty body gives `model()` when `optional`).

    Raises:
        ApiError: 400 malformed JSON, 413 too large, 422 naming the first invalid field (all in `fields`).
    """
    body = await read_body(request, limit)
    if optional and not body.strip():
        return model()
    return parse_json(body, model)


def parse_json(body: bytes, model: type[_M], *, what: str = "request") -> _M:
    """`body` (JSON text) as `model`.

    Raises:
        ApiError: 400 malformed JSON, 422 naming the first invalid field (all in `fields`).
    """
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc, what) from None


def parse_query(request: Request, model: type[_M], *, lists: frozenset[str] = frozenset()) -> _M:
    """The query string as `model`. Names in `lists` may repeat or hold comma-separated values; others once.

    Raises:
        ApiError: 422 naming the offending parameter.
    """
    raw: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        if key in lists:
            raw.setdefault(key, []).extend(v for v in value.split(",") if v)
        elif key in raw:
            raise ApiError(
                422,
                "invalid_request",
                f"Invalid query: {key!r}: given more than once.",
                fields=[FieldError(field=key, message="given more than once")],
            )
        else:
            raw[key] = value
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc, "query") from None


# --- authentication ---------------------------------------------------------------------------------------


class BearerGuard:
    """ASGI middleware: bearer token on every route but the `exempt` ones; loopback-only when no token is set."""

    def __init__(self, app: ASGIApp, *, token: bytes | None, exempt: frozenset[str] = frozenset({"/healthz"})) -> None:
        self.app = app
        self.token = token
        self.exempt = exempt  # paths with their own authentication (or none needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        # The operators' pages (`reconciler.ui`) check their own session cookie, earned with the same token.
        if scope["type"] != "http" or path in self.exempt or path == "/ui" or path.startswith("/ui/"):
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, error, detail = refusal
        headers = {"WWW-Authenticate": 'Bearer realm="greenloop"'} if status == 401 else None
        log_event(
            logger,
            "api_refused",
            level=logging.WARNING,
            method=scope.get("method"),
            path=scope.get("path"),
            status=status,
            error=error,
        )
        response = error_response(ApiError(status, error, detail, headers=headers))
        await response(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        if self.token is None:
            # Security: without a token, only this machine may talk to the API.
            client = scope.get("client")
            if not client or not is_loopback_host(str(client[0])):
                return 403, "forbidden", "Forbidden: no API token is configured, so only loopback clients are served."
            return None
        values = [v for k, v in scope.get("headers", []) if k == b"authorization"]
        if len(values) != 1:
            return 401, "unauthorized", "Unauthorized: send one 'Authorization: Bearer <token>' header."
        scheme, _, given = values[0].partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return 401, "unauthorized", "Unauthorized: the Authorization header must be 'Bearer <token>'."
        # Security: constant-time comparison; the token never reaches a log or an answer.
        if not hmac.compare_digest(given.strip(), self.token):
            return 401, "unauthorized", "Unauthorized: wrong API token."
        return None


async def not_found(request: Request, exc: Exception) -> Response:
    """Starlette's 404/405 (no such route, wrong method) as an `ErrorBody`, logged as one event."""
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    error = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    detail = {
        404: f"Not found: no such route: {request.url.path[:200]!r}.",
        405: f"Method not allowed: {request.method} {request.url.path[:200]!r}.",
    }.get(status, f"HTTP error {status}.")
    log_event(logger, "api_" + error, method=request.method, path=request.url.path[:200], status=status)
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) and exc.headers else None
    return json_response(ErrorBody(error=error, detail=detail), status, headers)
