"""`greenloop attempts list|show|cancel` and `greenloop projects list|pause|resume|reset`: the operator verbs.

Each verb is one request to the reconciler's HTTP API. The server is found by `--url`, else
`$GREENLOOP_URL`, else the configuration's `server.http_host:http_port`; the token is read from
`$GREENLOOP_API_TOKEN` (or `$GREENLOOP_SERVER__API_TOKEN`), never from the command line. When no server
answers there (and no `--url` was given), the verb runs against the database named by the configuration
(`--config`) instead, through the same API handlers built in-process: one code path, whichever way it goes.

Output is an aligned table (or a short report for `attempts show`); `--json` prints the API's JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TextIO

import httpx2
from pydantic import ValidationError

from policy.config import GreenloopConfig
from policy.errors import ConfigError
from reconciler.api_models import AttemptDetail, AttemptList, AttemptSummary, ErrorBody, ProjectList, ProjectState

__all__ = ["attempts_command", "format_table", "printable", "projects_command", "register"]

URL_ENV: Final = "GREENLOOP_URL"
TOKEN_ENVS: Final = ("GREENLOOP_API_TOKEN", "GREENLOOP_SERVER__API_TOKEN")
_TIMEOUT_S: Final = 30.0
_PROBE_TIMEOUT_S: Final = 3.0


class OperatorError(Exception):
    """A verb that could not be done; the message is one line for the operator.

    `exit_code` is 2 when what was named does not exist (an unknown attempt or project), 1 otherwise.
    """

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# --- where the API is -------------------------------------------------------------------------------------


@dataclass
class _Target:
    http: httpx2.AsyncClient
    where: str  # "http://host:port" or "database <url>"


def _load_config(path: str | None) -> GreenloopConfig:
    from infra.settings import load_config

    return load_config(path)


def _token(env: dict[str, str]) -> str | None:
    for name in TOKEN_ENVS:
        if env.get(name):
            return env[name]
    return None


@asynccontextmanager
async def _api(args: argparse.Namespace, *, err: TextIO) -> AsyncIterator[_Target]:
    env = dict(os.environ)
    explicit = args.url or env.get(URL_ENV)
    config: GreenloopConfig | None = None
    config_error: ConfigError | None = None
    if explicit:
        url = explicit.rstrip("/")
    else:
        try:
            config = _load_config(args.config)
        except ConfigError as exc:
            config_error = exc
        server = config.server if config is not None else None
        host = server.http_host if server is not None else "127.0.0.1"
        port = server.http_port if server is not None else 8080
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # listen-any: dial loopback
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    token = _token(env)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(base_url=url, headers=headers, timeout=_TIMEOUT_S) as http:
        try:
            await http.get("/healthz", timeout=_PROBE_TIMEOUT_S)
        except (httpx2.ConnectError, httpx2.ConnectTimeout) as exc:
            if explicit:
                raise OperatorError(f"no greenloop server answers at {url}: {exc.__class__.__name__}") from None
        else:
            yield _Target(http=http, where=url)
            return
    # No server: the same handlers, in this process, on the configured database.
    if config is None:
        raise config_error or OperatorError("no configuration")
    async with _local_api(config) as target:
        print(f"greenloop: no server at {url}; using the database directly ({target.where})", file=err)
        yield target


@asynccontextmanager
async def _local_api(config: GreenloopConfig) -> AsyncIterator[_Target]:
    from reconciler.api import build_api
    from reconciler.runtime import open_runtime
    from reconciler.store.engine import redact_url

    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        app = build_api(ctx, api_token=None, allow_no_token=True)
        transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 0))
        async with httpx2.AsyncClient(transport=transport, base_url="http://local", timeout=_TIMEOUT_S) as http:
            yield _Target(http=http, where=f"database {redact_url(config.server.database_url)}")


async def _call(target: _Target, method: str, path: str, *, body: dict[str, Any] | None = None, **params: Any) -> Any:
    query = {k: v for k, v in params.items() if v is not None}
    answer = await target.http.request(method, path, params=query, json=body)
    if answer.status_code >= 400:
        try:
            detail = ErrorBody.model_validate_json(answer.content).detail
        except ValidationError:
            detail = f"HTTP {answer.status_code}"
        if answer.status_code == 401:
            detail += f" (set {TOKEN_ENVS[0]} to the server's api_token)"
        raise OperatorError(detail, exit_code=2 if answer.status_code == 404 else 1)
    return answer.json()


# --- output -----------------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Rows under headers, every column as wide as its widest cell (numbers right-aligned)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    numeric = [any(r[i] != "-" for r in cells) and all(_is_number(r[i]) for r in cells) for i in range(len(headers))]

    def line(values: Sequence[str], *, head: bool = False) -> str:
        parts = [
            v.rjust(w) if numeric[i] and not head else v.ljust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers, head=True), *(line(r) for r in cells)])


# Security: reports, tool messages and arguments hold model output and job logs; a terminal must not get
# their control characters (an escape sequence can rewrite the screen or the window title).
_CONTROL: Final = dict.fromkeys(
    [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F, *range(0x80, 0xA0)], "\N{REPLACEMENT CHARACTER}"
)


def printable(text: str) -> str:
    """`text` with every control character but newline and tab replaced by U+FFFD."""
    return text.translate(_CONTROL)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, float):
        return f"{value:.4f}"
    return printable(" ".join(str(value).split()))  # one line per row, whatever the value holds


def _is_number(text: str) -> bool:
    if text == "-":
        return True
    return text.replace(".", "", 1).replace(",", "").replace("$", "").isdigit()


def _tokens(a: AttemptSummary) -> int:
    return a.input_tokens + a.output_tokens + a.cache_tokens


def _print_attempts(attempts: Sequence[AttemptSummary], out: TextIO) -> None:
    if not attempts:
        print("no attempts", file=out)
        return
    rows = [
        (
            a.id,
            a.project,
            a.job,
            a.status.value,
            a.created_at,
            _tokens(a),
            f"${a.cost_usd:.4f}",
            a.pr_url or a.pr_number,
        )
        for a in attempts
    ]
    print(format_table(("ID", "PROJECT", "JOB", "STATUS", "CREATED", "TOKENS", "COST", "PULL REQUEST"), rows), file=out)


def _print_detail(a: AttemptDetail, out: TextIO) -> None:
    facts = [
        ("attempt", a.id),
        ("project", a.project),
        ("job", f"{a.job} (run {a.run_id} at {a.head_sha[:12]})"),
        ("status", a.status.value + (f" ({a.stop_reason})" if a.stop_reason else "")),
        ("started", _cell(a.created_at)),
        ("finished", _cell(a.finished_at)),
        ("branch", a.branch or "-"),
        ("pull request", a.pr_url or (f"#{a.pr_number}" if a.pr_number else "-")),
        ("tokens", f"{a.input_tokens} in, {a.output_tokens} out, {a.cache_tokens} cache, {a.turns} turns"),
        ("cost", f"${a.cost_usd:.4f}"),
    ]
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        print(f"{key.ljust(width)}  {printable(value)}", file=out)
    print("\ntimeline", file=out)
    rows = [(t.at, t.from_status or "created", t.to_status, t.reason) for t in a.transitions]
    print(_indent(format_table(("AT", "FROM", "TO", "REASON"), rows)) if rows else "  none", file=out)
    print(f"\ntool calls ({len(a.tool_calls)})", file=out)
    calls = [
        (c.created_at, c.tool, c.outcome, c.message, c.result_bytes, _short(json.dumps(c.arguments, sort_keys=True)))
        for c in a.tool_calls
    ]
    if calls:
        print(_indent(format_table(("AT", "TOOL", "OUTCOME", "RESULT", "BYTES", "ARGUMENTS"), calls)), file=out)
    else:
        print("  none", file=out)
    print("\nreport", file=out)
    print(_indent(printable(a.report.strip())) if a.report else "  none", file=out)
    print("\n(the transcript is in `greenloop attempts show --json`)", file=out)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _indent(text: str) -> str:
    return "\n".join("  " + line if line else line for line in text.splitlines())


def _print_projects(projects: Sequence[ProjectState], out: TextIO) -> None:
    rows = [
        (
            p.name,
            p.repo,
            "config" if p.paused_by_config else ("operator" if p.paused_by_operator else "no"),
            p.active_attempt_id,
            p.escalation_reset_at,
        )
        for p in projects
    ]
    print(format_table(("NAME", "REPO", "PAUSED", "ACTIVE ATTEMPT", "ESCALATION RESET"), rows), file=out)


# --- the verbs --------------------------------------------------------------------------------------------


async def _attempts(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    async with _api(args, err=err) as target:
        if args.attempts_command == "list":
            raw = await _call(
                target, "GET", "/attempts", project=args.project, status=args.status, limit=args.limit, offset=0
            )
            listing = AttemptList.model_validate(raw)
            if args.json:
                print(listing.model_dump_json(indent=2), file=out)
            else:
                _print_attempts(listing.attempts, out)
        elif args.attempts_command == "show":
            detail = AttemptDetail.model_validate(await _call(target, "GET", f"/attempts/{_segment(args.id)}"))
            if args.json:
                print(detail.model_dump_json(indent=2), file=out)
            else:
                _print_detail(detail, out)
        else:
            body = {"reason": args.reason} if args.reason else None
            raw = await _call(target, "POST", f"/attempts/{_segment(args.id)}/cancel", body=body)
            summary = AttemptSummary.model_validate(raw)
            if args.json:
                print(summary.model_dump_json(indent=2), file=out)
            else:
                print(f"attempt {summary.id} ({summary.project}): {summary.status.value}", file=out)


async def _projects(args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
    async with _api(args, err=err) as target:
        if args.projects_command == "list":
            listing = ProjectList.model_validate(await _call(target, "GET", "/projects"))
            if args.json:
                print(listing.model_dump_json(indent=2), file=out)
            else:
                _print_projects(listing.projects, out)
            return
        body = {"reason": args.reason} if args.reason else None
        raw = await _call(
            target, "POST", f"/projects/{_segment(args.name, slash=True)}/{args.projects_command}", body=body
        )
        state = ProjectState.model_validate(raw)
        if args.json:
            print(state.model_dump_json(indent=2), file=out)
        else:
            _print_projects([state], out)


def _segment(value: str, *, slash: bool = False) -> str:
    from urllib.parse import quote

    return quote(value, safe="/" if slash else "")


def _run(verb: Any, args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        asyncio.run(verb(args, out, err))
    except OperatorError as exc:
        print(f"greenloop: {exc}", file=err)
        return exc.exit_code
    except (httpx2.TimeoutException, httpx2.TransportError) as exc:
        print(f"greenloop: the server did not answer: {exc.__class__.__name__}", file=err)
        return 1
    return 0


def attempts_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`greenloop attempts ...`; returns the exit code (2: no such attempt; 1: the server or the store refused,
    e.g. the attempt already finished)."""
    return _run(_attempts, args, out, err)


def projects_command(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """`greenloop projects ...`; returns the exit code."""
    return _run(_projects, args, out, err)


# --- a manual agent run -----------------------------------------------------------------------------------


async def active_attempt_refusal(config: GreenloopConfig, project: str) -> str | None:
    """Why `greenloop agent run` must not start on `project` (an attempt is already active), or None.

    A manual run is not recorded as an attempt, so it must not race one the reconciler is running. A store
    that does not exist yet holds no attempt; one that cannot be read is reported and does not block.
    """
    from reconciler.errors import StoreError
    from reconciler.store import attempts as attempt_store
    from reconciler.store.engine import make_engine, make_sessionmaker, sqlite_file_missing

    if sqlite_file_missing(config.server.database_url):
        return None
    engine = make_engine(config.server.database_url)
    try:
        async with asyncio.timeout(_TIMEOUT_S):
            active = await attempt_store.active_attempts(make_sessionmaker(engine), project)
    except (StoreError, TimeoutError) as exc:
        print(f"greenloop: could not check the store for an active attempt ({exc}); going on", file=sys.stderr)
        return None
    finally:
        await engine.dispose()
    if not active:
        return None
    a = active[0]
    return (
        f"project {project!r} has an active attempt {a.id} ({a.status}, job {a.job!r}); "
        f"wait for it or cancel it first: greenloop attempts cancel {a.id}"
    )


# --- the parser -------------------------------------------------------------------------------------------


def register(sub: Any) -> None:
    """Add `attempts` and `projects` to the `greenloop` sub-command parsers."""
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=None, help=f"the reconciler's API (default: ${URL_ENV}, else from the config)")
    client.add_argument("--json", action="store_true", help="print the API's JSON")

    p = sub.add_parser("attempts", help="list, show and cancel remediation attempts")
    asub = p.add_subparsers(dest="attempts_command", required=True)
    ls = asub.add_parser("list", help="attempts, newest first", parents=[client])
    ls.add_argument("--project", default=None, help="only this project (name or owner/name)")
    ls.add_argument("--status", default=None, help="only these statuses, comma-separated (e.g. failed,escalated)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    show = asub.add_parser("show", help="one attempt: timeline, tool calls, tokens, cost, PR, report", parents=[client])
    show.add_argument("id")
    cancel = asub.add_parser(
        "cancel", help="cancel an active attempt (its open pull request is closed)", parents=[client]
    )
    cancel.add_argument("id")
    cancel.add_argument("--reason", default=None, help="why (kept in the attempt's timeline)")
    p.set_defaults(func=attempts_command)

    p = sub.add_parser("projects", help="list, pause, resume and reset projects")
    psub = p.add_subparsers(dest="projects_command", required=True)
    psub.add_parser("list", help="every project: paused, active attempt, escalation reset", parents=[client])
    for verb, text in (
        ("pause", "pause a project at run time"),
        ("resume", "undo the run-time pause"),
        ("reset", "reset an escalation: earlier failed attempts stop counting"),
    ):
        action = psub.add_parser(verb, help=text, parents=[client])
        action.add_argument("name", help="project name or owner/name")
        action.add_argument("--reason", default=None, help="why (kept in the logs)")
    p.set_defaults(func=projects_command)
