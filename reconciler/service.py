"""The long-running and one-shot entry points: `greenloop run` and `greenloop reconcile`.

Scheduled passes take the database pass lease first, so several replicas on one PostgreSQL never run the
same pass at once (the one-active-attempt index stays the last wall). Debug and CLI passes on a subset
run without the lease: they are idempotent, and the index refuses any duplicate attempt.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO

from infra.jsonlog import configure_json_logging, log_event
from infra.settings import load_config
from policy.config import GreenloopConfig
from policy.errors import ConfigError
from reconciler.context import ReconcilerContext
from reconciler.dispatch import BackendFactory
from reconciler.errors import ReconcilerError
from reconciler.interrupt import SignalWatch, cancel_here, exit_code, until_signal
from reconciler.pacing import tick_seconds
from reconciler.progress import PassProgress
from reconciler.runner import Runner, UnknownProjects, reconcile, select_projects
from reconciler.runtime import backend_from_env, open_runtime
from reconciler.store.state import default_holder, pass_lease
from reconciler.summary import RunSummary, Trigger

__all__ = [
    "leased_reconcile",
    "one_line",
    "print_summary",
    "reconcile_command",
    "run_command",
    "serve",
]

logger = logging.getLogger("greenloop.service")


async def leased_reconcile(
    ctx: ReconcilerContext,
    *,
    repos: Sequence[str] | None = None,
    trigger: Trigger = "schedule",
    dry_run: bool = False,
    runner: Runner | None = None,
    paced: bool = False,
) -> RunSummary:
    """A pass (by `runner`, default one of its own), under the pass lease when it is a scheduled pass; a
    replica without the lease skips. `paced`: the scheduled resync's share only (`Runner.run_pass`)."""
    runner = runner if runner is not None else Runner(ctx)
    if trigger != "schedule":
        return await runner.run_pass(repos=repos, trigger=trigger, dry_run=dry_run)
    ttl = max(30.0, ctx.config.server.interval_seconds * 2)
    async with pass_lease(ctx.sessions, holder=default_holder(), ttl_seconds=ttl) as acquired:
        if not acquired:
            log_event(logger, "pass_skipped_lease_held", trigger=trigger)
            ctx.metrics.observe_pass_skipped("lease_held")
            summary = RunSummary(trigger=trigger, dry_run=dry_run, started_at=datetime.now(UTC))
            summary.count_skip("lease_held_by_another_replica")
            return summary
        return await runner.run_pass(repos=repos, trigger=trigger, dry_run=dry_run, paced=paced)


def one_line(exc: BaseException) -> str:
    """An error as the one line a terminal shows (`greenloop: ...`): whitespace and newlines folded."""
    return "greenloop: " + " ".join(str(exc).split())


def print_summary(summary: RunSummary, *, as_json: bool, out: TextIO | None = None) -> None:
    """Print a pass summary as JSON or as a short human report (on `out`, default stdout)."""
    out = out if out is not None else sys.stdout
    if as_json:
        print(summary.model_dump_json(indent=2), file=out)
        return
    head = "dry run: " if summary.dry_run else ""
    print(
        f"{head}{summary.projects_scanned} project(s) scanned, {summary.projects_red} red, "
        f"{len(summary.attempts_started)} attempt(s) {'would start' if summary.dry_run else 'started'}, "
        f"{summary.attempts_already_active} already active, {len(summary.reruns)} re-run(s), "
        f"{summary.duration_ms:.0f} ms"
        + (f", forge budget left {summary.rate_limit_remaining}" if summary.rate_limit_remaining is not None else "")
        + (f", {summary.projects_deferred} project(s) deferred" if summary.projects_deferred else ""),
        file=out,
    )
    for red in summary.red:
        why = f" ({red.reason}: {red.detail})" if red.reason else ""
        print(f"  {red.project:<20} {red.job:<16} run {red.run_id:<12} {red.decision}{why}", file=out)
    for t in summary.transitions:
        print(f"  {t.project:<20} attempt {t.attempt_id}: {t.from_status} -> {t.to_status} ({t.reason})", file=out)
    for project, error in summary.errors.items():
        print(f"  {project:<20} error: {error}", file=out)


def _backend(config: GreenloopConfig, *, required: bool) -> tuple[BackendFactory | None, tuple[str, ...]]:
    try:
        return backend_from_env(config)
    except ConfigError:
        if required:
            raise
        return None, ()


def reconcile_command(
    config_path: str | None,
    *,
    repos: Sequence[str] | None,
    dry_run: bool,
    as_json: bool,
    wait_seconds: float = 900,
    out: TextIO | None = None,
) -> int:
    """`greenloop reconcile`: one pass; started attempts are run to their end before the command exits.

    On a terminal it shows progress (`reconciler.progress`). SIGINT/SIGTERM cancel the attempts this process
    runs, with the reason `interrupted: SIGINT` (`reconciler.interrupt`), and exit 130/143.
    """
    out = out if out is not None else sys.stdout
    config = load_config(config_path)
    backend_for, secrets = _backend(config, required=not dry_run)
    signame: str | None = None
    cancelled: list[str] = []
    shown = False  # the summary was shown with the progress already

    async def main() -> RunSummary | None:
        nonlocal signame, shown
        async with open_runtime(config, backend_for=backend_for, secrets=secrets) as ctx:
            progress = PassProgress(ctx, out) if PassProgress.wanted(out, as_json=as_json) else None
            shown = progress is not None
            with SignalWatch() as watch:
                summary = await until_signal(_pass_and_agents(ctx, repos, dry_run, wait_seconds, progress), watch)
                if summary is None:
                    signame = watch.name or "signal"
                    cancelled.extend(c.attempt.id for c in await cancel_here(ctx, signame))
                    if progress is not None:
                        await progress.final_table(cancelled)
            return summary

    try:
        summary = asyncio.run(main())
    except UnknownProjects as exc:
        print(one_line(exc), file=sys.stderr)
        return 2
    except ReconcilerError as exc:  # the store's errors (unreachable, locked, unwritable): one line, no traceback
        print(one_line(exc), file=sys.stderr)
        return 1
    if summary is None:
        what = f"cancelled attempt(s) {', '.join(cancelled)}" if cancelled else "no attempt was running"
        print(f"greenloop: interrupted by {signame}: {what}", file=sys.stderr)
        return exit_code(signame or "SIGINT")
    if not shown:
        print_summary(summary, as_json=as_json, out=out)
    return 1 if summary.errors else 0


async def _pass_and_agents(
    ctx: ReconcilerContext,
    repos: Sequence[str] | None,
    dry_run: bool,
    wait_seconds: float,
    progress: PassProgress | None,
) -> RunSummary:
    """The pass, then its agents run to their end (shown as they go when `progress` is given)."""
    if progress is not None:
        progress.pass_started(len(select_projects(ctx, repos)), dry_run=dry_run)
    summary = await reconcile(ctx, repos=repos, trigger="cli", dry_run=dry_run)
    if ctx.dispatcher is None or not summary.attempts_started:
        if progress is not None:
            print_summary(summary, as_json=False, out=progress.out)
        return summary
    ids = [a.attempt_id for a in summary.attempts_started if a.attempt_id]
    if progress is None:
        await ctx.dispatcher.wait_idle(wait_seconds)
        return summary
    print_summary(summary, as_json=False, out=progress.out)  # the pass first, then its agents as they go
    progress.pass_done(summary)
    follow = asyncio.create_task(progress.follow(ids))
    try:
        await ctx.dispatcher.wait_idle(wait_seconds)
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
    await progress.final_table(ids)
    return summary


async def serve(
    config: GreenloopConfig,
    *,
    backend_for: BackendFactory | None,
    secrets: tuple[str, ...] = (),
    allow_no_token: bool = False,
    on_listening: Callable[[str, int], None] | None = None,
) -> None:
    """Scheduled passes plus the HTTP API on `config`, until SIGTERM/SIGINT (`greenloop run`, and `run --dev`)."""
    from reconciler.scheduler import run_service

    async with (
        open_runtime(config, backend_for=backend_for, secrets=secrets) as ctx,
        Runner(ctx, freeze_heap=True) as runner,
    ):
        # One runner for the process: scheduled passes and enqueued keys share it (and its requeues). After its
        # first pass it freezes the heap built so far (`reconciler.runner.settle_heap`).
        async def scheduled(
            ctx: ReconcilerContext,
            *,
            repos: Sequence[str] | None = None,
            trigger: Trigger = "schedule",
            dry_run: bool = False,
        ) -> RunSummary:
            return await leased_reconcile(
                ctx, repos=repos, trigger=trigger, dry_run=dry_run, runner=runner, paced=trigger == "schedule"
            )

        await run_service(
            ctx,
            interval_seconds=tick_seconds(config),  # the paced resync's tick (reconciler.pacing)
            host=config.server.http_host,
            port=config.server.http_port,
            api_token=config.server.api_token,
            reconcile_fn=scheduled,
            enqueue=runner.enqueue,  # webhooks and reported runs wake the same runner, coalesced
            allow_no_token=allow_no_token,
            on_listening=on_listening,
        )


def run_command(config_path: str | None) -> int:
    """`greenloop run`: scheduled passes plus the HTTP API, until SIGTERM/SIGINT."""
    configure_json_logging()
    config = load_config(config_path)
    backend_for, secrets = _backend(config, required=True)
    try:
        asyncio.run(serve(config, backend_for=backend_for, secrets=secrets))
    except ReconcilerError as exc:
        print(one_line(exc), file=sys.stderr)
        return 1
    return 0
