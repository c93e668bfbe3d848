"""Soak: hundreds of projects flipping red and green at random, under fault injection, for a bounded time.

    python -m bench.soak --seconds 600 [--projects 300] [--seed 7] [--no-real]

Most projects are synthetic: their runs are reported through the reconciler's HTTP API (`POST /runs`, the
app `reconciler.api.build_api` builds, over httpx2's ASGI transport) and a simulated agent moves their
attempts through the store (running -> pr_open -> verifying, then the fix's run is reported green), or gives
up, or dies without a word. A handful of real fixture projects run on the local forge with the scripted model
and the real dispatcher, while the forge answers 500s and 429s part of the time.

Faults injected: forge 500/429 answers, duplicate deliveries of a reported run, malformed API bodies,
two passes racing over the same projects, simulated agents that die mid-attempt. Every reported failure log
carries fake secrets (a `ghs_` installation token, an AWS key id); at the end every row of every table and
every JSON log line emitted during the soak is scanned for them.

At the end (faults off, passes until settled) it checks: no failure got two attempts (duplicates), every
attempt is terminal or legitimately active and every project still red has its failure's attempt unless the
gate recorded a legitimate reason not to start one (lost), no secret anywhere (leaked_secrets); memory is
sampled every pass (tracemalloc and RSS) and the first third is compared with the last. The counts line is
printed exactly as `soak: passes=N faults=N attempts=N duplicates=0 lost=0 leaked_secrets=0`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import os
import random
import re
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import httpx2
import sqlalchemy as sa

from bench import bench_line
from infra.jsonlog import JsonFormatter
from mcp_server.scopes import APP_PERMISSIONS
from policy.config import Backoff, GreenloopConfig, ProjectConfig, ServerSettings
from policy.gate import failure_fingerprint
from policy.types import ACTIVE_STATUSES, TERMINAL_STATUSES, AttemptStatus, Autonomy
from reconciler.api import build_api
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.runner import reconcile
from reconciler.store import attempts as store
from reconciler.store.engine import SessionFactory, make_engine, make_sessionmaker
from reconciler.store.migrate import upgrade_async
from reconciler.store.models import Attempt, Base
from reconciler.summary import RunSummary

__all__ = ["SoakResult", "main", "render", "run", "section"]

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = ROOT / "fixtures" / "scripts"
TOKEN: Final = "soak-api-token-0123456789abcdef"
JOB: Final = "nightly"
REAL_PROJECTS: Final = ("bug-lib", "stale-import")
# Any installation-token-shaped string anywhere is a leak (ours and the forge's alike).
TOKEN_RE: Final = re.compile(r"gh[pousr]_[A-Za-z0-9]{36}")
# Reasons the gate may legitimately decline a failure that is still red at the end.
LEGIT_SKIPS: Final = frozenset({"escalated", "backoff", "paused", "kill_switch", "own_change", "observe_only"})

logger = logging.getLogger("greenloop.bench.soak")
_PROGRESS_EVERY_S: Final = 5.0


@dataclass
class SoakResult:
    """What one soak run did and found."""

    seconds: float
    projects: int
    real_projects: int
    passes: int
    faults: Counter[str]
    reported_runs: int
    failures: int
    attempts: int
    by_status: Counter[str]
    duplicates: int
    lost: int
    leaked_secrets: int
    pass_errors: int
    log_lines: int
    traced_mb_first: float
    traced_mb_last: float
    rss_mb_first: float
    rss_mb_last: float
    problems: list[str] = field(default_factory=list)

    @property
    def counts_line(self) -> str:
        return (
            f"soak: passes={self.passes} faults={sum(self.faults.values())} attempts={self.attempts} "
            f"duplicates={self.duplicates} lost={self.lost} leaked_secrets={self.leaked_secrets}"
        )


# --- the synthetic world ---------------------------------------------------------------------------------------


@dataclass
class _Project:
    name: str
    sha: str
    red: bool = False
    runs: int = 0


class _World:
    """Synthetic projects whose runs are reported through the API; the random source is seeded."""

    def __init__(self, http: httpx2.AsyncClient, rng: random.Random, names: Sequence[str]) -> None:
        self.http = http
        self.rng = rng
        self.projects = {n: _Project(n, self._sha()) for n in names}
        self.faults: Counter[str] = Counter()
        self.secrets: set[str] = set()
        self.reported = 0
        self.failures: set[str] = set()
        self.problems: list[str] = []

    def _sha(self) -> str:
        return f"{self.rng.getrandbits(160):040x}"

    def _secret(self) -> str:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        token = "ghs_" + "".join(self.rng.choice(alphabet) for _ in range(36))
        aws = "AKIA" + "".join(self.rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
        self.secrets.update((token, aws))
        return f"  using token {token}\n  export AWS_ACCESS_KEY_ID={aws}\n"

    async def report(self, project: _Project, *, green: bool, sha: str) -> None:
        project.runs += 1
        project.sha = sha
        project.red = not green
        log = "collecting ...\nok\n" if green else f"collecting ...\n{self._secret()}FAILED test_x - AssertionError\n"
        body: dict[str, Any] = {
            "project": project.name,
            "job": JOB,
            "run_id": f"{project.runs}",
            "status": "completed",
            "conclusion": "success" if green else "failure",
            "head_sha": sha,
            "triggered_by": "cron",
            "log_text": log,
            "created_at": datetime.now(UTC).isoformat(),
        }
        if not green:
            self.failures.add(failure_fingerprint(project.name, JOB, sha))
        deliveries = 2 if self.rng.random() < 0.1 else 1
        if deliveries == 2:
            self.faults["duplicate_delivery"] += 1
        for _ in range(deliveries):
            r = await self.http.post("/runs", json=body)
            if r.status_code not in (200, 201):
                self.problems.append(f"POST /runs answered {r.status_code}: {r.text[:200]}")
        self.reported += 1

    async def malformed(self) -> None:
        """A broken body: the API must answer 4xx, never 5xx, and store nothing."""
        self.faults["malformed_body"] += 1
        choice = self.rng.randrange(4)
        content: bytes
        if choice == 0:
            content = b'{"project": "p000", "job":'
        elif choice == 1:
            content = json.dumps({"project": "p000", "job": JOB, "run_id": "x y", "status": "done"}).encode()
        elif choice == 2:
            content = bytes(self.rng.getrandbits(8) for _ in range(64))
        else:
            content = json.dumps(
                {"project": "no-such-project", "job": JOB, "run_id": "1", "status": "queued", "head_sha": "abcdef1"}
            ).encode()
        r = await self.http.post("/runs", content=content, headers={"content-type": "application/json"})
        if not 400 <= r.status_code < 500:
            self.problems.append(f"malformed POST /runs answered {r.status_code}")

    async def step(self, flip_rate: float) -> None:
        """Flip some projects: green -> red on a new commit, or red -> green by a human's fix."""
        for project in self.projects.values():
            if self.rng.random() >= flip_rate:
                continue
            await self.report(project, green=project.red, sha=self._sha())

    async def fixed(self, name: str, merged_sha: str) -> None:
        """The simulated agent's fix was merged: its run goes green."""
        await self.report(self.projects[name], green=True, sha=merged_sha)


class _SimAgents:
    """An `AttemptDispatcher` whose agents open nothing: they move attempts through the store."""

    def __init__(self, sessions: SessionFactory, world: _World, rng: random.Random) -> None:
        self.sessions = sessions
        self.world = world
        self.rng = rng
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.errors: list[str] = []

    def dispatch(self, attempt: Attempt) -> None:
        task = asyncio.create_task(self._run(attempt.id, attempt.project, AttemptStatus(attempt.status)))
        self.tasks[attempt.id] = task
        task.add_done_callback(functools.partial(self._done, attempt.id))

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(key) is task:
            del self.tasks[key]
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(f"{key}: {task.exception()!r}")

    async def cancel(self, attempt_id: str) -> bool:
        task = self.tasks.get(attempt_id)
        if task is None:
            return False
        task.cancel()
        return True

    def is_running(self, attempt_id: str) -> bool:
        return attempt_id in self.tasks

    async def wait_idle(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.tasks:
                    await asyncio.gather(*self.tasks.values(), return_exceptions=True)

    async def _run(self, attempt_id: str, project: str, status: AttemptStatus) -> None:
        rng = self.rng
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        fate = rng.random()
        if status is AttemptStatus.PENDING and not await store.transition(
            self.sessions, attempt_id, AttemptStatus.RUNNING, reason="sim_agent_started", expected=AttemptStatus.PENDING
        ):
            return
        if fate < 0.05:
            self.world.faults["agent_died"] += 1
            return  # dies without a word: its heartbeat goes stale and a pass must close the attempt
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        if fate < 0.2:
            await store.transition(
                self.sessions,
                attempt_id,
                AttemptStatus.FAILED,
                reason="sim_agent_gave_up",
                expected=AttemptStatus.RUNNING,
                stop_reason="max_turns",
            )
            return
        branch = f"greenloop/fix-{attempt_id}"
        if not await store.transition(
            self.sessions,
            attempt_id,
            AttemptStatus.PR_OPEN,
            reason="pr_opened",
            expected=AttemptStatus.RUNNING,
            branch=branch,
            pr_number=rng.randrange(1, 10**6),
            pr_url=f"https://forge.invalid/pull/{attempt_id}",
            pushed_sha=f"{rng.getrandbits(160):040x}",
        ):
            return
        await asyncio.sleep(rng.uniform(0.0, 0.2))
        merged = f"{rng.getrandbits(160):040x}"
        if await store.transition(
            self.sessions,
            attempt_id,
            AttemptStatus.VERIFYING,
            reason="pr_merged",
            expected=AttemptStatus.PR_OPEN,
            merged_sha=merged,
        ):
            await self.world.fixed(project, merged)


# --- observation: JSON logs and memory -------------------------------------------------------------------------


class _LogScanner(logging.Handler):
    """Formats every record as the service would (one JSON line) and scans it for secrets; keeps nothing."""

    def __init__(self, secrets: set[str]) -> None:
        super().__init__(level=logging.INFO)
        self.setFormatter(JsonFormatter())
        self.secrets = secrets
        self.lines = 0
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a line that cannot be formatted is a finding, not a crash of the soak
            self.leaks.append(f"unformattable log record from {record.name}")
            return
        self.lines += 1
        if TOKEN_RE.search(line) or any(s in line for s in self.secrets):
            self.leaks.append(line[:300])


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def _thirds(samples: Sequence[float]) -> tuple[float, float]:
    if not samples:
        return 0.0, 0.0
    third = max(1, len(samples) // 3)
    return statistics.fmean(samples[:third]), statistics.fmean(samples[-third:])


# --- the run ---------------------------------------------------------------------------------------------------


async def _scan_tables(sessions: SessionFactory, secrets: set[str]) -> list[str]:
    """Every text value of every table that holds an injected secret or a token-shaped string."""
    leaks: list[str] = []
    async with sessions() as session:
        for table in Base.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, (sa.String, sa.Text))]
            if not columns:
                continue
            for row in await session.execute(sa.select(*columns)):
                for value in row:
                    if isinstance(value, str) and (TOKEN_RE.search(value) or any(s in value for s in secrets)):
                        leaks.append(f"{table.name}: {value[:120]!r}")
    return leaks


@contextlib.asynccontextmanager
async def _real_runtime(
    tmp: Path, db_url: str, names: Sequence[str]
) -> AsyncIterator[tuple[ReconcilerContext | None, Any]]:
    """The real part: the local forge with `names` loaded and a runtime with the scripted model (or None)."""
    if not names:
        yield None, None
        return
    from fixtures.forge import run_forge
    from fixtures.projects.catalog import list_projects
    from reconciler.runtime import open_runtime, scripted_backends

    fixtures = [f for f in list_projects() if f.name in names]
    async with run_forge(
        tmp / "forge",
        projects=[f.name for f in fixtures],
        app_permissions=dict(APP_PERMISSIONS),
    ) as forge:
        await forge.wait_idle(120)
        config = GreenloopConfig(
            server=ServerSettings(database_url=db_url, workspace_dir=str(tmp / "workspaces"), concurrency=4),
            forge=forge.forge_settings().model_copy(update={"timeout_seconds": 10}),
            projects=tuple(f.project_config() for f in fixtures),
        )
        async with open_runtime(config, backend_for=scripted_backends(str(SCRIPTS_DIR)), heartbeat_seconds=1.0) as ctx:
            yield ctx, forge


def _arm_forge_faults(forge: Any, rng: random.Random, faults: Counter[str]) -> None:
    kind = rng.choice(["500", "500", "429"])
    count = rng.randrange(1, 5)
    forge.faults.add(path_regex=r"/repos/", kind=kind, count=count, retry_after=1)
    faults[f"forge_{kind}_armed"] += count


async def _pass(ctx: ReconcilerContext | None, errors: list[str]) -> RunSummary | None:
    if ctx is None:
        return None
    try:
        async with asyncio.timeout(120):
            summary = await reconcile(ctx, trigger="cli")
    except Exception as exc:  # a failed pass is counted; the next one repairs from the current state
        errors.append(f"{exc.__class__.__name__}: {exc}")
        return None
    errors.extend(f"{name}: {err}" for name, err in summary.errors.items())
    return summary


async def _active_per_project_max(sessions: SessionFactory) -> int:
    async with sessions() as session:
        counts = await session.execute(
            sa.select(sa.func.count())
            .select_from(Attempt)
            .where(Attempt.status.in_([s.value for s in ACTIVE_STATUSES]))
            .group_by(Attempt.project)
        )
        return max((int(n) for (n,) in counts), default=0)


async def run_soak(
    *, seconds: float, projects: int = 300, seed: int = 7, real: Sequence[str] = REAL_PROJECTS, quiet: bool = False
) -> SoakResult:
    """Run the soak for `seconds` (plus settling) and return what it found."""
    rng = random.Random(seed)
    say = (lambda _msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    names = [f"p{i:03d}" for i in range(projects)]
    with tempfile.TemporaryDirectory(prefix="greenloop-soak-") as tmp_name:
        tmp = Path(tmp_name)
        db_url = f"sqlite+aiosqlite:///{tmp / 'greenloop.db'}"
        secrets: set[str] = set()
        scanner = _LogScanner(secrets)
        root = logging.getLogger()
        old_level = root.level
        # The scanner is the only handler while the soak runs: its thousands of events (one per API request
        # and pass) are scanned for secrets, never printed; the soak reports progress through `say` instead.
        old_handlers = root.handlers[:]
        root.handlers[:] = [scanner]
        root.setLevel(logging.INFO)
        for noisy in ("httpx", "httpx2", "uvicorn", "uvicorn.error", "fixtures.forge", "aiosqlite", "sqlalchemy"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        tracemalloc.start()
        try:
            return await _soak(tmp, db_url, names, rng, seconds, real, scanner, secrets, say)
        finally:
            tracemalloc.stop()
            root.handlers[:] = old_handlers
            root.setLevel(old_level)


async def _soak(
    tmp: Path,
    db_url: str,
    names: Sequence[str],
    rng: random.Random,
    seconds: float,
    real: Sequence[str],
    scanner: _LogScanner,
    secrets: set[str],
    say: Callable[[str], None],
) -> SoakResult:
    t0 = time.perf_counter()
    engine = None
    async with _real_runtime(tmp, db_url, real) as (real_ctx, forge):
        if real_ctx is not None:
            sessions = real_ctx.sessions
        else:
            engine = make_engine(db_url)
            await upgrade_async(engine)
            sessions = make_sessionmaker(engine)
        try:
            config = GreenloopConfig(
                server=ServerSettings(database_url=db_url, attempt_timeout_seconds=2.0, concurrency=8),
                projects=tuple(
                    ProjectConfig(
                        name=n,
                        repo=f"synthetic/{n}",
                        autonomy=Autonomy.AUTO_MERGE,
                        max_consecutive_failures=100,
                        backoff=Backoff(base_seconds=0, max_seconds=0),
                    )
                    for n in names
                ),
            )
            # The soak drives every pass itself (and sabotages them in its tests): a reported run wakes nothing here.
            api_ctx = ReconcilerContext(config, sessions, None, None, Metrics())
            app = build_api(api_ctx, api_token=TOKEN, enqueue=lambda _key: None)
            transport = httpx2.ASGITransport(app=app, client=("127.0.0.1", 50000))
            async with httpx2.AsyncClient(
                transport=transport, base_url="http://soak", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as http:
                world = _World(http, rng, names)
                world.secrets = secrets
                agents = _SimAgents(sessions, world, rng)
                ctx = ReconcilerContext(config, sessions, None, agents, Metrics())
                return await _loop(t0, seconds, world, agents, ctx, real_ctx, forge, sessions, scanner, say)
        finally:
            if engine is not None:
                await engine.dispose()


async def _loop(
    t0: float,
    seconds: float,
    world: _World,
    agents: _SimAgents,
    ctx: ReconcilerContext,
    real_ctx: ReconcilerContext | None,
    forge: Any,
    sessions: SessionFactory,
    scanner: _LogScanner,
    say: Callable[[str], None],
) -> SoakResult:
    rng = world.rng
    errors: list[str] = []
    traced: list[float] = []
    rss: list[float] = []
    passes = 0
    over_active = 0
    # Start: every project reports a green run, a tenth of them red.
    for project in world.projects.values():
        await world.report(project, green=rng.random() >= 0.1, sha=project.sha)
    say(f"soak: set up in {time.perf_counter() - t0:.0f}s; flipping and injecting for {seconds:.0f}s")
    deadline = time.perf_counter() + seconds
    last_said = time.perf_counter()
    while time.perf_counter() < deadline:
        await world.step(flip_rate=0.03)
        if rng.random() < 0.3:
            await world.malformed()
        if forge is not None and rng.random() < 0.5:
            _arm_forge_faults(forge, rng, world.faults)
        runs = [_pass(ctx, errors), _pass(real_ctx, errors)]
        if rng.random() < 0.25:
            world.faults["racing_pass"] += 1
            runs.append(_pass(ctx, errors))
        await asyncio.gather(*runs)
        passes += 1
        if await _active_per_project_max(sessions) > 1:
            over_active += 1
        traced.append(tracemalloc.get_traced_memory()[0] / 1e6)
        rss.append(_rss_mb())
        if time.perf_counter() - last_said >= _PROGRESS_EVERY_S:  # progress by the clock, however slow a pass
            last_said = time.perf_counter()
            say(
                f"soak: {time.perf_counter() - t0:.0f}s passes={passes} reported={world.reported} "
                f"faults={sum(world.faults.values())} errors={len(errors)}"
            )
        await asyncio.sleep(0.05)
    # Settle: no more flips or faults; passes until nothing synthetic is in flight.
    if forge is not None:
        forge.faults.clear()
    last: RunSummary | None = None
    settle_deadline = time.perf_counter() + 60 + (120 if real_ctx is not None else 0)
    while time.perf_counter() < settle_deadline:
        await agents.wait_idle(5)
        last = await _pass(ctx, errors)
        await _pass(real_ctx, errors)
        passes += 1
        active = await store.active_attempts(sessions)
        synthetic_busy = [a for a in active if a.project in world.projects]
        real_busy = [
            a
            for a in active
            if a.project not in world.projects
            and AttemptStatus(a.status) in (AttemptStatus.PENDING, AttemptStatus.RUNNING)
        ]
        say(f"soak: settling: {len(synthetic_busy)} synthetic and {len(real_busy)} real attempt(s) in flight")
        if not synthetic_busy and not real_busy and not agents.tasks:
            last = await _pass(ctx, errors)  # one more, quiet pass: its decisions are the final word
            passes += 1
            break
        await asyncio.sleep(0.5)
    if real_ctx is not None and real_ctx.dispatcher is not None:
        await real_ctx.dispatcher.wait_idle(30)
    if forge is not None:
        world.faults["forge_injected"] = int(forge.faults.injected)
        for key in [k for k in world.faults if k.startswith("forge_") and k.endswith("_armed")]:
            del world.faults[key]  # armed is not injected: count what the forge actually answered
    return await _verify(
        t0, world, agents, ctx, real_ctx, sessions, scanner, passes, over_active, last, errors, traced, rss
    )


async def _verify(
    t0: float,
    world: _World,
    agents: _SimAgents,
    ctx: ReconcilerContext,
    real_ctx: ReconcilerContext | None,
    sessions: SessionFactory,
    scanner: _LogScanner,
    passes: int,
    over_active: int,
    last: RunSummary | None,
    errors: list[str],
    traced: list[float],
    rss: list[float],
) -> SoakResult:
    problems = list(world.problems) + agents.errors
    async with sessions() as session:
        attempts = list((await session.scalars(sa.select(Attempt))).all())
    by_fingerprint = Counter(a.fingerprint for a in attempts)
    duplicates = sum(n - 1 for n in by_fingerprint.values() if n > 1) + over_active
    lost = 0
    real_dispatcher = real_ctx.dispatcher if real_ctx is not None else None
    for a in attempts:
        status = AttemptStatus(a.status)
        if status in TERMINAL_STATUSES:
            continue
        synthetic = a.project in world.projects
        legit = (
            (synthetic and agents.is_running(a.id))
            or (not synthetic and status in (AttemptStatus.PR_OPEN, AttemptStatus.VERIFYING))
            or (not synthetic and real_dispatcher is not None and real_dispatcher.is_running(a.id))
        )
        if not legit:
            lost += 1
            problems.append(f"attempt {a.id} ({a.project}) left {status.value}")
    decisions = {r.project: r for r in last.red} if last is not None else {}
    for project in world.projects.values():
        if not project.red:
            continue
        fingerprint = failure_fingerprint(project.name, JOB, project.sha)
        if by_fingerprint[fingerprint]:
            continue
        note = decisions.get(project.name)
        if note is not None and note.reason in LEGIT_SKIPS:
            continue
        lost += 1
        problems.append(f"{project.name} red on {project.sha[:7]} without an attempt ({note!r})")
    leaks = await _scan_tables(sessions, world.secrets) + scanner.leaks
    problems += [f"secret leaked: {leak}" for leak in leaks[:20]]
    problems += [f"pass error: {e}" for e in errors[:10]]
    traced_first, traced_last = _thirds(traced)
    rss_first, rss_last = _thirds(rss)
    return SoakResult(
        seconds=time.perf_counter() - t0,
        projects=len(world.projects),
        real_projects=len(real_ctx.config.projects) if real_ctx is not None else 0,
        passes=passes,
        faults=world.faults,
        reported_runs=world.reported,
        failures=len(world.failures),
        attempts=len(attempts),
        by_status=Counter(a.status for a in attempts),
        duplicates=duplicates,
        lost=lost,
        leaked_secrets=len(leaks),
        pass_errors=len(errors),
        log_lines=scanner.lines,
        traced_mb_first=traced_first,
        traced_mb_last=traced_last,
        rss_mb_first=rss_first,
        rss_mb_last=rss_last,
        problems=problems,
    )


def run(*, seconds: float, projects: int = 300, seed: int = 7, real: bool = True, quiet: bool = False) -> SoakResult:
    """Run the soak in a fresh event loop (see `run_soak`)."""
    return asyncio.run(
        run_soak(seconds=seconds, projects=projects, seed=seed, real=REAL_PROJECTS if real else (), quiet=quiet)
    )


def render(result: SoakResult) -> str:
    """A Markdown summary, the counts line last."""
    faults = ", ".join(f"{k} {v}" for k, v in sorted(result.faults.items())) or "none"
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(result.by_status.items())) or "none"
    lines = [
        f"{result.projects} synthetic + {result.real_projects} real project(s), {result.seconds:.0f} s "
        f"(including settling), {result.passes} passes.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| runs reported (POST /runs) | {result.reported_runs} |",
        f"| failures reported | {result.failures} |",
        f"| attempts | {result.attempts} ({statuses}) |",
        f"| faults injected | {sum(result.faults.values())} ({faults}) |",
        f"| pass errors (counted, repaired by the next pass) | {result.pass_errors} |",
        f"| JSON log lines scanned | {result.log_lines} |",
        f"| traced Python memory, first third -> last third | {result.traced_mb_first:.1f} MB -> "
        f"{result.traced_mb_last:.1f} MB |",
        f"| RSS, first third -> last third | {result.rss_mb_first:.0f} MB -> {result.rss_mb_last:.0f} MB |",
        f"| duplicates / lost / leaked secrets | {result.duplicates} / {result.lost} / {result.leaked_secrets} |",
        "",
    ]
    if result.problems:
        lines += ["Findings:", "", *(f"- {p}" for p in result.problems[:20]), ""]
    lines.append(f"`{result.counts_line}`")
    lines += [
        "",
        bench_line(
            "soak",
            {
                "passes": result.passes,
                "duplicates": result.duplicates,
                "lost": result.lost,
                "leaked_secrets": result.leaked_secrets,
                "rss_mb_last": result.rss_mb_last,
            },
        ),
    ]
    return "\n".join(lines)


def section(*, quick: bool) -> str:
    """The soak section of `python -m bench`: 600 s, 300 synthetic projects and the real ones; quick: 30 s,
    150 synthetic projects, no forge (`python -m bench --quick` has two minutes for every section)."""
    result = run(seconds=30 if quick else 600, projects=150 if quick else 300, real=not quick, quiet=True)
    return render(result)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the soak and print its summary; exit 1 when anything was duplicated, lost or leaked."""
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to flip and inject (default 600)")
    parser.add_argument("--projects", type=int, default=300, help="synthetic projects (default 300)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-real", action="store_true", help="synthetic projects only (no forge, no agents)")
    args = parser.parse_args(argv)
    result = run(seconds=args.seconds, projects=args.projects, seed=args.seed, real=not args.no_real)
    print(render(result))
    return 1 if result.duplicates or result.lost or result.leaked_secrets else 0


if __name__ == "__main__":
    raise SystemExit(main())
