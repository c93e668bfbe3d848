"""Benchmark: the cost of one reconcile pass as the number of projects grows.

    python -m bench.scale [--quick] [--sizes 100,1000,10000] [--passes 5]

For each size N (default 100, 1,000, 10,000; `--quick`: 100 and 1,000) a scale-mode forge
(`fixtures/forge/scale.py`) runs as a separate process serving N synthetic repos over real loopback HTTP,
each with a realistic page (30 runs in GitHub's full field set, 4 jobs with steps per run)
(raw asyncio HTTP/1.1, 127.0.0.1), and a reconciler context is built as `reconciler/runtime.py` builds it: a temporary
SQLite file, migrations, `ForgeClient(config.forge, GitHubApp.from_settings(config.forge))` with an RSA key
generated for the run, and a dispatcher that only records `dispatch` calls (no agent ever runs).

Passes run on one `Runner(ctx, freeze_heap=True)`, as `reconciler.service.serve` builds it (the heap is
frozen after the first pass). Measured with nothing changed since the last pass (one warm-up pass first, then
the median of `--passes`):
wall time, forge requests per project and the share answered 304 (as the client counted them, and as the
server saw them), database statements per pass (a `before_cursor_execute` listener), peak Python memory
(tracemalloc, in one further pass of its own so tracing doesn't slow the timed ones) and the process RSS.
Then 1 % of the repos get a new failed run and one pass runs: attempts started, dispatch calls, its time.
Every figure is measured on the machine it runs on; none is typed in.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import event

from bench import bench_line
from mcp_server.forge import ForgeClient
from mcp_server.github_app import GitHubApp
from policy.config import ForgeSettings, GreenloopConfig, ProjectConfig, ServerSettings
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.runner import Runner
from reconciler.runtime import forge_client
from reconciler.store.engine import make_engine, make_sessionmaker
from reconciler.store.migrate import upgrade_async
from reconciler.store.models import Attempt

__all__ = ["ScaleResult", "main", "render_table", "run", "section"]

ROOT = Path(__file__).resolve().parent.parent
OWNER = "bench"
CONCURRENCY = 32
GOAL_SECONDS_AT_1000 = 2.0
GOAL_RSS_MIB_AT_10000 = 1024
GOAL_CPU_US_PER_PROJECT = 200  # issue 20: unchanged pass, reconciler CPU per project at 1,000 and 10,000
GOAL_SECONDS_AT_10000 = 3.0


class RecordingDispatcher:
    """An `AttemptDispatcher` that records what it was asked to run and runs nothing."""

    def __init__(self) -> None:
        self.dispatched: list[str] = []

    def dispatch(self, attempt: Attempt) -> None:
        self.dispatched.append(attempt.id)

    async def cancel(self, attempt_id: str) -> bool:
        return False  # nothing ever runs here

    def is_running(self, attempt_id: str) -> bool:
        return attempt_id in self.dispatched

    async def wait_idle(self, timeout: float) -> None:
        return None


@dataclass
class ScaleResult:
    """The figures for one size."""

    projects: int
    pass_seconds: float  # median unchanged pass
    pass_seconds_min: float
    requests_per_project: float  # client-side count, unchanged pass
    not_modified_share: float
    server_requests_per_project: float
    db_statements: int  # unchanged pass (median)
    db_statements_first: int  # the very first (cold) pass
    tracemalloc_peak_mb: float
    rss_mb: float
    max_rss_mb: float
    red_projects: int
    red_started: int
    red_dispatched: int
    red_pass_seconds: float
    red_requests: int
    red_db_statements: int
    errors: dict[str, int]  # project errors over all passes, by kind
    etag_entries: int
    timed_passes: int
    client_cpu_seconds: float  # median, this process, per unchanged pass
    client_cpu_seconds_min: float  # the least of the unchanged passes (the one least slowed by other work)
    server_cpu_seconds: float  # median, the forge process, per unchanged pass
    etag_what_if: bool  # the ETag cache was resized (--etag-entries), unlike the runtime
    load_average: float  # 1-minute load average after the timed passes (the machine is shared)
    gc_ms: float = 0.0  # median time per unchanged pass inside the garbage collector (all generations)
    gc_full: int = 0  # full (generation 2) collections over all timed passes
    first_pass_seconds: float = 0.0  # the cold first pass: wall
    first_cpu_seconds: float = 0.0  # the cold first pass: this process's CPU
    first_requests_per_project: float = 0.0  # the cold first pass: forge requests (runs page + job lists)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


class _ForgeProcess:
    """The scale forge in its own process, so its CPU and memory are not charged to the reconciler."""

    def __init__(self, projects: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "fixtures.forge.scale", "--port", str(self.port), "--projects", str(projects)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    async def wait_ready(self, control: httpx2.AsyncClient, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"scale forge exited with {self._proc.returncode}: {err[-500:]}")
            try:
                await control.get(f"{self.url}/_scale/stats", timeout=1.0)
                return
            except httpx2.HTTPError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"scale forge did not start within {timeout:.0f}s")

    def cpu_seconds(self) -> float:
        """User + system CPU the forge process has used so far (from /proc; NaN where unavailable)."""
        try:
            with open(f"/proc/{self._proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return float("nan")

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        if self._proc.stderr:
            self._proc.stderr.close()


async def _measure(
    projects: int, passes: int, tmp: Path, etag_entries: int | None, profile: str | None = None
) -> ScaleResult:
    forge_proc = _ForgeProcess(projects)
    try:
        async with httpx2.AsyncClient(trust_env=False) as control:
            await forge_proc.wait_ready(control)
            return await _measure_with(projects, passes, tmp, forge_proc, control, etag_entries, profile)
    finally:
        forge_proc.stop()


async def _server_stats(control: httpx2.AsyncClient, url: str) -> dict[str, Any]:
    reply = await control.get(f"{url}/_scale/stats", timeout=10.0)
    data: dict[str, Any] = reply.json()
    return data


def _forge_client(config: GreenloopConfig, app: GitHubApp, etag_entries: int | None) -> ForgeClient:
    """As the runtime builds it; `etag_entries` (a what-if, off by default) resizes the ETag cache."""
    if etag_entries is None:
        return forge_client(config, app)
    return ForgeClient(config.forge, app, etag_entries=etag_entries)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _error_kind(message: str) -> str:
    """`internal error: KeyError` stays whole; forge errors keep their category (`Forge unavailable`)."""
    return message if message.startswith("internal error") else message.split(":", 1)[0]


async def _measure_with(
    projects: int,
    passes: int,
    tmp: Path,
    forge_proc: _ForgeProcess,
    control: httpx2.AsyncClient,
    etag_entries: int | None,
    profile: str | None = None,
) -> ScaleResult:
    url = forge_proc.url
    key_path = tmp / f"app-{projects}.pem"
    _write_key(key_path)
    db_path = tmp / f"scale-{projects}.db"
    config = GreenloopConfig(
        server=ServerSettings(database_url=f"sqlite+aiosqlite:///{db_path}", concurrency=CONCURRENCY),
        forge=ForgeSettings(api_url=url, app_id="1", installation_id="1", private_key_path=str(key_path)),
        projects=tuple(ProjectConfig(name=f"p{i:05d}", repo=f"{OWNER}/p{i:05d}") for i in range(1, projects + 1)),
    )
    engine = make_engine(config.server.database_url)
    statements = 0

    def _count(*_args: object, **_kwargs: object) -> None:
        nonlocal statements
        statements += 1

    try:
        await upgrade_async(engine)
        event.listen(engine.sync_engine, "before_cursor_execute", _count)
        dispatcher = RecordingDispatcher()
        async with GitHubApp.from_settings(config.forge) as app, _forge_client(config, app, etag_entries) as forge:
            ctx = ReconcilerContext(
                config=config,
                sessions=make_sessionmaker(engine),
                forge=forge,
                dispatcher=dispatcher,
                metrics=Metrics(),
                bot_logins=frozenset({config.forge.bot_login}),
            )
            # One runner for all passes, as the service builds it (it freezes the heap after its first pass).
            runner = Runner(ctx, freeze_heap=True)
            # Warm-up: first observation of every repo (full bodies, job lists, project rows synced).
            statements = 0
            c0, t0 = _cpu_seconds(), time.perf_counter()
            first = await runner.run_pass(trigger="cli")
            first_seconds, first_cpu = time.perf_counter() - t0, _cpu_seconds() - c0
            db_first = statements
            errors: Counter[str] = Counter(_error_kind(m) for m in first.errors.values())

            times: list[float] = []
            reqs: list[int] = []
            nm: list[int] = []
            stmts: list[int] = []
            server_reqs: list[int] = []
            client_cpu: list[float] = []
            server_cpu: list[float] = []
            profiler = cProfile.Profile(time.thread_time) if profile is not None else None
            gc_times: list[float] = []
            gc_full = 0
            gc_started = 0.0
            in_pass = False

            def _gc_timer(phase: str, info: dict[str, int]) -> None:
                nonlocal gc_started, gc_full
                if not in_pass:
                    return
                if phase == "start":
                    gc_started = time.perf_counter()
                    return
                gc_times[-1] += time.perf_counter() - gc_started
                gc_full += info["generation"] == 2

            gc.callbacks.append(_gc_timer)
            for _ in range(passes):
                gc_times.append(0.0)
                before = await _server_stats(control, url)
                statements = 0
                c0, s0 = _cpu_seconds(), forge_proc.cpu_seconds()
                t0 = time.perf_counter()
                if profiler is not None:
                    profiler.enable()
                in_pass = True
                summary = await runner.run_pass(trigger="cli")
                in_pass = False
                if profiler is not None:
                    profiler.disable()
                times.append(time.perf_counter() - t0)
                client_cpu.append(_cpu_seconds() - c0)
                server_cpu.append(forge_proc.cpu_seconds() - s0)
                stmts.append(statements)
                after = await _server_stats(control, url)
                reqs.append(summary.forge_requests)
                nm.append(summary.forge_not_modified)
                server_reqs.append(int(after["requests"]) - int(before["requests"]))
                errors.update(_error_kind(m) for m in summary.errors.values())

            gc.callbacks.remove(_gc_timer)
            if profiler is not None and profile is not None:
                profiler.dump_stats(f"{profile}.{projects}")
            # Peak Python allocations during one more unchanged pass, traced on its own.
            tracemalloc.start()
            tracemalloc.reset_peak()
            await runner.run_pass(trigger="cli")
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss, max_rss = _rss_mb(), _max_rss_mb()

            # 1 % of the repos turn red.
            red = [f"{OWNER}/p{i:05d}" for i in range(1, projects + 1, 100)]
            reply = await control.post(f"{url}/_scale/red", json={"repos": red}, timeout=30.0)
            reply.raise_for_status()
            statements = 0
            t0 = time.perf_counter()
            red_summary = await runner.run_pass(trigger="cli")
            red_seconds = time.perf_counter() - t0
            red_statements = statements
            errors.update(_error_kind(m) for m in red_summary.errors.values())
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    finally:
        await engine.dispose()
        gc.unfreeze()  # the next size starts as a new process would

    median_reqs = statistics.median(reqs)
    return ScaleResult(
        projects=projects,
        pass_seconds=statistics.median(times),
        pass_seconds_min=min(times),
        timed_passes=len(times),
        client_cpu_seconds=statistics.median(client_cpu),
        client_cpu_seconds_min=min(client_cpu),
        gc_ms=statistics.median(gc_times) * 1000,
        gc_full=gc_full,
        server_cpu_seconds=statistics.median(server_cpu),
        load_average=load,
        etag_what_if=etag_entries is not None,
        requests_per_project=median_reqs / projects,
        not_modified_share=(statistics.median(nm) / median_reqs) if median_reqs else 0.0,
        server_requests_per_project=statistics.median(server_reqs) / projects,
        db_statements=int(statistics.median(stmts)),
        db_statements_first=db_first,
        first_pass_seconds=first_seconds,
        first_cpu_seconds=first_cpu,
        first_requests_per_project=first.forge_requests / projects,
        tracemalloc_peak_mb=peak / 2**20,
        rss_mb=rss,
        max_rss_mb=max_rss,
        red_projects=len(red),
        red_started=len(red_summary.attempts_started),
        red_dispatched=len(dispatcher.dispatched),
        red_pass_seconds=red_seconds,
        red_requests=red_summary.forge_requests,
        red_db_statements=red_statements,
        errors=dict(errors),
        etag_entries=forge._etag_entries,
    )


def run(
    sizes: Sequence[int], *, passes: int = 3, etag_entries: int | None = None, profile: str | None = None
) -> list[ScaleResult]:
    """Measure every size in `sizes` (ascending, so the process RSS high-water mark belongs to the last)."""
    results: list[ScaleResult] = []
    with tempfile.TemporaryDirectory(prefix="greenloop-bench-scale-") as tmp:
        for n in sorted(sizes):
            t0 = time.perf_counter()
            results.append(asyncio.run(_measure(n, passes, Path(tmp), etag_entries, profile)))
            print(f"bench.scale: N={n} measured in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return results


def _goal_lines(results: Sequence[ScaleResult]) -> list[str]:
    lines: list[str] = []
    at_1000 = next((r for r in results if r.projects == 1000), None)
    if at_1000 is not None:
        ok_time = at_1000.pass_seconds < GOAL_SECONDS_AT_1000
        ok_reqs = at_1000.requests_per_project <= 1.0 and at_1000.not_modified_share >= 0.999
        lines.append(
            f"- Goal: an unchanged pass over 1,000 projects in under {GOAL_SECONDS_AT_1000:.0f} s: "
            f"**{'met' if ok_time else 'NOT met'}** ({at_1000.pass_seconds:.2f} s median)."
        )
        lines.append(
            "- Goal: at most one conditional request per project on an unchanged pass: "
            f"**{'met' if ok_reqs else 'NOT met'}** ({at_1000.requests_per_project:.2f} requests/project, "
            f"{at_1000.not_modified_share:.0%} answered 304)."
        )
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        grows = hi.db_statements > lo.db_statements * 2
        lines.append(
            "- Goal: database statements per unchanged pass O(1), not O(N): "
            f"**{'NOT met' if grows else 'met'}** ({lo.db_statements} at N={lo.projects:,}, "
            f"{hi.db_statements} at N={hi.projects:,})."
        )
    for r in results:
        if r.projects not in (1000, 10_000):
            continue
        line = (
            f"- RSS at N={r.projects:,} (realistic pages: 30 runs in GitHub's full field set, 4 jobs each): "
            f"{r.rss_mb:,.0f} MiB now, {r.max_rss_mb:,.0f} MiB high-water"
        )
        if r.projects == 10_000:
            met = "met" if r.max_rss_mb < GOAL_RSS_MIB_AT_10000 else "NOT met"
            line += f"; goal < {GOAL_RSS_MIB_AT_10000:,} MiB: **{met}**"
        lines.append(line + ".")
    for r in results:
        if r.projects not in (1000, 10_000):
            continue
        cpu_us = r.client_cpu_seconds / r.projects * 1e6
        lines.append(
            f"- Goal (issue 20): an unchanged pass at N={r.projects:,} costs at most {GOAL_CPU_US_PER_PROJECT} µs "
            f"of reconciler CPU per project: **{'met' if cpu_us <= GOAL_CPU_US_PER_PROJECT else 'NOT met'}** "
            f"({cpu_us:,.0f} µs; 1-minute load average {r.load_average:.1f} on {os.cpu_count()} CPUs)."
        )
        if r.projects == 10_000:
            lines.append(
                f"- Goal (issue 20): an unchanged pass at N=10,000 in under {GOAL_SECONDS_AT_10000:.0f} s wall: "
                f"**{'met' if r.pass_seconds < GOAL_SECONDS_AT_10000 else 'NOT met'}** ({r.pass_seconds:.1f} s "
                f"median; the forge process spent {r.server_cpu_seconds:.1f} s CPU answering it)."
            )
    misses = [r for r in results if r.not_modified_share < 0.999]
    if misses:
        sizes = ", ".join(f"{r.projects:,} ({r.etag_entries:,} ETag entries)" for r in misses)
        lines.append(
            f"- Finding: at N = {sizes} unchanged passes are not all 304s: the forge client's ETag cache "
            "(`reconciler.runtime.forge_client`) evicts listings before the next pass asks for them again."
        )
    crashed = {k: n for r in results for k, n in r.errors.items() if k.startswith("internal error")}
    if crashed:
        lines.append(f"- Finding: projects crashed with internal errors during passes: {crashed}.")
    return lines


def render_table(results: Sequence[ScaleResult]) -> str:
    """The figure as Markdown: one row per size, then the goals and notes."""
    rows = [
        "| projects | unchanged pass: wall (median / min) | CPU: reconciler / forge | forge req/project "
        "| 304 share | DB statements/pass | tracemalloc peak | RSS now / max | 1 % red: attempts started "
        "| dispatched | red pass: wall | red pass: requests / DB statements | project errors |",
        "|" + "---|" * 13,
    ]
    for r in results:
        errors = ", ".join(f"{n} x {kind}" for kind, n in sorted(r.errors.items())) or "0"
        rows.append(
            f"| {r.projects:,} | {r.pass_seconds * 1000:,.0f} / {r.pass_seconds_min * 1000:,.0f} ms "
            f"| {r.client_cpu_seconds * 1000:,.0f} / {r.server_cpu_seconds * 1000:,.0f} ms "
            f"| {r.requests_per_project:.2f} | {r.not_modified_share:.0%} "
            f"| {r.db_statements} (cold first pass {r.db_statements_first}) | {r.tracemalloc_peak_mb:,.1f} MiB "
            f"| {r.rss_mb:,.0f} / {r.max_rss_mb:,.0f} MiB | {r.red_started} of {r.red_projects} "
            f"| {r.red_dispatched} | {r.red_pass_seconds * 1000:,.0f} ms "
            f"| {r.red_requests} / {r.red_db_statements} | {errors} |"
        )
    timed = sorted({r.timed_passes for r in results})
    what_if = ": a what-if, NOT the runtime's default" if any(r.etag_what_if for r in results) else ""
    loads = ", ".join(f"{r.load_average:.1f} at N={r.projects:,}" for r in results)
    notes = [
        "",
        "Forge: `fixtures/forge/scale.py` in its own process, real loopback HTTP (raw asyncio, 127.0.0.1); "
        "client: `reconciler.runtime.forge_client` (API GETs over `mcp_server.conditional_get`; GitHub App token, "
        "ETag cache of "
        + ", ".join(f"{r.etag_entries:,} entries at N={r.projects:,}" for r in results)
        + f"{what_if}). "
        "Store: SQLite file (WAL). "
        f"`server.concurrency` = {CONCURRENCY}. Unchanged pass: one warm-up pass, then the median of "
        f"{'/'.join(str(t) for t in timed)} timed pass(es). Forge requests as the client counted them (the "
        "server's own count: "
        + ", ".join(f"{r.server_requests_per_project:.2f}/project at N={r.projects:,}" for r in results)
        + "). CPU: user+system seconds of this process and of the forge process during the pass (wall well "
        "above their sum means waiting on a busy machine: 1-minute load average " + loads + " on "
        f"{os.cpu_count()} CPU(s), shared with other work). tracemalloc peak: one extra unchanged pass under "
        "tracing. RSS: this process now / its high-water mark (sizes run in ascending order). The red pass: "
        "1 % of repos get a new failed run on a new commit; the dispatcher records calls and runs no agent.",
        "",
        *_goal_lines(results),
        "",
        bench_line(
            "scale",
            {
                # The headline: the largest size measured; then every size's figures under its own prefix.
                "n": results[-1].projects,
                "cpu_us_per_project": results[-1].client_cpu_seconds / results[-1].projects * 1e6,
                "rss_mib": results[-1].rss_mb,
                **{
                    f"n{r.projects}_{key}": value
                    for r in results
                    for key, value in (
                        ("cpu_us_per_project", r.client_cpu_seconds / r.projects * 1e6),
                        ("cpu_us_per_project_min", r.client_cpu_seconds_min / r.projects * 1e6),
                        ("pass_ms", r.pass_seconds * 1000),
                        ("req_per_project", r.requests_per_project),
                        ("rss_mib", r.rss_mb),
                        ("gc_ms", r.gc_ms),
                        ("gc_full", r.gc_full),
                    )
                },
            },
        ),
    ]
    return "\n".join(rows + notes)


def section(*, quick: bool) -> str:
    """Figure 1 for `python -m bench`."""
    sizes = (100, 1000) if quick else (100, 1000, 10_000)
    return render_table(run(sizes, passes=1 if quick else 3))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 and 1,000 projects, 1 timed pass")
    parser.add_argument("--sizes", default=None, help="comma-separated sizes, e.g. 100,1000")
    parser.add_argument("--passes", type=int, default=None, help="timed unchanged passes per size (median)")
    parser.add_argument("--json", action="store_true", help="print raw results as JSON after the table")
    parser.add_argument(
        "--etag-entries",
        type=int,
        default=None,
        help="what-if: size the client's ETag cache (default: as reconciler/runtime.py builds it)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="PATH",
        help="cProfile (main thread CPU time) the timed unchanged passes into PATH.<N> (pstats; the CPU "
        "figures then include the profiler's overhead)",
    )
    args = parser.parse_args(argv)
    sizes = (
        [int(s) for s in args.sizes.split(",")] if args.sizes else ([100, 1000] if args.quick else [100, 1000, 10_000])
    )
    passes = args.passes or (1 if args.quick else 3)
    results = run(sizes, passes=passes, etag_entries=args.etag_entries, profile=args.profile)
    print(render_table(results))
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
