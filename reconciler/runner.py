"""The runner: which keys (project names) get reconciled when, how many at once, and what is recorded.

It owns everything around the verb (`reconciler.reconcile.reconcile_project`): choosing the keys, the
fan-out under `server.concurrency`, one project's error never stopping the others, the pass summary, its
metrics and its row in the store, and the keys to reconcile again.

Keys come from passes (`run_pass`: the schedule, the CLI, the debug endpoint, the demo) and from events
(`enqueue`: a webhook, a reported run; the next issue plugs them in). Enqueued keys are coalesced: a key
already waiting is not added twice, and every key waiting when the worker wakes is reconciled in one pass
(trigger `event`). A `Result.requeue_after` (the gate said when its answer can change, e.g. the end of a
backoff) enqueues the key again at that time, while the runner is started.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType

from infra.jsonlog import bind_context, log_event
from mcp_server.errors import ForgeError
from policy.config import ProjectConfig
from reconciler.context import ReconcilerContext
from reconciler.errors import ReconcilerError
from reconciler.pacing import pace_pass
from reconciler.reconcile import PassScope, Result, load_scope, reconcile_project
from reconciler.repair import repair_ended_attempts
from reconciler.store.passes import record_pass
from reconciler.summary import RunSummary, Trigger

__all__ = ["Runner", "UnknownProjects", "reconcile", "select_projects", "settle_heap"]

logger = logging.getLogger("greenloop.reconcile")


class UnknownProjects(ReconcilerError):
    """Names given to a pass that match no configured project (`names` lists them)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"Unknown project(s): {', '.join(repr(n) for n in names)}.")
        self.names = list(names)


def select_projects(ctx: ReconcilerContext, repos: Sequence[str] | None) -> list[ProjectConfig]:
    """The configured projects named in `repos` (project names or `owner/name`), or all of them.

    Raises:
        UnknownProjects: some names match no project.
    """
    projects = list(ctx.config.projects)
    if repos is None:
        return projects
    by_key = {p.name: p for p in projects} | {p.repo: p for p in projects}
    unknown = [r for r in repos if r not in by_key]
    if unknown:
        raise UnknownProjects(unknown)
    chosen: dict[str, ProjectConfig] = {}
    for r in repos:
        chosen[by_key[r].name] = by_key[r]
    return list(chosen.values())


def settle_heap() -> None:
    """Collect every generation, then freeze what survives (`gc.freeze`): the long-lived objects a process
    builds in its first pass stop counting toward, and being walked by, every later full collection (at
    10,000 projects a full collection inside a pass cost ~0.3-0.4 s, frozen ~30 ms; docs/benchmarks.md).
    The trade-off: cyclic garbage among frozen objects is never freed, so it collects first and is meant to
    run once, when the long-lived state is built."""
    gc.collect()
    gc.freeze()


class Runner:
    """Runs the verb over keys: passes on demand, and enqueued keys in the background once started."""

    def __init__(self, ctx: ReconcilerContext, *, freeze_heap: bool = False) -> None:
        """`freeze_heap` (the long-running service): after the first pass over every project, collect once and
        move every object alive then (config, caches, connections, the observations) out of the garbage
        collector's sight (`settle_heap`), so later full collections do not walk them again."""
        self.ctx = ctx
        self._freeze_heap = freeze_heap
        self._pending: dict[str, None] = {}  # an ordered set: the keys waiting for the event worker
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # set: no key waiting, no requeue timer set, no event pass running
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._requeues: dict[str, asyncio.TimerHandle] = {}
        # One pass at a time per runner: a scheduled tick and an event pass never reconcile a key at once (two
        # would both act on what each read, e.g. both merge one pull request). Paced ticks are short.
        self._pass_lock = asyncio.Lock()
        self.requeue_after: dict[str, timedelta] = {}
        """The last `Result.requeue_after` of each key that asked for one."""

    # -- passes ---------------------------------------------------------------------------------------------

    async def run_pass(
        self,
        *,
        repos: Sequence[str] | None = None,
        trigger: Trigger = "cli",
        dry_run: bool = False,
        paced: bool = False,
    ) -> RunSummary:
        """Reconcile `repos` (default: every project) concurrently and say what was done.

        `paced` (the service's scheduled resync, over every project): only this tick's share of the projects
        and those with an active attempt, within the forge budget (`reconciler.pacing.pace_pass`).

        Raises:
            UnknownProjects: `repos` names a project that isn't configured (nothing was done).
            StoreError: the store failed before any project was looked at.
        """
        async with self._pass_lock:
            summary = await self._run_pass(repos=repos, trigger=trigger, dry_run=dry_run, paced=paced)
            if self._freeze_heap and repos is None:  # the first pass over every project built the caches
                self._freeze_heap = False  # once per process: each freeze would pin that pass's garbage too
                settle_heap()
            return summary

    async def _run_pass(
        self, *, repos: Sequence[str] | None, trigger: Trigger, dry_run: bool, paced: bool
    ) -> RunSummary:
        ctx = self.ctx
        projects = select_projects(ctx, repos)
        share = await pace_pass(ctx, projects) if paced and repos is None else None
        if share is not None:  # the periodic resync: this tick's share of the projects, within the budget
            projects = share.projects
        t0 = time.perf_counter()
        forge_before = (ctx.forge.stats.requests, ctx.forge.stats.not_modified) if ctx.forge else (0, 0)
        scope = await load_scope(ctx, projects, trigger=trigger, dry_run=dry_run)
        summary = scope.summary
        queue = iter(projects)

        async def worker() -> None:
            # `server.concurrency` workers share one iterator: no task and no semaphore wait per project.
            for project in queue:
                with bind_context(project=project.name, trigger=trigger):
                    result = await self._one(project.name, scope)
                if result is not None and not dry_run:
                    self._note_result(project.name, result)

        await asyncio.gather(*(worker() for _ in range(min(ctx.config.server.concurrency, len(projects)))))
        await repair_ended_attempts(ctx, projects, summary=summary, dry_run=dry_run)
        summary.projects_scanned = len(projects)
        summary.projects_red = len({r.project for r in summary.red})
        summary.duration_ms = (time.perf_counter() - t0) * 1000
        if ctx.forge:
            summary.forge_requests = ctx.forge.stats.requests - forge_before[0]
            summary.forge_not_modified = ctx.forge.stats.not_modified - forge_before[1]
            summary.rate_limit_remaining = ctx.forge.stats.rate_remaining
        if share is not None:
            summary.projects_deferred = share.deferred
            ctx.caches.resync.measured(len(projects), summary.forge_requests)
        if not dry_run:
            await self._record(summary)
        ctx.metrics.observe_pass(summary)
        log_event(
            logger,
            "reconcile_pass",
            trigger=trigger,
            dry_run=dry_run,
            projects_scanned=summary.projects_scanned,
            projects_red=summary.projects_red,
            attempts_started=len(summary.attempts_started),
            attempts_already_active=summary.attempts_already_active,
            skips=summary.skips,
            transitions=len(summary.transitions),
            errors=summary.errors,
            duration_ms=round(summary.duration_ms, 1),
            forge_requests=summary.forge_requests,
            forge_not_modified=summary.forge_not_modified,
            rate_limit_remaining=summary.rate_limit_remaining,
            projects_deferred=summary.projects_deferred,
        )
        return summary

    async def reconcile(
        self,
        ctx: ReconcilerContext,
        *,
        repos: Sequence[str] | None = None,
        trigger: Trigger = "cli",
        dry_run: bool = False,
    ) -> RunSummary:
        """`run_pass` with the signature of `reconcile()` (the scheduler's and the API's `ReconcileFn`)."""
        if ctx is not self.ctx:
            raise ValueError("Runner.reconcile: a runner reconciles with the context it was built with")
        return await self.run_pass(repos=repos, trigger=trigger, dry_run=dry_run)

    async def _one(self, key: str, scope: PassScope) -> Result | None:
        """The verb for one key; its error is the key's error in the summary, never the pass's."""
        try:
            return await reconcile_project(self.ctx, key, scope=scope)
        except (ForgeError, ReconcilerError) as exc:
            scope.summary.errors[key] = str(exc)
            log_event(logger, "project_error", level=logging.WARNING, error=str(exc))
        except Exception as exc:  # one project's bug must not stop the others
            scope.summary.errors[key] = f"internal error: {exc.__class__.__name__}"
            logger.exception("project_crashed")
        return None

    async def _record(self, summary: RunSummary) -> None:
        await record_pass(
            self.ctx.sessions,
            trigger=summary.trigger,
            started_at=summary.started_at,
            finished_at=datetime.now(UTC),
            projects_scanned=summary.projects_scanned,
            projects_red=summary.projects_red,
            attempts_started=len(summary.attempts_started),
            attempts_deduplicated=summary.attempts_already_active,
            summary=summary.model_dump_json(),
        )

    # -- events -----------------------------------------------------------------------------------------------

    def enqueue(self, key: str) -> None:
        """Ask for `key` to be reconciled soon (coalesced with any wait already queued for it).

        Raises:
            UnknownProjects: `key` is not a configured project name.
        """
        if not any(p.name == key for p in self.ctx.config.projects):
            raise UnknownProjects([key])
        self._pending[key] = None
        self._idle.clear()
        self._wake.set()

    @property
    def pending(self) -> list[str]:
        """The keys waiting for the event worker, in the order they were first enqueued."""
        return list(self._pending)

    def _note_result(self, key: str, result: Result) -> None:
        if result.requeue_after is None:
            self.requeue_after.pop(key, None)
            return
        self.requeue_after[key] = result.requeue_after
        if self._worker is None:
            return  # not started: nothing would run the requeued key
        old = self._requeues.pop(key, None)
        if old is not None:
            old.cancel()
        delay = max(result.requeue_after.total_seconds(), 0.0)
        self._idle.clear()
        self._requeues[key] = asyncio.get_running_loop().call_later(delay, self._requeue, key)

    def _requeue(self, key: str) -> None:
        self._requeues.pop(key, None)
        self.enqueue(key)

    async def wait_idle(self) -> None:
        """Wait until no key is waiting, no requeue is due later and no event pass is running (tests, demo)."""
        await self._idle.wait()

    async def start(self) -> None:
        """Start the background worker that reconciles enqueued keys."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="greenloop-runner")

    async def aclose(self) -> None:
        """Stop the worker (a pass it is running is cancelled; the next pass repairs) and the requeue timers."""
        for handle in self._requeues.values():
            handle.cancel()
        self._requeues.clear()
        if not self._pending:
            self._idle.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            keys, self._pending = list(self._pending), {}
            if not keys:
                continue
            try:
                await self.run_pass(repos=keys, trigger="event")
            except (ReconcilerError, ForgeError) as exc:
                log_event(logger, "event_pass_failed", level=logging.WARNING, keys=keys, error=str(exc))
                self.ctx.metrics.observe_pass_failed("event")
            except Exception:  # the worker outlives a bug in one pass
                logger.exception("event_pass_crashed")
                self.ctx.metrics.observe_pass_failed("event")
            if not self._pending and not self._requeues:
                self._idle.set()


async def reconcile(
    ctx: ReconcilerContext,
    *,
    repos: Sequence[str] | None = None,
    trigger: Trigger = "cli",
    dry_run: bool = False,
) -> RunSummary:
    """One pass over `repos` (default: every project) by a runner of its own; see `Runner.run_pass`.

    Raises:
        UnknownProjects: `repos` names a project that isn't configured (nothing was done).
    """
    return await Runner(ctx).run_pass(repos=repos, trigger=trigger, dry_run=dry_run)
