"""`greenloop demo`: the whole loop on the local forge and the fixture projects, in one command.

It starts the local GitHub-compatible forge (fixtures/forge) with the broken fixture projects, a fresh
SQLite store in a temporary directory, the MCP server in-process, and the reconciler; lets the fixture jobs
run; then runs reconcile passes until every project has settled in its expected state (or the deadline
passes), showing progress as it goes, and ends with a timeline and a summary table.

This is the one product module that imports `fixtures`: the demo *is* the fixture-driven showcase.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import sqlalchemy as sa

from policy.config import AgentSettings, GreenloopConfig, ServerSettings
from policy.types import AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.reconcile import reconcile
from reconciler.runtime import backend_from_env, open_runtime, scripted_backends
from reconciler.store.models import Attempt, McpToolCall

__all__ = ["DemoResult", "ProjectResult", "run_demo"]

_REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = _REPO_ROOT / "fixtures" / "scripts"


@dataclass
class ProjectResult:
    """Where one fixture project ended, against where it should end."""

    name: str
    repo: str
    autonomy: str
    expected: str
    failure: str
    state: str = "unknown"
    job_state: str = "unknown"
    attempt_id: str | None = None
    attempt_status: str | None = None
    decision: str = ""
    reason: str | None = None
    pr_url: str | None = None
    input_tokens: int = 0  # not read from or written to the prompt cache
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    seconds_to_green: float | None = None
    report: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the project reached its expected end state."""
        return self.state == self.expected


@dataclass
class DemoResult:
    """The demo's outcome: per project, the timeline, and how long it took."""

    model: str
    projects: list[ProjectResult]
    timeline: list[tuple[float, str, str]] = field(default_factory=list)
    seconds: float = 0.0
    forge_job_seconds: float = 0.0
    passes: int = 0
    settled: bool = False
    # Every MCP tool call the agents made: (project, tool, outcome, duration_ms), in order.
    tool_calls: list[tuple[str, str, str, float]] = field(default_factory=list)
    kept_dir: str | None = None  # --keep: where the forge, store and workspaces were left

    @property
    def cost_is_estimate(self) -> bool:
        """A scripted model bills nothing: its cost is its token counts priced at list prices."""
        return not self.model.startswith("real model")

    @property
    def ok(self) -> bool:
        """Whether every project ended in its expected state."""
        return self.settled and all(p.ok for p in self.projects)

    def to_json(self) -> dict[str, Any]:
        """The summary as plain JSON."""
        return {
            "ok": self.ok,
            "model": self.model,
            "settled": self.settled,
            "seconds": round(self.seconds, 2),
            "forge_job_seconds": round(self.forge_job_seconds, 2),
            "passes": self.passes,
            "cost_is_estimate": self.cost_is_estimate,
            "kept_dir": self.kept_dir,
            "projects": [
                {
                    "name": p.name,
                    "repo": p.repo,
                    "autonomy": p.autonomy,
                    "expected": p.expected,
                    "state": p.state,
                    "ok": p.ok,
                    "job_state": p.job_state,
                    "decision": p.decision,
                    "reason": p.reason,
                    "attempt_id": p.attempt_id,
                    "attempt_status": p.attempt_status,
                    "pr_url": p.pr_url,
                    "input_tokens": p.input_tokens,
                    "output_tokens": p.output_tokens,
                    "cache_write_tokens": p.cache_write_tokens,
                    "cache_read_tokens": p.cache_read_tokens,
                    "cost_usd": round(p.cost_usd, 6),
                    "seconds_to_green": None if p.seconds_to_green is None else round(p.seconds_to_green, 2),
                    "report": p.report,
                }
                for p in self.projects
            ],
            "timeline": [{"t": round(t, 2), "project": proj, "event": ev} for t, proj, ev in self.timeline],
        }


class _Progress:
    """One line per project; redrawn in place on a terminal, printed on change otherwise."""

    def __init__(self, out: TextIO, *, enabled: bool) -> None:
        self._out = out
        self._enabled = enabled
        self._tty = out.isatty()
        self._last: dict[str, str] = {}
        self._drawn = 0

    def show(self, t: float, lines: dict[str, str]) -> None:
        if not self._enabled:
            return
        if self._tty:
            if self._drawn:
                self._out.write(f"\x1b[{self._drawn}F")
            for line in lines.values():
                self._out.write(f"\x1b[2K  {line}\n")
            self._drawn = len(lines)
        else:
            for name, line in lines.items():
                if self._last.get(name) != line:
                    self._out.write(f"  [{t:5.1f}s] {line}\n")
        self._last = dict(lines)
        self._out.flush()


def _load_fixtures() -> list[Any]:
    from fixtures.projects.catalog import list_projects

    return list_projects()


def _classify(job_green: bool | None, attempt: Attempt | None, reran: bool) -> str:
    """The end state a project is in now, in the fixtures' `expected` vocabulary."""
    if attempt is None:
        if job_green and reran:
            return "rerun_green"
        if job_green:
            return "untouched"
        return "red"
    status = AttemptStatus(attempt.status)
    if status is AttemptStatus.SUCCEEDED and job_green:
        return "fixed_merged"
    if status is AttemptStatus.PR_OPEN and not _merged(attempt):
        return "fixed_pr_open"
    if status is AttemptStatus.ESCALATED:
        return "escalated"
    return f"attempt_{status.value}"


def _merged(attempt: Attempt) -> bool:
    return attempt.merged_sha is not None


async def run_demo(
    *,
    out: TextIO = sys.stdout,
    progress: bool = True,
    deadline_seconds: float = 120.0,
    keep_dir: bool = False,
    projects: list[str] | None = None,
) -> DemoResult:
    """Run the demo and return its result (the CLI prints it)."""
    from fixtures.forge import run_forge

    api_key = os.environ.get("ANTHROPIC_API_KEY", "")
    agent_settings = AgentSettings(base_url=os.environ.get("ANTHROPIC_BASE_URL") or None)
    model = f"real model {agent_settings.model}" if api_key else "scripted model"
    say = out.write
    if api_key:
        say(f"greenloop demo: using the real model ({agent_settings.model}) because ANTHROPIC_API_KEY is set\n")
    else:
        say("greenloop demo: using the scripted model (no ANTHROPIC_API_KEY): replaying fixtures/scripts/*.json\n")
    fixtures = [f for f in _load_fixtures() if projects is None or f.name in projects]
    work = Path(tempfile.mkdtemp(prefix="greenloop-demo-"))
    t0 = time.perf_counter()
    result = DemoResult(
        model=model,
        projects=[
            ProjectResult(
                name=f.name,
                repo=f.repo,
                autonomy=f.autonomy,
                expected=f.expected,
                failure=_first_clause(f.failure),
            )
            for f in fixtures
        ],
    )
    by_name = {p.name: p for p in result.projects}

    def event(project: str, text: str) -> None:
        result.timeline.append((time.perf_counter() - t0, project, text))

    try:
        say(f"  starting the local forge with {len(fixtures)} fixture projects (state in {work})\n")
        async with run_forge(
            work / "forge",
            projects=[f.name for f in fixtures],
            app_permissions={"contents": "write", "pull_requests": "write", "actions": "write", "metadata": "read"},
        ) as forge:
            jobs_started = time.perf_counter()
            await forge.wait_idle(60)
            result.forge_job_seconds = time.perf_counter() - jobs_started
            event("*", f"fixture jobs ran ({result.forge_job_seconds:.1f}s)")
            db_url = f"sqlite+aiosqlite:///{work / 'greenloop.db'}"
            config = GreenloopConfig(
                server=ServerSettings(database_url=db_url, workspace_dir=str(work / "workspaces"), concurrency=4),
                forge=forge.forge_settings(),
                agent=agent_settings,
                projects=tuple(f.project_config() for f in fixtures),
            )
            if api_key:
                backend_for, secrets = backend_from_env(config)
            else:
                backend_for, secrets = scripted_backends(str(SCRIPTS_DIR)), ()
            async with open_runtime(config, backend_for=backend_for, secrets=secrets, heartbeat_seconds=2.0) as ctx:
                dispatcher = ctx.dispatcher
                if dispatcher is None:
                    raise RuntimeError("the demo needs a dispatcher")
                view = _Progress(out, enabled=progress)
                reran: set[str] = set()
                green_at: dict[str, float] = {}
                loop_started = time.perf_counter()
                try:
                    while True:
                        summary = await reconcile(ctx, trigger="demo")
                        result.passes += 1
                        now = time.perf_counter() - t0
                        for red in summary.red:
                            p = by_name[red.project]
                            if not p.decision:
                                p.decision, p.reason = red.decision, red.reason
                                event(
                                    red.project,
                                    f"{red.job} red on {red.head_sha[:7]}: {red.decision}"
                                    + (f" ({red.reason})" if red.reason else ""),
                                )
                        for r in summary.reruns:
                            reran.add(r.project)
                        for s in summary.attempts_started:
                            event(s.project, f"attempt {s.attempt_id} started")
                        for tr in summary.transitions:
                            event(
                                tr.project,
                                f"attempt {tr.attempt_id}: {tr.from_status} -> {tr.to_status}"
                                + (f" ({tr.reason})" if tr.reason else ""),
                            )
                        for name, err in summary.errors.items():
                            event(name, f"error: {err}")
                        settled = await _refresh(ctx, result, reran, green_at, now, event)
                        view.show(now, {p.name: _line(p) for p in result.projects})
                        if settled:
                            result.settled = True
                            break
                        if time.perf_counter() - loop_started > deadline_seconds:
                            event("*", "deadline passed before every project settled")
                            break
                        await dispatcher.wait_idle(5)
                        await forge.wait_idle(30)
                        await asyncio.sleep(0.2)
                finally:
                    await dispatcher.wait_idle(5)
                    result.tool_calls = await _tool_calls(ctx)
    finally:
        result.seconds = time.perf_counter() - t0
        if keep_dir:
            result.kept_dir = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


def _first_clause(failure: str, width: int = 90) -> str:
    """The failure's first clause, shortened at a word boundary (never mid-word)."""
    return textwrap.shorten(failure.split(";")[0].split(". ")[0], width=width, placeholder=" …")


async def _tool_calls(ctx: ReconcilerContext) -> list[tuple[str, str, str, float]]:
    query = sa.select(McpToolCall.project, McpToolCall.tool, McpToolCall.outcome, McpToolCall.duration_ms)
    async with ctx.sessions() as session:
        rows = await session.execute(query.order_by(McpToolCall.id))
        return [(row[0], row[1], row[2], float(row[3])) for row in rows]


def _line(p: ProjectResult) -> str:
    pr = p.pr_url or "-"
    attempt = f"{p.attempt_status} ({p.attempt_id})" if p.attempt_id else "no attempt"
    mark = "ok " if p.ok else "..."
    return f"{mark} {p.name:<20} job {p.job_state:<8} {attempt:<30} PR {pr}"


async def _refresh(
    ctx: ReconcilerContext,
    result: DemoResult,
    reran: set[str],
    green_at: dict[str, float],
    now: float,
    event: Callable[[str, str], None],
) -> bool:
    """Update every project's result from the store and the last observation; True when all settled."""
    from agent.transcript import usage_in
    from reconciler.observe import ProjectObservation

    async with ctx.sessions() as session:
        rows = list((await session.scalars(sa.select(Attempt).order_by(Attempt.created_at))).all())
    latest: dict[str, Attempt] = {}
    for row in rows:
        latest[row.project] = row
    for p in result.projects:
        obs = ctx.observations.get(p.name)
        job_green: bool | None = None
        if isinstance(obs, ProjectObservation) and obs.latest:
            pending = bool(obs.in_progress)
            job_green = all(r.green for r in obs.latest.values()) and not pending
            p.job_state = "running" if pending else ("green" if job_green else "red")
        if job_green and p.name not in green_at:
            green_at[p.name] = now
            if p.decision:
                p.seconds_to_green = now
                event(p.name, "job green")
        a = latest.get(p.name)
        if a is not None:
            p.attempt_id, p.attempt_status = a.id, a.status
            p.pr_url = a.pr_url
            p.input_tokens, p.output_tokens, p.cost_usd = a.input_tokens, a.output_tokens, a.cost_usd
            usage = usage_in(a.transcript or "[]")
            p.cache_write_tokens, p.cache_read_tokens = usage.cache_creation_input_tokens, usage.cache_read_input_tokens
            p.report = a.report
            if a.stop_reason and a.status in ("escalated", "failed"):
                p.reason = a.stop_reason
        if not p.decision and job_green:
            p.decision = "none"
        p.state = _classify(job_green, a, p.name in reran)
    return all(p.ok for p in result.projects)


def render_result(result: DemoResult, out: TextIO) -> None:
    """Print the timeline and the summary table."""
    say = out.write
    say("\nTimeline\n")
    for t, project, text in result.timeline:
        say(f"  {t:6.2f}s  {project:<20} {text}\n")
    say("\nSummary\n\n")
    cost = "cost (estimated)" if result.cost_is_estimate else "cost"
    head = (
        "project",
        "autonomy",
        "failure",
        "decision",
        "end state",
        "expected",
        "PR",
        "tokens in/out",
        cost,
        "to green",
    )
    say("| " + " | ".join(head) + " |\n")
    say("|---|---|---|---|---|---|---|---|---|---|\n")
    for p in result.projects:
        decision = p.decision + (f" ({p.reason})" if p.reason else "")
        green = f"{p.seconds_to_green:.1f}s" if p.seconds_to_green is not None else "-"
        say(
            f"| {p.name} | {p.autonomy} | {p.failure if p.decision not in ('', 'none') else '-'} | {decision or '-'} "
            f"| {'✔ ' if p.ok else '✘ '}{p.state} | {p.expected} | {p.pr_url or '-'} "
            f"| {p.input_tokens + p.cache_write_tokens + p.cache_read_tokens}/{p.output_tokens} "
            f"| ${p.cost_usd:.4f} | {green} |\n"
        )
    if result.cost_is_estimate:
        say("\nCost: the scripted model's token counts, estimated at list prices; nothing was billed.\n")
    for p in result.projects:
        if p.state == "escalated" and p.report:
            say(f"\nEscalation report for {p.name}:\n\n{p.report}\n")
    verdict = (
        "every project reached its expected state" if result.ok else "some projects did NOT reach their expected state"
    )
    say(
        f"\n{verdict}: {sum(p.ok for p in result.projects)}/{len(result.projects)} in {result.seconds:.1f}s "
        f"({result.passes} passes; fixture jobs {result.forge_job_seconds:.1f}s; model: {result.model})\n"
    )
    if result.kept_dir is not None:
        say(f"kept: {result.kept_dir} (forge, store and workspaces)\n")


def demo_command(*, as_json: bool, deadline_seconds: float, keep_dir: bool) -> int:
    """`greenloop demo`: exit 0 only if every project ended in its expected state."""
    out = sys.stderr if as_json else sys.stdout
    result = asyncio.run(run_demo(out=out, progress=True, deadline_seconds=deadline_seconds, keep_dir=keep_dir))
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        if result.kept_dir is not None:
            print(f"greenloop demo: kept {result.kept_dir}", file=sys.stderr)
    else:
        render_result(result, sys.stdout)
    return 0 if result.ok else 1
