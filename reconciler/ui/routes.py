"""The `/ui` routes served next to the API by `greenloop run`: login, logout, and four read-only pages.

Every answer carries `SECURITY_HEADERS` (a strict Content-Security-Policy: no script at all). A page asked
for without a session redirects to the login form; the token is only ever sent in a POST body, never in a
URL. Each request logs one structured event (`ui_<page>`) with its status and duration, never the token.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from infra.jsonlog import log_event
from policy.types import AttemptStatus
from reconciler.api_http import ApiError, read_body
from reconciler.context import ReconcilerContext
from reconciler.errors import StoreError
from reconciler.store import attempts as attempt_store
from reconciler.store import views
from reconciler.store.models import utcnow
from reconciler.ui.auth import UiAuth
from reconciler.ui.pages import attempt_page, is_stale, project_rows
from reconciler.ui.render import SECURITY_HEADERS, STATIC, render

__all__ = ["ui_routes"]

logger = logging.getLogger("greenloop.ui")

PAGE_SIZE: Final = 50
_PAGE_TIMEOUT_S: Final = 30.0
_LOGIN_BODY: Final = 4096
_ID_RE: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")

Page = Callable[[Request], Awaitable[Response]]


class _NotFound(Exception):
    pass


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def ui_routes(ctx: ReconcilerContext, *, token: bytes | None) -> list[BaseRoute]:
    """The routes of the operators' pages, to add to the API's app (which leaves `/ui` to them)."""
    auth = UiAuth(token=token)
    css = (STATIC / "style.css").read_bytes()

    def page(event: str, handler: Page, *, public: bool = False) -> Page:
        async def run(request: Request) -> Response:
            started = time.perf_counter()
            fields: dict[str, Any] = {}
            if not public and not auth.allowed(request):
                if auth.needs_login:
                    response: Response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
                else:
                    response = _html(render("error.html", title="Forbidden", message=_LOOPBACK_ONLY), 403)
                fields["refused"] = True
            else:
                try:
                    async with asyncio.timeout(_PAGE_TIMEOUT_S):
                        response = await handler(request)
                except _NotFound as exc:
                    response = _html(render("error.html", title="Not found", message=str(exc)), 404)
                except ApiError as exc:
                    response = _html(render("error.html", title="Bad request", message=exc.body.detail), exc.status)
                except StoreError as exc:
                    fields["error"] = str(exc)
                    response = _html(render("error.html", title="Store unavailable", message=_STORE_DOWN), 503)
                except TimeoutError:
                    fields["error"] = "timeout"
                    response = _html(render("error.html", title="Timed out", message=_TIMED_OUT), 504)
                except Exception:  # top-level handler: a bug answers 500 and is logged with its traceback
                    logger.exception("ui_handler_crashed", extra={"greenloop_fields": {"page": event}})
                    fields["error"] = "internal"
                    response = _html(render("error.html", title="Internal error", message=_INTERNAL), 500)
            log_event(
                logger,
                event,
                method=request.method,
                path=request.url.path[:200],
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                **fields,
            )
            return response

        return run

    async def login_form(request: Request) -> Response:
        if not auth.needs_login:
            return RedirectResponse("/ui", status_code=303, headers=SECURITY_HEADERS)
        return _html(render("login.html", error=None))

    async def login(request: Request) -> Response:
        if not auth.needs_login:
            return RedirectResponse("/ui", status_code=303, headers=SECURITY_HEADERS)
        body = await read_body(request, _LOGIN_BODY)
        try:
            form = urllib.parse.parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        except ValueError:  # more fields than the form has
            raise ApiError(400, "bad_request", "Invalid login form.") from None
        given = (form.get("token") or [""])[0]
        if not auth.token_matches(given):
            log_event(logger, "ui_login_refused", level=logging.WARNING)
            return _html(render("login.html", error="Wrong token."), 401)
        response = RedirectResponse("/ui", status_code=303, headers=SECURITY_HEADERS)
        auth.start_session(request, response)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
        auth.end_session(request, response)
        return response

    async def projects(request: Request) -> Response:
        rows, kill = await project_rows(ctx)
        return _html(render("projects.html", rows=rows, kill_switch=kill, nav="projects", login=auth.needs_login))

    async def attempts(request: Request) -> Response:
        names = [p.name for p in ctx.config.projects]
        project = request.query_params.get("project") or None
        status = request.query_params.get("status") or None
        offset_text = request.query_params.get("offset") or "0"
        if project is not None and project not in names:
            raise ApiError(400, "invalid_request", f"Unknown project: {project[:200]!r}.")
        if status is not None and status not in {s.value for s in AttemptStatus}:
            raise ApiError(400, "invalid_request", f"Unknown status: {status[:40]!r}.")
        if not offset_text.isdigit() or len(offset_text) > 9:
            raise ApiError(400, "invalid_request", f"Invalid offset: {offset_text[:40]!r}.")
        offset = int(offset_text)
        rows = await attempt_store.list_attempts(
            ctx.sessions,
            project=project,
            statuses=[AttemptStatus(status)] if status is not None else None,
            limit=PAGE_SIZE + 1,
            offset=offset,
        )
        more = len(rows) > PAGE_SIZE
        rows = rows[:PAGE_SIZE]
        now = utcnow()
        now_stale = {a.id for a in rows if is_stale(a, ctx.config.server.attempt_timeout_seconds, now)}
        query = {k: v for k, v in (("project", project), ("status", status)) if v is not None}
        older = urllib.parse.urlencode({**query, "offset": offset + PAGE_SIZE}) if more else None
        newer = urllib.parse.urlencode({**query, "offset": max(0, offset - PAGE_SIZE)}) if offset > 0 else None
        return _html(
            render(
                "attempts.html",
                rows=rows,
                stale=now_stale,
                projects=names,
                statuses=[s.value for s in AttemptStatus],
                project=project,
                status=status,
                older=older,
                newer=newer,
                nav="attempts",
                login=auth.needs_login,
            )
        )

    async def attempt(request: Request) -> Response:
        attempt_id = str(request.path_params["id"])
        found = await attempt_store.get_attempt(ctx.sessions, attempt_id) if _ID_RE.match(attempt_id) else None
        if found is None:
            raise _NotFound(f"No attempt {attempt_id[:64]!r}.")
        content = await attempt_page(ctx, found)
        return _html(render("attempt.html", page=content, nav="attempts", login=auth.needs_login))

    async def spend(request: Request) -> Response:
        summary = await views.spend(ctx.sessions)
        return _html(render("spend.html", spend=summary, nav="spend", login=auth.needs_login))

    async def stylesheet(request: Request) -> Response:
        return Response(css, media_type="text/css", headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})

    return [
        Route("/ui/login", page("ui_login_form", login_form, public=True), methods=["GET"]),
        Route("/ui/login", page("ui_login", login, public=True), methods=["POST"]),
        Route("/ui/logout", page("ui_logout", logout, public=True), methods=["POST"]),
        Route("/ui/static/style.css", page("ui_static", stylesheet, public=True), methods=["GET"]),
        Route("/ui", page("ui_projects", projects), methods=["GET"]),
        Route("/ui/attempts", page("ui_attempts", attempts), methods=["GET"]),
        Route("/ui/attempts/{id}", page("ui_attempt", attempt), methods=["GET"]),
        Route("/ui/spend", page("ui_spend", spend), methods=["GET"]),
    ]


_LOOPBACK_ONLY: Final = "No API token is configured, so only loopback clients are served."
_STORE_DOWN: Final = "The store did not answer; see the server log, then reload."
_TIMED_OUT: Final = f"No answer within {_PAGE_TIMEOUT_S:g} seconds; reload, or see the server log."
_INTERNAL: Final = "Internal error: see the server log."
