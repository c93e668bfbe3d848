"""Benchmark: many starters racing to start attempts; the database must keep one attempt per project.

    python -m bench.dedup [--projects 1000] [--starters 32] [--runs 3] [--quick] [--seed 0]

`--starters` concurrent starters, each with its own engine (as separate reconciler replicas would have),
each call `reconciler.store.start_attempt` once for every one of `--projects` red projects, in its own
shuffled order, all released at once. Two variants:

* `distinct` fingerprints: one per starter and project, so only the one-active-attempt partial unique index
  can refuse the duplicates;
* `shared` fingerprints: one per project, so the fingerprint unique constraint also applies.

Both run on SQLite (a temporary file) and on PostgreSQL (a throwaway database created through the URL in
GREENLOOP_BENCH_POSTGRES_URL or GREENLOOP_TEST_POSTGRES_URL and dropped afterwards; skipped with a printed
reason when neither is set). After every run the database itself is counted: attempts created (must equal
the number of projects) and duplicates (projects with more than one attempt: must be 0). Reported per
variant: those counts (worst run), the outcomes the starters saw, throughput in start calls per second and
wall time (medians over `--runs` runs), and the client process's CPU share (one process, one event loop:
when it nears 100 % the client, not the database, sets the pace). `--quick`: 200 projects, one run.
Prints a Markdown table; exits with status 1 when a run broke an invariant. Every figure is measured on the
machine it runs on; none is typed in.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bench import bench_line
from reconciler.errors import StoreError
from reconciler.store import make_engine, make_sessionmaker, start_attempt, sync_projects, upgrade_async
from reconciler.store.engine import SessionFactory, redact_url
from reconciler.store.models import Attempt, Transition

__all__ = ["POSTGRES_ENVS", "RunResult", "bench_figures", "main", "postgres_url", "render_table", "run"]

POSTGRES_ENVS: tuple[str, ...] = ("GREENLOOP_BENCH_POSTGRES_URL", "GREENLOOP_TEST_POSTGRES_URL")
VARIANTS: tuple[str, ...] = ("distinct", "shared")
COLUMNS: tuple[str, ...] = (
    "backend",
    "fingerprints",
    "projects",
    "starters",
    "runs",
    "start calls",
    "attempts created",
    "duplicates",
    "started",
    "already_active",
    "already_handled",
    "busy",
    "errors",
    "calls/s",
    "p99 call ms",
    "wall s",
    "client CPU %",
    "invariants",
)


@dataclass
class RunResult:
    """What one run measured: the outcomes the starters saw and what the database holds afterwards."""

    calls: int
    wall_s: float
    cpu_s: float  # CPU time of this process (every thread) during the run: the client side's share
    outcomes: Counter[str]
    latencies_s: list[float]
    attempts: int
    duplicates: int
    projects_with_attempt: int
    transitions: int
    errors: list[str] = field(default_factory=list)

    @property
    def calls_per_s(self) -> float:
        """Start calls per second of wall time."""
        return self.calls / self.wall_s if self.wall_s > 0 else 0.0


def postgres_url() -> tuple[str | None, str]:
    """The PostgreSQL maintenance URL to use, or None and the reason it is skipped."""
    for name in POSTGRES_ENVS:
        value = os.environ.get(name)
        if value:
            return value, f"from {name}"
    return (
        None,
        f"PostgreSQL skipped: set {' or '.join(POSTGRES_ENVS)} (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)",
    )


async def _admin(url: str, statement: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.execute(sa.text(statement))
    finally:
        await engine.dispose()


@asynccontextmanager
async def _database(backend: str, admin_url: str | None) -> AsyncIterator[str]:
    """A migrated, empty throwaway database of `backend`, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="greenloop-bench-") as directory:
            url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.db'}"
            await _migrate(url)
            yield url
        return
    if admin_url is None:
        raise ValueError("PostgreSQL needs a maintenance URL.")
    name = f"greenloop_bench_{uuid.uuid4().hex[:10]}"
    await _admin(admin_url, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        await _migrate(url)
        yield url
    finally:
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _server_version(url: str) -> str:
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            return str(await connection.scalar(sa.text("SHOW server_version")))
    finally:
        await engine.dispose()


async def _migrate(url: str) -> None:
    engine = make_engine(url)
    try:
        await upgrade_async(engine)
    finally:
        await engine.dispose()


def _project_names(count: int) -> list[str]:
    return [f"project-{i:05d}" for i in range(count)]


async def _reset(url: str, names: Sequence[str]) -> None:
    """Remove every attempt, make sure every project row exists."""
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                await connection.execute(sa.text("TRUNCATE reconciler_transition, reconciler_attempt"))
            else:
                await connection.execute(sa.delete(Transition))
                await connection.execute(sa.delete(Attempt))
        await sync_projects(make_sessionmaker(engine), {n: f"acme/{n}" for n in names})
    finally:
        await engine.dispose()


async def _count(url: str) -> tuple[int, int, int, int]:
    """Attempts, duplicate attempts (beyond the first per project), projects with one, transitions."""
    engine = make_engine(url)
    try:
        async with engine.connect() as connection:
            attempts = int(await connection.scalar(sa.select(sa.func.count()).select_from(Attempt)) or 0)
            per_project = sa.select(Attempt.project, sa.func.count().label("n")).group_by(Attempt.project).subquery()
            duplicates = int(
                await connection.scalar(sa.select(sa.func.coalesce(sa.func.sum(per_project.c.n - 1), 0))) or 0
            )
            covered = int(await connection.scalar(sa.select(sa.func.count()).select_from(per_project)) or 0)
            transitions = int(await connection.scalar(sa.select(sa.func.count()).select_from(Transition)) or 0)
    finally:
        await engine.dispose()
    return attempts, duplicates, covered, transitions


async def _warm(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))


async def _one_run(url: str, *, projects: int, starters: int, variant: str, seed: int) -> RunResult:
    names = _project_names(projects)
    await _reset(url, names)
    engines = [make_engine(url) for _ in range(starters)]
    try:
        await asyncio.gather(*(_warm(e) for e in engines))  # connecting is not what is measured
        factories: list[SessionFactory] = [make_sessionmaker(e) for e in engines]
        outcomes: Counter[str] = Counter()
        latencies: list[float] = []
        errors: list[str] = []
        go = asyncio.Event()

        async def _starter(index: int, sessions: SessionFactory) -> None:
            order = list(names)
            random.Random(seed * 1_000_003 + index).shuffle(order)
            await go.wait()
            for name in order:
                fingerprint = f"{name}:nightly" if variant == "shared" else f"{name}:nightly:starter-{index}"
                t0 = time.perf_counter()
                try:
                    outcome = await start_attempt(
                        sessions,
                        project=name,
                        job="nightly",
                        fingerprint=fingerprint,
                        run_id=str(index),
                        head_sha="0" * 40,
                    )
                    outcomes[outcome.reason] += 1
                except StoreError as exc:
                    outcomes["error"] += 1
                    if len(errors) < 3:
                        errors.append(str(exc))
                latencies.append(time.perf_counter() - t0)

        tasks = [asyncio.create_task(_starter(i, sf)) for i, sf in enumerate(factories)]
        await asyncio.sleep(0)
        started, cpu_started = time.perf_counter(), time.process_time()
        go.set()
        await asyncio.gather(*tasks)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        for engine in engines:
            await engine.dispose()
    attempts, duplicates, covered, transitions = await _count(url)
    return RunResult(
        calls=projects * starters,
        wall_s=wall,
        cpu_s=cpu,
        outcomes=outcomes,
        latencies_s=latencies,
        attempts=attempts,
        duplicates=duplicates,
        projects_with_attempt=covered,
        transitions=transitions,
        errors=errors,
    )


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}–{high}"


def _row(
    backend: str, variant: str, projects: int, starters: int, results: Sequence[RunResult], problems: list[str]
) -> dict[str, Any]:
    def median_count(key: str) -> int:
        return round(statistics.median(r.outcomes.get(key, 0) for r in results))

    return {
        "backend": backend,
        "fingerprints": variant,
        "projects": projects,
        "starters": starters,
        "runs": len(results),
        "start calls": results[0].calls,
        "attempts created": _span([r.attempts for r in results]),
        "duplicates": max(r.duplicates for r in results),
        "started": median_count("started"),
        "already_active": median_count("already_active"),
        "already_handled": median_count("already_handled"),
        "busy": median_count("busy"),
        "errors": median_count("error"),
        "calls/s": round(statistics.median(r.calls_per_s for r in results)),
        "p99 call ms": round(statistics.median(_p99(r.latencies_s) for r in results) * 1000, 1),
        "wall s": round(statistics.median(r.wall_s for r in results), 2),
        "client CPU %": round(statistics.median(100 * r.cpu_s / r.wall_s for r in results if r.wall_s > 0)),
        "invariants": "ok" if not problems else "BROKEN",
        "problems": problems,  # not a column: what broke, one line each
    }


def _check(backend: str, variant: str, projects: int, result: RunResult) -> list[str]:
    """Invariants of one run, as problems to print (an empty list when the database kept its rules)."""
    problems: list[str] = []
    where = f"{backend}/{variant}"
    if result.duplicates:
        problems.append(f"{where}: {result.duplicates} duplicate attempts in the database")
    if result.attempts != projects or result.projects_with_attempt != projects:
        problems.append(
            f"{where}: {result.attempts} attempts over {result.projects_with_attempt} of {projects} projects"
        )
    if result.outcomes.get("started", 0) != result.attempts:
        problems.append(
            f"{where}: starters saw {result.outcomes.get('started', 0)} starts, the database holds {result.attempts}"
        )
    if result.transitions != result.attempts:
        problems.append(f"{where}: {result.transitions} creation transitions for {result.attempts} attempts")
    problems.extend(f"{where}: error: {e}" for e in result.errors)
    return problems


async def _run_async(*, projects: int, starters: int, runs: int, seed: int, log: Any) -> list[dict[str, Any]]:
    admin_url, source = postgres_url()
    backends = ["sqlite"] + (["postgresql"] if admin_url else [])
    if admin_url is None:
        print(source, file=log)
    else:
        print(f"PostgreSQL {await _server_version(admin_url)}: {redact_url(admin_url)} ({source})", file=log)
    rows: list[dict[str, Any]] = []
    for backend in backends:
        async with _database(backend, admin_url) as url:
            for variant in VARIANTS:
                results: list[RunResult] = []
                problems: list[str] = []
                for n in range(runs):
                    result = await _one_run(url, projects=projects, starters=starters, variant=variant, seed=seed + n)
                    problems.extend(_check(backend, variant, projects, result))
                    print(
                        f"  {backend}/{variant} run {n + 1}/{runs}: {result.calls_per_s:.0f} calls/s, "
                        f"{result.wall_s:.2f} s, attempts {result.attempts}, duplicates {result.duplicates}, "
                        f"outcomes {dict(result.outcomes)}",
                        file=log,
                        flush=True,
                    )
                    results.append(result)
                rows.append(_row(backend, variant, projects, starters, results, problems))
    return rows


def run(
    quick: bool = False,
    *,
    projects: int | None = None,
    starters: int = 32,
    runs: int | None = None,
    seed: int = 0,
    log: Any = sys.stderr,
) -> list[dict[str, Any]]:
    """Run the benchmark and return one row per backend and fingerprint variant (keys: `COLUMNS`).

    `quick`: 200 projects and one run unless `projects`/`runs` say otherwise (default 1000 and 3). Each row's
    `invariants` is "ok", or "BROKEN" with the reasons in its `problems` list (a duplicate attempt, a
    project left without one, a start the database does not hold, a store error). Progress goes to `log`.

    Raises:
        ValueError: a size below 1.
    """
    projects = projects if projects is not None else (200 if quick else 1000)
    runs = runs if runs is not None else (1 if quick else 3)
    if projects < 1 or starters < 1 or runs < 1:
        raise ValueError(
            f"Invalid benchmark size: projects, starters and runs must be >= 1: {(projects, starters, runs)!r}."
        )
    return asyncio.run(_run_async(projects=projects, starters=starters, runs=runs, seed=seed, log=log))


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table, columns in `COLUMNS` order, then the `BENCH dedup ...` line."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines.extend("| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows)
    return "\n".join([*lines, "", bench_figures(rows)])


def bench_figures(rows: Sequence[dict[str, Any]]) -> str:
    """`BENCH dedup backend=sqlite p99_ms=... duplicates=...`: per backend, the worse of the two fingerprint
    variants (PostgreSQL's figures prefixed `postgresql_` when it ran)."""
    figures: dict[str, object] = {}
    for backend in dict.fromkeys(row["backend"] for row in rows):
        mine = [row for row in rows if row["backend"] == backend]
        prefix = "" if backend == "sqlite" else f"{backend}_"
        if not prefix:
            figures["backend"] = backend
        figures[f"{prefix}p99_ms"] = max(row["p99 call ms"] for row in mine)
        figures[f"{prefix}duplicates"] = max(row["duplicates"] for row in mine)
        figures[f"{prefix}calls_per_s"] = min(row["calls/s"] for row in mine)
    if rows:
        figures["projects"], figures["starters"] = rows[0]["projects"], rows[0]["starters"]
    return bench_line("dedup", figures)


def _environment() -> str:
    return (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"{platform.system()} {platform.machine()}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: run, print the Markdown table; exit status 1 when an invariant broke."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.dedup", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--projects", type=int, default=None, help="red projects (default 1000; 200 with --quick)")
    parser.add_argument("--starters", type=int, default=32, help="concurrent starters, one engine each (default 32)")
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per variant, medians reported (default 3; 1 with --quick)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the starters' shuffles")
    parser.add_argument("--quick", action="store_true", help="200 projects, one run")
    args = parser.parse_args(argv)
    rows = run(
        args.quick, projects=args.projects, starters=args.starters, runs=args.runs, seed=args.seed, log=sys.stdout
    )
    print()
    print(_environment())
    print()
    print(render_table(rows))
    problems = [p for row in rows for p in row["problems"]]
    for problem in problems:
        print(f"BROKEN: {problem}", file=sys.stderr)
    if problems:
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
