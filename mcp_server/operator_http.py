"""The operator surface over the sidecar's loopback HTTP: routes on `greenloop-mcp serve-http`, and the
reconciler's client of them.

Routes (`POST`, JSON; not MCP, not tools: the model never sees them), each authenticated with a short-lived
operator token signed with the shared `GREENLOOP_MCP_TOKEN_SECRET` (`mcp_server/auth.py::mint_operator_token`,
an audience no MCP session accepts):

- `/operator/observer-token` -> `{"token", "expires_at"}`: the reconciler's read-only observation token
  (`OBSERVER_PERMISSIONS` over the watched repositories), refreshed by the sidecar before it expires;
  `{"stale": token}` after a 401 makes it fetch a new one.
- `/operator/<operation>` with `{"project", ...}`: one `OperatorActions` call (see `mcp_server/operator.py`).

So the reconciler process holds no App key and no write-scoped token: `HttpOperator` is its `Operator`, and
`RemoteTokens` its forge client's `TokenSource`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_server.auth import mint_operator_token, verify_operator_token
from mcp_server.errors import (
    ForgeAuthError,
    ForgeConflict,
    ForgeError,
    ForgeNotFound,
    ForgeRateLimited,
    ForgeUnavailable,
    ToolRefused,
)
from mcp_server.escalation import EscalationPosted
from mcp_server.github_app import ObserverTokens
from mcp_server.operator import OperatorActions

__all__ = ["HttpOperator", "RemoteTokens", "operator_base_url", "operator_routes"]

PREFIX = "/operator"
_REFRESH_MARGIN_SECONDS = 120.0
_FORGE_ERRORS: dict[str, type[ForgeError]] = {
    cls.__name__: cls
    for cls in (ForgeAuthError, ForgeConflict, ForgeError, ForgeNotFound, ForgeRateLimited, ForgeUnavailable)
}


def operator_base_url(mcp_url: str) -> str:
    """The operator routes' root on the sidecar of `server.mcp_url` (same origin, path `/operator`)."""
    parts = urlsplit(mcp_url)
    return urlunsplit((parts.scheme, parts.netloc, PREFIX, "", ""))


def _int(body: Mapping[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ToolRefused(f"Invalid request: {name!r} must be an integer.")
    return value


def _str(body: Mapping[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise ToolRefused(f"Invalid request: {name!r} must be a string.")
    return value


async def _call(actions: OperatorActions, operation: str, body: Mapping[str, Any]) -> Any:
    project = _str(body, "project")
    attempt_id = body.get("attempt_id")
    if attempt_id is not None and not isinstance(attempt_id, str):
        raise ToolRefused("Invalid request: 'attempt_id' must be a string or null.")
    if operation == "rerun_workflow":
        await actions.rerun_workflow(project, _int(body, "run_id"))
        return None
    if operation == "merge_when_green":
        return await actions.merge_when_green(
            project,
            _int(body, "number"),
            pushed_sha=_str(body, "pushed_sha"),
            title=_str(body, "title"),
            message=_str(body, "message"),
            attempt_id=attempt_id,
        )
    if operation == "close_pull_request":
        await actions.close_pull_request(project, _int(body, "number"), attempt_id=attempt_id)
        return None
    if operation == "post_escalation":
        pr_number = body.get("pr_number")
        owners = body.get("owners") or []
        if pr_number is not None and not isinstance(pr_number, int):
            raise ToolRefused("Invalid request: 'pr_number' must be an integer or null.")
        if not isinstance(owners, list) or not all(isinstance(o, str) for o in owners):
            raise ToolRefused("Invalid request: 'owners' must be a list of logins.")
        posted = await actions.post_escalation(
            project,
            marker=_str(body, "marker"),
            title=_str(body, "title"),
            report=_str(body, "report"),
            pr_number=pr_number,
            owners=owners,
            attempt_id=attempt_id,
        )
        return asdict(posted)
    if operation == "delete_branch":
        return await actions.delete_branch(project, _str(body, "branch"), attempt_id=attempt_id)
    raise ToolRefused(f"Unknown operation: {operation!r}.")


def operator_routes(actions: OperatorActions, observer: ObserverTokens, *, secret: str | bytes) -> list[Route]:
    """The sidecar's operator routes (mounted next to the MCP endpoint)."""

    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and verify_operator_token(secret, token.strip())

    async def body_of(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    async def observer_token(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        stale = (await body_of(request)).get("stale")
        if isinstance(stale, str) and stale:
            observer.invalidate(stale)
        try:
            token = await observer.token()
        except ForgeError as exc:
            return _forge_error(exc)
        return JSONResponse({"token": token, "expires_at": observer.expires_at})

    async def operation(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            result = await _call(actions, request.path_params["operation"], await body_of(request))
        except ToolRefused as exc:
            return JSONResponse({"error": "refused", "message": str(exc)}, status_code=409)
        except ForgeError as exc:
            return _forge_error(exc)
        return JSONResponse({"result": result})

    return [
        Route(f"{PREFIX}/observer-token", observer_token, methods=["POST"]),
        Route(PREFIX + "/{operation:str}", operation, methods=["POST"]),
    ]


def _forge_error(exc: ForgeError) -> JSONResponse:
    body: dict[str, Any] = {"error": "forge", "kind": type(exc).__name__, "status": exc.status, "message": str(exc)}
    if isinstance(exc, ForgeRateLimited):
        body["retry_after"] = exc.retry_after
    return JSONResponse(body, status_code=502)


class HttpOperator:
    """The reconciler's `Operator` in the sidecar layout: each call a POST to the sidecar's operator routes.

    Raises what the sidecar raised: `ToolRefused`, or the same `ForgeError` subclass; `ForgeUnavailable` when
    the sidecar can't be reached.
    """

    def __init__(self, base_url: str, secret: str | bytes, *, timeout: float = 60.0) -> None:
        self._base = base_url.rstrip("/")
        self._secret = secret
        self._http = httpx2.AsyncClient(timeout=timeout, trust_env=False, follow_redirects=False)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._http.aclose()

    async def _post(self, path: str, body: Mapping[str, Any]) -> Any:
        headers = {"Authorization": f"Bearer {mint_operator_token(self._secret)}"}
        try:
            response = await self._http.post(f"{self._base}/{path}", json=dict(body), headers=headers)
        except httpx2.HTTPError as exc:
            raise ForgeUnavailable(f"MCP sidecar unreachable: POST {PREFIX}/{path}: {exc.__class__.__name__}.") from exc
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code == 200:
            return answer
        message = str(answer.get("message") or f"MCP sidecar: POST {PREFIX}/{path}: HTTP {response.status_code}.")
        if answer.get("error") == "refused":
            raise ToolRefused(message)
        if answer.get("error") == "forge":
            cls = _FORGE_ERRORS.get(str(answer.get("kind")), ForgeError)
            status = answer.get("status") if isinstance(answer.get("status"), int) else None
            if cls is ForgeRateLimited:
                retry = answer.get("retry_after")
                raise ForgeRateLimited(message, retry_after=float(retry) if retry is not None else None, status=status)
            raise cls(message, status=status)
        if response.status_code == 401:
            raise ForgeAuthError(f"MCP sidecar refused the operator token: POST {PREFIX}/{path}.", status=401)
        raise ForgeUnavailable(message, status=response.status_code)

    async def observer_token(self, stale: str | None = None) -> tuple[str, float]:
        """The read-only observation token and its expiry (epoch seconds)."""
        answer = await self._post("observer-token", {"stale": stale} if stale else {})
        token, expires_at = answer.get("token"), answer.get("expires_at")
        if not isinstance(token, str) or not isinstance(expires_at, int | float):
            raise ForgeError("MCP sidecar: the observer token answer is malformed.")
        return token, float(expires_at)

    async def rerun_workflow(self, project: str, run_id: int) -> None:
        """See `Operator.rerun_workflow`."""
        await self._post("rerun_workflow", {"project": project, "run_id": run_id})

    async def merge_when_green(
        self, project: str, number: int, *, pushed_sha: str, title: str, message: str, attempt_id: str | None = None
    ) -> str:
        """See `Operator.merge_when_green`."""
        body = {"project": project, "number": number, "pushed_sha": pushed_sha, "title": title, "message": message,
                "attempt_id": attempt_id}  # fmt: skip
        return str((await self._post("merge_when_green", body))["result"])

    async def close_pull_request(self, project: str, number: int, *, attempt_id: str | None = None) -> None:
        """See `Operator.close_pull_request`."""
        await self._post("close_pull_request", {"project": project, "number": number, "attempt_id": attempt_id})

    async def post_escalation(
        self,
        project: str,
        *,
        marker: str,
        title: str,
        report: str,
        pr_number: int | None,
        owners: Sequence[str],
        attempt_id: str | None = None,
    ) -> EscalationPosted:
        """See `Operator.post_escalation`."""
        body = {"project": project, "marker": marker, "title": title, "report": report, "pr_number": pr_number,
                "owners": list(owners), "attempt_id": attempt_id}  # fmt: skip
        result = (await self._post("post_escalation", body))["result"]
        return EscalationPosted(
            kind=result["kind"], number=int(result["number"]), url=result.get("url"), created=bool(result["created"])
        )

    async def delete_branch(self, project: str, branch: str, *, attempt_id: str | None = None) -> bool:
        """See `Operator.delete_branch`."""
        body = {"project": project, "branch": branch, "attempt_id": attempt_id}
        return bool((await self._post("delete_branch", body))["result"])


class RemoteTokens:
    """The reconciler's `TokenSource` in the sidecar layout: the read-only observation token, fetched from the
    sidecar and refreshed two minutes before it expires (or at once after a 401). No key, no exchange here."""

    def __init__(
        self,
        fetch: Callable[[str | None], Awaitable[tuple[str, float]]],
        *,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = _REFRESH_MARGIN_SECONDS,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = refresh_margin
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._stale: str | None = None
        self._expires_at = 0.0
        self.fetches = 0

    async def token(self) -> str:
        """The observation token, valid for at least the refresh margin."""
        async with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self._margin:
                self._token, self._expires_at = await self._fetch(self._stale)
                self._stale = None
                self.fetches += 1
            return self._token

    def invalidate(self, token: str) -> None:
        """The forge answered 401 to `token`: the next `token()` asks the sidecar for a new one."""
        if token == self._token:
            self._stale, self._token, self._expires_at = token, None, 0.0

    def secrets(self) -> tuple[str, ...]:
        """The token held now, for redaction."""
        return tuple(t for t in (self._token, self._stale) if t)
