"""What each operators' page shows, read from the store: projects, attempts, one attempt, spend.

Pure assembly: the queries are in `reconciler.store` (`views` for the ones only these pages need), the
markup in `templates/`. Nothing here writes; the pages are read-only (actions go through the API or the CLI).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from policy.config import ProjectConfig
from policy.gate import FAILING_CONCLUSIONS
from policy.types import TERMINAL_STATUSES, AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.store import attempts as attempt_store
from reconciler.store import projects as project_store
from reconciler.store import views
from reconciler.store.audit import tool_calls
from reconciler.store.models import Attempt, JobRun, McpToolCall, Transition, utcnow
from reconciler.store.state import kill_switch_enabled

__all__ = [
    "AttemptPage",
    "ProjectRow",
    "TranscriptRow",
    "attempt_page",
    "is_stale",
    "project_rows",
    "transcript_rows",
]


@dataclass(frozen=True)
class ProjectRow:
    """One line of the projects page."""

    name: str
    repo: str
    autonomy: str
    state: str  # red | green | running | unknown
    paused: str | None  # why it is paused ("config", "operator"), or None
    last_run: JobRun | None
    active: Attempt | None
    stale: bool
    escalated: Attempt | None
    red_jobs: list[str] = field(default_factory=list)


def is_stale(attempt: Attempt, timeout_seconds: float, now: datetime) -> bool:
    """An active attempt with no sign of life for longer than the attempt timeout (its worker likely died)."""
    if AttemptStatus(attempt.status) in TERMINAL_STATUSES:
        return False
    last = attempt.heartbeat_at or attempt.updated_at or attempt.created_at
    return last < now - timedelta(seconds=timeout_seconds)


def _state(runs: Sequence[JobRun]) -> str:
    if not runs:
        return "unknown"
    if any(r.conclusion in FAILING_CONCLUSIONS for r in runs):
        return "red"
    if any(r.status != "completed" for r in runs):
        return "running"
    return "green" if all(r.conclusion in ("success", "skipped", "neutral") for r in runs) else "unknown"


async def project_rows(ctx: ReconcilerContext) -> tuple[list[ProjectRow], bool]:
    """Every configured project's line, and whether the kill switch is on (runtime or config)."""
    stored = {p.name: p for p in await project_store.list_projects(ctx.sessions)}
    runs = await views.latest_job_runs(ctx.sessions)
    latest = await views.latest_attempts(ctx.sessions)
    active = {a.project: a for a in await attempt_store.active_attempts(ctx.sessions)}
    now = utcnow()
    rows = []
    for p in ctx.config.projects:
        row = stored.get(p.name)
        mine = sorted(
            (r for (name, job), r in runs.items() if name == p.name and p.watches(job)),
            key=lambda r: r.created_at,
            reverse=True,
        )
        attempt = active.get(p.name)
        last = latest.get(p.name)
        reset_at = row.escalation_reset_at if row is not None else None
        escalated = (
            last
            if last is not None
            and last.status == AttemptStatus.ESCALATED.value
            and (reset_at is None or (last.finished_at or last.updated_at) > reset_at)
            else None
        )
        rows.append(
            ProjectRow(
                name=p.name,
                repo=p.repo,
                autonomy=p.autonomy.value,
                state=_state(mine),
                paused=_paused(p, row.paused if row is not None else False),
                last_run=mine[0] if mine else None,
                active=attempt,
                stale=attempt is not None and is_stale(attempt, ctx.config.server.attempt_timeout_seconds, now),
                escalated=escalated,
                red_jobs=sorted(r.job for r in mine if r.conclusion in FAILING_CONCLUSIONS),
            )
        )
    kill = ctx.config.server.kill_switch or await kill_switch_enabled(ctx.sessions)
    return rows, kill


def _paused(project: ProjectConfig, by_operator: bool) -> str | None:
    if project.paused:
        return "config"
    return "operator" if by_operator else None


@dataclass(frozen=True)
class TranscriptRow:
    """One transcript event as shown: a headline and a body (plain text, escaped when rendered)."""

    seq: int
    t: float | None
    kind: str
    title: str
    body: str


def _pretty(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _response_text(content: Any) -> str:
    parts = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif block.get("type") == "tool_use":
            parts.append(f"→ {block.get('name')}({_pretty(block.get('input'))})")
    return "\n\n".join(parts)


def transcript_rows(transcript: Any) -> list[TranscriptRow]:
    """The stored transcript (a JSON event list, see `agent.transcript`) as rows; anything else as one row."""
    if transcript is None:
        return []
    if not isinstance(transcript, list):
        return [TranscriptRow(seq=0, t=None, kind="raw", title="transcript", body=_pretty(transcript))]
    rows = []
    for i, event in enumerate(transcript):
        if not isinstance(event, dict):
            rows.append(TranscriptRow(seq=i, t=None, kind="raw", title="event", body=_pretty(event)))
            continue
        kind = str(event.get("kind", "event"))
        turn = event.get("turn")
        if kind == "setup":
            title, body = f"setup: model {event.get('model')}", _pretty(event.get("task"))
        elif kind == "request":
            title = f"turn {turn}: request ({event.get('message_count')} messages)"
            body = _pretty(event.get("new_messages"))
        elif kind == "response":
            title = f"turn {turn}: model answered (stop: {event.get('stop_reason')})"
            body = _response_text(event.get("content"))
        elif kind == "tool_call":
            title, body = f"turn {turn}: tool call {event.get('name')}", _pretty(event.get("input"))
        elif kind == "tool_result":
            error = " (error)" if event.get("is_error") else ""
            title, body = f"turn {turn}: result of {event.get('name')}{error}", _pretty(event.get("text"))
        elif kind == "note":
            title, body = f"turn {turn}: note", _pretty(event.get("message"))
        elif kind == "stop":
            title, body = f"stop: {event.get('reason')}", _pretty(event.get("detail"))
        else:
            title, body = kind, _pretty(event)
        t = event.get("t")
        rows.append(
            TranscriptRow(
                seq=int(event.get("seq", i)),
                t=float(t) if isinstance(t, int | float) else None,
                kind=kind,
                title=title,
                body=body,
            )
        )
    return rows


@dataclass(frozen=True)
class ToolCallRow:
    """One audited MCP tool call with its arguments pretty-printed."""

    call: McpToolCall
    arguments: str


@dataclass(frozen=True)
class AttemptPage:
    """Everything the attempt page shows."""

    attempt: Attempt
    stale: bool
    transitions: list[Transition]
    tool_calls: list[ToolCallRow]
    files_written: list[str]
    transcript: list[TranscriptRow]


async def attempt_page(ctx: ReconcilerContext, attempt: Attempt) -> AttemptPage:
    """The attempt page's content for `attempt`."""
    transitions = await attempt_store.attempt_transitions(ctx.sessions, attempt.id)
    calls = await tool_calls(ctx.sessions, attempt_id=attempt.id)
    rows = []
    written: list[str] = []
    for c in calls:
        arguments = views.stored_json(c.arguments)
        rows.append(ToolCallRow(call=c, arguments=_pretty(arguments)))
        if c.tool == "write_repo_file" and c.outcome == "ok" and isinstance(arguments, dict):
            path = arguments.get("path")
            if isinstance(path, str) and path not in written:
                written.append(path)
    return AttemptPage(
        attempt=attempt,
        stale=is_stale(attempt, ctx.config.server.attempt_timeout_seconds, utcnow()),
        transitions=transitions,
        tool_calls=rows,
        files_written=written,
        transcript=transcript_rows(views.stored_json(attempt.transcript)),
    )
