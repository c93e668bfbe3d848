"""Helpers for the reconciler's end-to-end tests: the local forge, a config for it, passes until settled.

Every end-to-end test runs the real reconciler against the local forge (fixtures/forge) over loopback,
a real store (SQLite file, or a throwaway PostgreSQL database) and, where an agent runs, the scripted model
replaying `fixtures/scripts/<project>.json` (or a test's own scripts directory).

The config mirrors `fixtures.demo`: one `ProjectConfig` per fixture project with its autonomy, jobs and
flaky jobs; the forge's App gets `actions: write` so the reconciler can re-run a flaky job.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from fixtures.forge import Forge, run_forge
from fixtures.forge.state import Pull, Run
from fixtures.projects.catalog import FixtureProject, load_project
from mcp_server.scopes import APP_PERMISSIONS as SCOPES_APP_PERMISSIONS
from policy.branches import fix_branch_name
from policy.config import AgentSettings, GreenloopConfig, ProjectConfig, ServerSettings
from policy.gate import failure_fingerprint
from policy.types import AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.runner import reconcile
from reconciler.store import attempts as store
from reconciler.store.engine import SessionFactory, make_engine
from reconciler.store.models import Attempt, ReconcilePass, Transition
from reconciler.store.projects import sync_projects
from reconciler.summary import RunSummary

__all__ = [
    "APP_PERMISSIONS",
    "POSTGRES_ENV",
    "SCRIPTS_DIR",
    "GitPusher",
    "attempts_of",
    "e2e_config",
    "failing_job_runs",
    "forge_for",
    "insert_running_attempt",
    "is_quiet",
    "pass_rows",
    "postgres_database",
    "project_config",
    "pulls_of",
    "pulls_on_branch",
    "set_heartbeat",
    "settle",
    "sqlite_url",
    "transitions_of",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = REPO_ROOT / "fixtures" / "scripts"
POSTGRES_ENV = "GREENLOOP_TEST_POSTGRES_URL"

# The App's grant on the forge: what the demo uses (actions: write lets the reconciler re-run a flaky job).
APP_PERMISSIONS: Mapping[str, str] = dict(SCOPES_APP_PERMISSIONS)


def project_config(fixture: FixtureProject, **overrides: Any) -> ProjectConfig:
    """The `ProjectConfig` the demo builds for a fixture project."""
    return fixture.project_config(**overrides)


def sqlite_url(path: Path) -> str:
    """The async SQLAlchemy URL of a SQLite file."""
    return f"sqlite+aiosqlite:///{path}"


def e2e_config(
    forge: Forge,
    names: Sequence[str],
    *,
    database_url: str,
    workspace_dir: Path,
    server: Mapping[str, Any] | None = None,
    projects: Mapping[str, Mapping[str, Any]] | None = None,
) -> GreenloopConfig:
    """A config watching the fixture projects `names` on `forge`.

    `server` overrides `ServerSettings` fields; `projects` overrides `ProjectConfig` fields per project name.
    """
    per_project = projects or {}
    return GreenloopConfig(
        server=ServerSettings(
            **{"database_url": database_url, "workspace_dir": str(workspace_dir), "concurrency": 4, **(server or {})}
        ),
        forge=forge.forge_settings(),
        agent=AgentSettings(),
        projects=tuple(project_config(load_project(n), **per_project.get(n, {})) for n in names),
    )


@contextlib.asynccontextmanager
async def forge_for(state_dir: Path, names: Iterable[str]) -> AsyncIterator[Forge]:
    """A forge serving the fixture projects `names`, their base and break runs finished."""
    async with run_forge(state_dir, projects=list(names), app_permissions=APP_PERMISSIONS) as forge:
        await forge.wait_idle(60)
        yield forge


@contextlib.asynccontextmanager
async def postgres_database(admin_url: str) -> AsyncIterator[str]:
    """A throwaway PostgreSQL database `greenloop_e2e_<random>` (created via `admin_url`'s database, dropped after)."""
    name = f"greenloop_e2e_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        engine = make_engine(admin_url)
        try:
            async with engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.execute(sa.text(statement))
        finally:
            await engine.dispose()

    await admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# Passes -----------------------------------------------------------------------------------------------


def is_quiet(summary: RunSummary) -> bool:
    """Whether a pass changed nothing: no attempt started, no transition, no re-run, no error."""
    return not (summary.attempts_started or summary.transitions or summary.reruns or summary.errors)


async def settle(
    ctx: ReconcilerContext,
    forge: Forge,
    *,
    repos: Sequence[str] | None = None,
    deadline_seconds: float = 60.0,
) -> list[RunSummary]:
    """Run passes until one changes nothing while no agent and no forge job is busy; returns every summary.

    Such a pass is a fixed point: nothing is running that could change what the next pass sees.

    Raises:
        TimeoutError: no quiet pass before the deadline.
    """
    summaries: list[RunSummary] = []
    loop = asyncio.get_running_loop()
    ends = loop.time() + deadline_seconds
    while loop.time() < ends:
        if ctx.dispatcher is not None:
            await ctx.dispatcher.wait_idle(max(1.0, ends - loop.time()))
        await forge.wait_idle(max(1.0, ends - loop.time()))
        summary = await reconcile(ctx, repos=repos, trigger="demo")
        summaries.append(summary)
        if is_quiet(summary):
            return summaries
        await asyncio.sleep(0.1)
    raise TimeoutError(f"no quiet pass within {deadline_seconds}s: {[s.model_dump() for s in summaries[-2:]]!r}")


# The store ----------------------------------------------------------------------------------------------


async def attempts_of(sessions: SessionFactory, project: str | None = None) -> list[Attempt]:
    """Every attempt row (of `project`), oldest first."""
    query = sa.select(Attempt).order_by(Attempt.created_at, Attempt.id)
    if project is not None:
        query = query.where(Attempt.project == project)
    async with sessions() as session:
        return list((await session.scalars(query)).all())


async def transitions_of(sessions: SessionFactory, attempt_id: str) -> list[tuple[str | None, str, str | None]]:
    """An attempt's transitions as (from, to, reason), in order."""
    async with sessions() as session:
        rows = await session.scalars(
            sa.select(Transition).where(Transition.attempt_id == attempt_id).order_by(Transition.id)
        )
        return [(t.from_status, t.to_status, t.reason) for t in rows.all()]


async def pass_rows(sessions: SessionFactory) -> int:
    """How many pass summaries the store holds."""
    async with sessions() as session:
        return int(await session.scalar(sa.select(sa.func.count()).select_from(ReconcilePass)) or 0)


async def insert_running_attempt(
    sessions: SessionFactory,
    *,
    project: str,
    job: str,
    run_id: str,
    head_sha: str,
    heartbeat_at: datetime,
) -> Attempt:
    """An attempt a worker marked `running` (on its fix branch, as the dispatcher does), last beat at `heartbeat_at`."""
    await sync_projects(sessions, {project: f"acme/{project}"})  # as the first pass would have
    outcome = await store.start_attempt(
        sessions,
        project=project,
        job=job,
        fingerprint=failure_fingerprint(project, job, head_sha),
        run_id=run_id,
        head_sha=head_sha,
    )
    if not outcome.started or outcome.attempt_id is None:
        raise RuntimeError(f"could not insert the attempt: {outcome!r}")
    attempt_id = outcome.attempt_id
    moved = await store.transition(
        sessions,
        attempt_id,
        AttemptStatus.RUNNING,
        reason="agent_started",
        expected=AttemptStatus.PENDING,
        branch=fix_branch_name(job, attempt_id),
    )
    if not moved:
        raise RuntimeError(f"could not mark attempt {attempt_id!r} running")
    return await set_heartbeat(sessions, attempt_id, heartbeat_at)


async def set_heartbeat(sessions: SessionFactory, attempt_id: str, at: datetime) -> Attempt:
    """Pretend the attempt's worker last beat (and last updated it) at `at`; returns the attempt."""
    async with sessions() as session, session.begin():
        await session.execute(sa.update(Attempt).where(Attempt.id == attempt_id).values(heartbeat_at=at, updated_at=at))
    attempt = await store.get_attempt(sessions, attempt_id)
    if attempt is None:
        raise RuntimeError(f"attempt {attempt_id!r} vanished")
    return attempt


# The forge -------------------------------------------------------------------------------------------------


def _repo(forge: Forge, full_name: str) -> Any:
    owner, name = full_name.split("/", 1)
    repo = forge.state.repo(owner, name)
    if repo is None:
        raise KeyError(full_name)
    return repo


def pulls_of(forge: Forge, full_name: str) -> list[Pull]:
    """Every pull request of a repository, by number."""
    return sorted(_repo(forge, full_name).pulls.values(), key=lambda p: p.number)


def pulls_on_branch(forge: Forge, full_name: str, branch: str) -> list[Pull]:
    """The pull requests whose head is `branch`."""
    return [p for p in pulls_of(forge, full_name) if p.head_ref == branch]


def failing_job_runs(forge: Forge, full_name: str, job: str, *, branch: str = "main") -> list[Run]:
    """Completed runs on `branch` whose (latest attempt of) job `job` did not succeed, oldest first."""
    repo = _repo(forge, full_name)
    out = []
    for run in sorted(forge.state.runs.values(), key=lambda r: r.id):
        if run.repo is not repo or run.head_branch != branch or run.status != "completed":
            continue
        if any(j.name == job and j.conclusion not in ("success", "skipped") for j in run.jobs):
            out.append(run)
    return out


@dataclass
class GitPusher:
    """Pushes commits to the forge over git smart HTTP, as the holder of `token` (e.g. the human admin)."""

    forge: Forge
    token: str
    workdir: Path

    async def _git(self, *args: str, cwd: Path | None = None) -> str:
        raw = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        home = self.workdir / "git-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
        proc = await asyncio.create_subprocess_exec(
            "git",
            "-c",
            "user.name=Ana Lima",
            "-c",
            "user.email=ana@acme.test",
            "-c",
            f"http.extraHeader=Authorization: Basic {raw}",
            *args,
            cwd=cwd,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        if proc.returncode != 0:
            raise RuntimeError(f"git {' '.join(args[:2])} failed: {err.decode(errors='replace')}")
        return out.decode()

    async def push(
        self, full_name: str, files: Mapping[str, str], message: str, *, branch: str = "main", base: str = "main"
    ) -> str:
        """Commit `files` (path -> text) on top of `base` and push it to `branch`; returns the new commit's sha."""
        clone = self.workdir / f"clone-{uuid.uuid4().hex[:8]}"
        await self._git("clone", "-q", "--branch", base, f"{self.forge.git_url}/{full_name}.git", str(clone))
        try:
            for rel, text in files.items():
                path = clone / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
            await self._git("add", "--all", cwd=clone)
            await self._git("commit", "-q", "-m", message, cwd=clone)
            sha = (await self._git("rev-parse", "HEAD", cwd=clone)).strip()
            await self._git("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=clone)
            return sha
        finally:
            shutil.rmtree(clone, ignore_errors=True)

    async def open_pull(self, full_name: str, *, head: str, base: str = "main", title: str = "Fix") -> int:
        """Open a pull request from `head` into `base` over the REST API; returns its number."""
        async with httpx2.AsyncClient(base_url=self.forge.api_url, timeout=30) as http:
            response = await http.post(
                f"/repos/{full_name}/pulls",
                headers={"Authorization": f"token {self.token}", "Accept": "application/vnd.github+json"},
                json={"head": head, "base": base, "title": title, "body": "Opened before the worker died."},
            )
        if response.status_code != 201:
            raise RuntimeError(f"could not open the pull request: {response.status_code} {response.text}")
        return int(response.json()["number"])

    async def merge_pull(self, full_name: str, number: int) -> str:
        """Merge a pull request over the REST API (as the holder of `token`); returns the merge commit's sha."""
        async with httpx2.AsyncClient(base_url=self.forge.api_url, timeout=30) as http:
            response = await http.put(
                f"/repos/{full_name}/pulls/{number}/merge",
                headers={"Authorization": f"token {self.token}", "Accept": "application/vnd.github+json"},
                json={"merge_method": "merge"},
            )
        if response.status_code != 200:
            raise RuntimeError(f"could not merge the pull request: {response.status_code} {response.text}")
        return str(response.json()["sha"])
