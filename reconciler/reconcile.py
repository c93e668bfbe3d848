"""One reconcile pass: observe every job, decide with the policy gate, advance active attempts.

`reconcile()` recomputes what to do from current state on every call (never from remembered events), so a
missed event, a crash halfway or a restart is repaired by the next pass. It starts attempts by inserting
their row (the database's partial unique index is the lock) and hands them to the dispatcher; it never
waits for an agent. One project's error never stops the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import sqlalchemy as sa

from mcp_server.errors import ForgeError
from mcp_server.jsonlog import bind_context, log_event
from policy.config import ProjectConfig
from policy.gate import AttemptRecord, ObservedFailure, decide, failure_fingerprint
from policy.types import TERMINAL_STATUSES, AttemptStatus, SkipReason
from reconciler.context import ReconcilerContext
from reconciler.errors import ReconcilerError
from reconciler.finish import attempt_finished
from reconciler.observe import ObservedRun, ProjectObservation, observe_actions, observe_reported
from reconciler.store import attempts as store
from reconciler.store.models import Attempt, Project, Transition, utcnow
from reconciler.store.passes import record_pass
from reconciler.store.projects import reset_escalation, sync_projects
from reconciler.store.state import kill_switch_enabled
from reconciler.store.translate import rowcount, with_retry
from reconciler.summary import RedJob, RunSummary, StartedAttempt, TransitionNote, Trigger

__all__ = ["RATE_LIMIT_LOW", "RESUMED", "UnknownProjects", "claim_resume", "reconcile", "select_projects"]

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


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


async def reconcile(
    ctx: ReconcilerContext,
    *,
    repos: Sequence[str] | None = None,
    trigger: Trigger = "cli",
    dry_run: bool = False,
) -> RunSummary:
    """Run one pass over `repos` (default: every project) and say what it did.

    Raises:
        UnknownProjects: `repos` names a project that isn't configured (nothing was done).
    """
    projects = select_projects(ctx, repos)
    started = _now()
    t0 = time.perf_counter()
    summary = RunSummary(trigger=trigger, dry_run=dry_run, started_at=started)
    forge_before = (ctx.forge.stats.requests, ctx.forge.stats.not_modified) if ctx.forge else (0, 0)
    if not ctx.projects_synced:
        await sync_projects(ctx.sessions, {p.name: p.repo for p in ctx.config.projects})
        ctx.projects_synced = True

    names = [p.name for p in projects]
    async with ctx.sessions() as session:
        rows = {r.name: r for r in (await session.scalars(sa.select(Project).where(Project.name.in_(names)))).all()}
        active = {
            a.project: a
            for a in (
                await session.scalars(
                    sa.select(Attempt).where(
                        Attempt.project.in_(names), Attempt.status.not_in([s.value for s in TERMINAL_STATUSES])
                    )
                )
            ).all()
        }
        last_failures: dict[str, datetime] = {
            name: at
            for name, at in (
                await session.execute(
                    sa.select(Attempt.project, sa.func.max(Attempt.finished_at))
                    .where(
                        Attempt.project.in_(names),
                        Attempt.status.in_([AttemptStatus.FAILED.value, AttemptStatus.ESCALATED.value]),
                    )
                    .group_by(Attempt.project)
                )
            )
            if at is not None
        }
    reported = await observe_reported(ctx.sessions, projects)
    kill_switch = await _kill_switch(ctx)
    semaphore = asyncio.Semaphore(ctx.config.server.concurrency)

    async def one(project: ProjectConfig) -> None:
        async with semaphore:
            with bind_context(project=project.name, trigger=trigger):
                try:
                    await _reconcile_project(
                        ctx,
                        project,
                        row=rows.get(project.name),
                        active=active.get(project.name),
                        last_failure=_aware(last_failures.get(project.name)),
                        reported=reported.get(project.name),
                        kill_switch=kill_switch,
                        dry_run=dry_run,
                        summary=summary,
                    )
                except (ForgeError, ReconcilerError) as exc:
                    summary.errors[project.name] = str(exc)
                    log_event(logger, "project_error", level=logging.WARNING, error=str(exc))
                except Exception as exc:  # one project's bug must not stop the others
                    summary.errors[project.name] = f"internal error: {exc.__class__.__name__}"
                    logger.exception("project_crashed")

    await asyncio.gather(*(one(p) for p in projects))
    summary.projects_scanned = len(projects)
    summary.projects_red = len({r.project for r in summary.red})
    summary.duration_ms = (time.perf_counter() - t0) * 1000
    if ctx.forge:
        summary.forge_requests = ctx.forge.stats.requests - forge_before[0]
        summary.forge_not_modified = ctx.forge.stats.not_modified - forge_before[1]
    if not dry_run:
        await _record_pass(ctx, summary)
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
    )
    return summary


async def _kill_switch(ctx: ReconcilerContext) -> bool:
    """The global kill switch: on in the config, or flipped at run time (POST /kill-switch)."""
    return ctx.config.server.kill_switch or await kill_switch_enabled(ctx.sessions)


RATE_LIMIT_LOW = "rate_limit_low"
"""Skip reason: the forge's request budget is nearly spent, so a project without an active attempt waits."""


def _rate_limit_low(ctx: ReconcilerContext) -> bool:
    """Whether the forge's last reported budget is below the reserve and has not reset since."""
    if ctx.forge is None:
        return False
    stats = ctx.forge.stats
    if stats.rate_remaining is None or stats.rate_remaining >= ctx.rate_limit_reserve:
        return False
    return stats.rate_reset is None or time.time() < stats.rate_reset


async def _observe(
    ctx: ReconcilerContext,
    project: ProjectConfig,
    reported: ProjectObservation | None,
    *,
    urgent: bool,
    summary: RunSummary,
) -> ProjectObservation:
    obs = ProjectObservation()
    if ctx.forge is not None and not urgent and _rate_limit_low(ctx):
        # Non-urgent observation waits for the budget to reset; attempts in flight keep theirs.
        summary.count_skip(RATE_LIMIT_LOW)
        log_event(logger, "observation_skipped", reason=RATE_LIMIT_LOW, rate_remaining=ctx.forge.stats.rate_remaining)
    elif ctx.forge is not None:
        previous = ctx.observations.get(project.name)
        actions, _changed = await observe_actions(
            ctx.forge,
            project,
            previous=previous if isinstance(previous, ProjectObservation) else None,
            job_cache=ctx.job_cache,
        )
        ctx.observations[project.name] = actions
        for run in actions.runs:
            obs.add(run)
    if reported is not None:
        for run in reported.runs:
            obs.add(run)
    obs.finish()
    return obs


async def _reconcile_project(
    ctx: ReconcilerContext,
    project: ProjectConfig,
    *,
    row: Project | None,
    active: Attempt | None,
    last_failure: datetime | None,
    reported: ProjectObservation | None,
    kill_switch: bool,
    dry_run: bool,
    summary: RunSummary,
) -> None:
    obs = await _observe(ctx, project, reported, urgent=active is not None, summary=summary)
    if active is not None:
        active = await _advance(ctx, project, active, obs, dry_run=dry_run, summary=summary)

    red = [run for job, run in sorted(obs.latest.items()) if not run.green and job not in obs.in_progress]
    if not red:
        reset_at = _aware(row.escalation_reset_at) if row is not None else None
        if obs.latest and not dry_run and last_failure is not None and (reset_at is None or last_failure > reset_at):
            await reset_escalation(ctx.sessions, project.name)  # green again: earlier failures no longer count
        return

    paused = row.paused if row is not None else False
    effective = project.model_copy(update={"paused": project.paused or paused})
    history: list[AttemptRecord] | None = None
    for run in red:
        if history is None:
            history = await _history(ctx, project.name, reset_at=_aware(row.escalation_reset_at) if row else None)
        failure = ObservedFailure(
            project=project.name,
            job=run.job,
            run_id=run.run_id,
            head_sha=run.head_sha,
            conclusion=run.conclusion or "failure",
            triggered_by=run.triggered_by,
            commit_message=run.commit_message,
            event=run.event,
            passed_before_on_same_sha=obs.passed_before(run),
        )
        already_rerun = (
            run.run_attempt > 1 or run.source == "reported" or ((project.name, run.run_id) in ctx.reruns_requested)
        )
        decision = decide(
            effective,
            failure,
            history,
            now=_now(),
            kill_switch=kill_switch,
            bot_logins=ctx.bot_logins,
            already_rerun=already_rerun,
        )
        note = RedJob(
            project=project.name,
            job=run.job,
            run_id=run.run_id,
            head_sha=run.head_sha,
            conclusion=failure.conclusion,
            decision=decision.action,
            reason=decision.reason.value if decision.reason else None,
            detail=decision.detail,
        )
        summary.red.append(note)
        if decision.action == "skip":
            summary.count_skip(decision.reason.value if decision.reason else "unknown")
            if decision.reason is SkipReason.ACTIVE_ATTEMPT:
                summary.attempts_already_active += 1
            continue
        if decision.action == "rerun":
            if not dry_run and ctx.forge is not None:
                await ctx.forge.rerun_workflow(project.repo, int(run.run_id))  # a refusal raises: not counted
                ctx.reruns_requested.add((project.name, run.run_id))
            summary.reruns.append(note)
            continue
        await _start(ctx, project, run, dry_run=dry_run, summary=summary)
        history = None  # the new attempt is part of the history for the next red job
        if not dry_run:
            break  # one attempt per project at a time: the other red jobs wait for a later pass


async def _start(
    ctx: ReconcilerContext, project: ProjectConfig, run: ObservedRun, *, dry_run: bool, summary: RunSummary
) -> None:
    if dry_run:
        summary.attempts_started.append(
            StartedAttempt(project=project.name, job=run.job, attempt_id=None, run_id=run.run_id)
        )
        return
    outcome = await store.start_attempt(
        ctx.sessions,
        project=project.name,
        job=run.job,
        fingerprint=failure_fingerprint(project.name, run.job, run.head_sha),
        run_id=run.run_id,
        head_sha=run.head_sha,
    )
    if outcome.started and outcome.attempt_id is not None:
        summary.attempts_started.append(
            StartedAttempt(project=project.name, job=run.job, attempt_id=outcome.attempt_id, run_id=run.run_id)
        )
        log_event(logger, "attempt_started", attempt_id=outcome.attempt_id, job=run.job, run_id=run.run_id)
        attempt = await store.get_attempt(ctx.sessions, outcome.attempt_id)
        if attempt is not None and ctx.dispatcher is not None:
            ctx.dispatcher.dispatch(attempt)
    elif outcome.reason in ("already_active", "already_handled"):
        # Another reconciler won the race: the database refused the duplicate (index or fingerprint).
        summary.attempts_already_active += 1
        summary.count_skip(
            SkipReason.ACTIVE_ATTEMPT.value if outcome.reason == "already_active" else SkipReason.ALREADY_HANDLED.value
        )
    else:
        summary.count_skip(outcome.reason)


async def _history(ctx: ReconcilerContext, project: str, *, reset_at: datetime | None) -> list[AttemptRecord]:
    rows = await store.attempt_history(ctx.sessions, project)
    out: list[AttemptRecord] = []
    for a in rows:
        status = AttemptStatus(a.status)
        created = _aware(a.created_at) or _now()
        if reset_at is not None and created <= reset_at and status in TERMINAL_STATUSES:
            continue  # an operator reset (or the job going green) wipes earlier failures from the count
        out.append(
            AttemptRecord(
                id=a.id,
                job=a.job,
                status=status,
                fingerprint=a.fingerprint,
                created_at=created,
                finished_at=_aware(a.finished_at),
                pushed_sha=a.pushed_sha,
                merged_sha=a.merged_sha,
            )
        )
    return out


def _note_transition(summary: RunSummary, attempt: Attempt, from_status: str, to_status: str, reason: str) -> None:
    """Record a state change the pass made: in the summary and as one structured event."""
    summary.transitions.append(
        TransitionNote(
            attempt_id=attempt.id, project=attempt.project, from_status=from_status, to_status=to_status, reason=reason
        )
    )
    log_event(logger, "attempt_transition", attempt_id=attempt.id, to=to_status, reason=reason)


async def _transition(
    ctx: ReconcilerContext,
    attempt: Attempt,
    to: AttemptStatus,
    *,
    reason: str,
    summary: RunSummary,
    **fields: object,
) -> bool:
    moved = await store.transition(
        ctx.sessions, attempt.id, to, reason=reason, expected=AttemptStatus(attempt.status), **fields
    )
    if moved:
        _note_transition(summary, attempt, attempt.status, to.value, reason)
        if to in TERMINAL_STATUSES:
            await attempt_finished(
                ctx.sessions,
                ctx.metrics,
                attempt_id=attempt.id,
                status=to,
                webhook_url=ctx.config.server.slack_webhook_url,
            )
    return moved


async def _advance(
    ctx: ReconcilerContext,
    project: ProjectConfig,
    attempt: Attempt,
    obs: ProjectObservation,
    *,
    dry_run: bool,
    summary: RunSummary,
) -> Attempt | None:
    """Move an active attempt along from what the forge and the runs say now; returns it if still active."""
    if dry_run:
        return attempt
    status = AttemptStatus(attempt.status)
    if status in (AttemptStatus.PENDING, AttemptStatus.RUNNING):
        if ctx.dispatcher is not None and ctx.dispatcher.is_running(attempt.id):
            return attempt
        beat = _aware(attempt.heartbeat_at) or _aware(attempt.updated_at) or _aware(attempt.created_at) or _now()
        if _now() - beat < timedelta(seconds=ctx.config.server.attempt_timeout_seconds):
            return attempt  # another worker may still be on it
        # The worker died. If it got as far as a PR, carry on from there; otherwise close it with a reason.
        # A PR it merged before dying counts too (`merged` comes from `merged_at`, which list items carry):
        # the PR_OPEN step then moves it to verifying, instead of failing an attempt whose fix has landed.
        pr = None
        if ctx.forge is not None and attempt.branch:
            pr = await ctx.forge.find_pull_request(project.repo, attempt.branch)
        if pr is not None and (pr.state == "open" or pr.merged):
            await _transition(
                ctx,
                attempt,
                AttemptStatus.PR_OPEN,
                reason="worker_died_after_pr",
                summary=summary,
                pr_number=pr.number,
                pr_url=pr.html_url,
                pushed_sha=pr.head.sha,
            )
            return attempt
        # No PR: run the same attempt again, once (the tools are idempotent: no second branch or PR). A
        # process without a dispatcher cannot run it, and a second death means it won't get further: fail it.
        if ctx.dispatcher is not None:
            claim = await claim_resume(ctx, attempt, status)
            if claim == "lost":
                return attempt  # it beat again or moved on since it was read: someone else has it
            if claim == "resumed":
                resumed = await store.get_attempt(ctx.sessions, attempt.id)
                if resumed is not None:
                    _note_transition(summary, attempt, status.value, status.value, RESUMED)
                    ctx.dispatcher.dispatch(resumed)
                return resumed
        await _transition(
            ctx, attempt, AttemptStatus.FAILED, reason="worker_died", summary=summary, stop_reason="worker_died"
        )
        return None
    if status is AttemptStatus.PR_OPEN:
        if ctx.forge is None:
            return attempt
        pr = None
        if attempt.pr_number is not None:
            pr = await ctx.forge.get_pull_request(project.repo, attempt.pr_number)
        elif attempt.branch:
            pr = await ctx.forge.find_pull_request(project.repo, attempt.branch)
        if pr is None:
            return attempt
        if pr.merged:
            await _transition(
                ctx,
                attempt,
                AttemptStatus.VERIFYING,
                reason="pr_merged",
                summary=summary,
                merged_sha=pr.merge_commit_sha,
            )
            return attempt
        if pr.state == "closed":
            await _transition(ctx, attempt, AttemptStatus.CANCELLED, reason="pr_closed_unmerged", summary=summary)
            return None
        return attempt
    if status is AttemptStatus.VERIFYING:
        run = obs.latest.get(attempt.job)
        since = _aware(attempt.updated_at) or _aware(attempt.created_at) or _now()
        if run is None or attempt.job in obs.in_progress:
            return attempt
        if run.head_sha != attempt.merged_sha and run.created_at < since:
            return attempt  # no run yet on a commit containing the fix
        if run.green:
            await _transition(ctx, attempt, AttemptStatus.SUCCEEDED, reason="job_green", summary=summary)
        else:
            # Security: the circuit breaker. This failure came from the agent's own change; the gate will
            # refuse to remediate it (OWN_CHANGE) and a human is told.
            await _transition(
                ctx,
                attempt,
                AttemptStatus.ESCALATED,
                reason="fix_did_not_turn_green",
                summary=summary,
                stop_reason="fix_did_not_turn_green",
            )
        return None
    return attempt


RESUMED: Final = "resumed_after_worker_died"
"""The reason of the transition row (status unchanged) that records an attempt's one resume."""


async def claim_resume(
    ctx: ReconcilerContext, attempt: Attempt, status: AttemptStatus
) -> Literal["resumed", "exhausted", "lost"]:
    """Claim a dead worker's attempt to run it again, at most once per attempt; the database decides.

    One compare-and-set: the attempt is still in `status`, its last sign of life is still older than the
    timeout, and no earlier resume is recorded; it sets a fresh heartbeat and records a transition row
    (`status -> status`, reason `RESUMED`). `exhausted`: it was resumed once already and is stale again;
    `lost`: it changed since it was read (another replica's pass claimed it, or its worker beat again).
    """
    timeout = timedelta(seconds=ctx.config.server.attempt_timeout_seconds)
    earlier = sa.exists().where(Transition.attempt_id == attempt.id, Transition.reason == RESUMED)
    last_sign = sa.func.coalesce(Attempt.heartbeat_at, Attempt.updated_at, Attempt.created_at)

    async def _once() -> Literal["resumed", "exhausted", "lost"]:
        now = utcnow()
        async with ctx.sessions() as session, session.begin():
            # The write transaction starts with the UPDATE, so SQLite takes its write lock at once.
            result = await session.execute(
                sa.update(Attempt)
                .where(Attempt.id == attempt.id, Attempt.status == status.value, last_sign < now - timeout, ~earlier)
                .values(heartbeat_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if rowcount(result) == 1:
                session.add(
                    Transition(
                        attempt_id=attempt.id, from_status=status.value, to_status=status.value, reason=RESUMED, at=now
                    )
                )
                return "resumed"
            still_stale = await session.scalar(
                sa.select(sa.func.count())
                .select_from(Attempt)
                .where(Attempt.id == attempt.id, Attempt.status == status.value, last_sign < now - timeout, earlier)
            )
            return "exhausted" if still_stale else "lost"

    return await with_retry(_once)


async def _record_pass(ctx: ReconcilerContext, summary: RunSummary) -> None:
    await record_pass(
        ctx.sessions,
        trigger=summary.trigger,
        started_at=summary.started_at,
        finished_at=_now(),
        projects_scanned=summary.projects_scanned,
        projects_red=summary.projects_red,
        attempts_started=len(summary.attempts_started),
        attempts_deduplicated=summary.attempts_already_active,
        summary=summary.model_dump_json(),
    )
