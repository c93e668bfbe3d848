"""The verb: `reconcile_project(ctx, key) -> Result`, one project brought one step closer to green.

It recomputes what to do from current state on every call (never from remembered events), so a missed
event, a crash halfway or a restart is repaired by the next call: observe the project's jobs, advance its
active attempt (the status table, `reconciler.advance`), decide for each red job with the policy gate, and
start at most one attempt by inserting its row (the database's partial unique index is the lock) and handing
it to the dispatcher; it never waits for an agent.

This module is orchestration only: the store owns the SQL, the runner (`reconciler.runner`) owns fan-out,
concurrency, metrics and pass recording.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from infra.jsonlog import log_event
from policy.config import ProjectConfig
from policy.gate import AttemptRecord, ObservedFailure, decide, failure_fingerprint
from policy.spend import SpendStatus, choose_model
from policy.types import TERMINAL_STATUSES, AttemptStatus, FailureClass, SkipReason
from reconciler.advance import StepInput, advance
from reconciler.budget import WindowCosts, give_notices, load_costs, project_status
from reconciler.context import ReconcilerContext
from reconciler.observe import ObservedRun, ProjectObservation, observe_actions, observe_reported
from reconciler.pacing import budget_of
from reconciler.store import attempts as store
from reconciler.store.models import Attempt
from reconciler.store.projects import ProjectState, project_states, reset_escalation
from reconciler.store.state import kill_switch_enabled
from reconciler.summary import RedJob, RunSummary, StartedAttempt, Trigger

__all__ = ["RATE_LIMIT_LOW", "RERUN_IN_PROGRESS", "PassScope", "Result", "load_scope", "reconcile_project"]

logger = logging.getLogger("greenloop.reconcile")

RATE_LIMIT_LOW = "rate_limit_low"
"""Skip reason: the forge's request budget is nearly spent, so a project without an active attempt waits."""
RERUN_IN_PROGRESS = "rerun_in_progress"
"""Skip reason: the job's latest completed run is red and a newer run of it is still going."""


@dataclass(frozen=True)
class Result:
    """What one `reconcile_project` call asks of the runner.

    `requeue_after`: reconcile this key again after that long, because the gate said when its answer could
    change (`Decision.retry_after`, e.g. the end of a backoff); None when only new events or the next
    scheduled pass can change anything.
    """

    requeue_after: timedelta | None = None


_NO_REQUEUE = Result()  # a project that asks nothing of the runner (most, on most passes)


@dataclass
class PassScope:
    """One pass's view of the store, loaded for all its projects at once, and where the pass notes what it did."""

    summary: RunSummary
    kill_switch: bool
    rows: dict[str, ProjectState] = field(default_factory=dict)  # only the paused or reset ones
    active: dict[str, Attempt] = field(default_factory=dict)
    last_failures: dict[str, datetime] = field(default_factory=dict)
    reported: dict[str, ProjectObservation] = field(default_factory=dict)
    costs: WindowCosts | None = None  # the current spend windows (None: not read; no cost limit applies)
    projects: dict[str, ProjectConfig] = field(default_factory=dict)  # the pass's projects by name

    @property
    def dry_run(self) -> bool:
        """Whether the pass only reports what it would do."""
        return self.summary.dry_run


def _now() -> datetime:
    return datetime.now(UTC)


async def load_scope(
    ctx: ReconcilerContext, projects: Sequence[ProjectConfig], *, trigger: Trigger, dry_run: bool
) -> PassScope:
    """Read what a pass over `projects` needs from the store: a few queries, whatever the number of projects.

    Raises:
        StoreError: the store failed (nothing was done).
    """
    await ctx.ensure_projects()
    names = [p.name for p in projects]
    costs = await load_costs(ctx)
    if not dry_run:
        await give_notices(ctx, costs)  # the fleet's limits: gauges, and a notice once per window
    return PassScope(
        summary=RunSummary(trigger=trigger, dry_run=dry_run, started_at=_now()),
        # The global kill switch: on in the config, or flipped at run time (POST /kill-switch).
        kill_switch=ctx.config.server.kill_switch or await kill_switch_enabled(ctx.sessions),
        rows=await project_states(ctx.sessions, names),
        active=await store.active_by_project(ctx.sessions, names),
        last_failures=await store.last_failures(ctx.sessions, names),
        reported=await observe_reported(ctx.sessions, projects),
        costs=costs,
        projects={p.name: p for p in projects},
    )


async def reconcile_project(ctx: ReconcilerContext, key: str, *, scope: PassScope | None = None) -> Result:
    """Reconcile the project named `key` once; `scope` is the pass it is part of (default: a pass of its own).

    Raises:
        KeyError: `key` names no configured project.
        ForgeError, ReconcilerError: the forge or the store failed (the runner records it as this key's error).
    """
    project = scope.projects.get(key) if scope is not None else None
    if project is None:
        project = ctx.config.project(key)
    if scope is None:
        scope = await load_scope(ctx, [project], trigger="cli", dry_run=False)
    summary = scope.summary
    row = scope.rows.get(project.name)
    active = scope.active.get(project.name)
    obs = await _observe(ctx, project, scope.reported.get(project.name), urgent=active is not None, summary=summary)
    if active is not None and not scope.dry_run:
        active = await advance(StepInput(ctx=ctx, project=project, attempt=active, obs=obs, summary=summary))
    if scope.costs is not None and project.daily_cost_usd is not None and not scope.dry_run:
        await give_notices(ctx, scope.costs, project)

    red = obs.red()
    rerunning = _note_reruns_in_progress(project, obs, summary)
    reset_at = row.escalation_reset_at if row is not None else None
    if not red:
        if rerunning:
            return _NO_REQUEUE  # still red until the newer run ends; no attempt while it runs
        last_failure = scope.last_failures.get(project.name)
        if (
            obs.latest
            and not scope.dry_run
            and last_failure is not None
            and (reset_at is None or last_failure > reset_at)
        ):
            await reset_escalation(ctx.sessions, project.name)  # green again: earlier failures no longer count
        return _NO_REQUEUE

    paused = row.paused if row is not None else False
    effective = project.model_copy(update={"paused": project.paused or paused})
    history: list[AttemptRecord] | None = None
    requeue: timedelta | None = None
    spend = project_status(ctx, project, scope.costs) if scope.costs is not None else None
    for run in red:
        if history is None:
            history = await _history(ctx, project.name, reset_at=reset_at)
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
            run.run_attempt > 1
            or run.source == "reported"
            or ((project.name, run.run_id) in ctx.caches.reruns_requested)
        )
        decision = decide(
            effective,
            failure,
            history,
            now=_now(),
            kill_switch=scope.kill_switch,
            bot_logins=ctx.bot_logins,
            already_rerun=already_rerun,
            spend=spend,
        )
        if decision.retry_after is not None:
            requeue = decision.retry_after if requeue is None else min(requeue, decision.retry_after)
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
            if not scope.dry_run and ctx.operator is not None:
                await ctx.operator.rerun_workflow(project.name, int(run.run_id))  # a refusal raises: not counted
                ctx.caches.reruns_requested.add((project.name, run.run_id))
            summary.reruns.append(note)
            continue
        await _start(ctx, project, run, dry_run=scope.dry_run, summary=summary, spend=spend, note=note)
        history = None  # the new attempt is part of the history for the next red job
        if not scope.dry_run:
            break  # one attempt per project at a time: the other red jobs wait for a later pass
    return Result(requeue_after=requeue)


def _note_reruns_in_progress(project: ProjectConfig, obs: ProjectObservation, summary: RunSummary) -> int:
    """Note each job whose latest completed run is red while a newer run of it is still going (a re-run, or
    the next scheduled run): red in the summary with the reason `rerun_in_progress`, and no attempt is
    started while it runs. Returns how many."""
    if not obs.in_progress:
        return 0  # the common case: nothing is running, nothing to note (and no sort)
    noted = 0
    for job, run in sorted(obs.latest.items()):
        if run.green or job not in obs.in_progress:
            continue
        summary.red.append(
            RedJob(
                project=project.name,
                job=job,
                run_id=run.run_id,
                head_sha=run.head_sha,
                conclusion=run.conclusion or "failure",
                decision="skip",
                reason=RERUN_IN_PROGRESS,
                detail="a newer run of the job is in progress; the next pass decides on its result",
            )
        )
        summary.count_skip(RERUN_IN_PROGRESS)
        noted += 1
    return noted


def _rate_limit_low(ctx: ReconcilerContext) -> bool:
    """Whether the forge's last reported budget is below the reserve and has not reset since (the last wall:
    the scheduled resync is paced to stay above it, `reconciler.pacing`; events and attempts may reach it)."""
    remaining = ctx.forge.stats.rate_remaining if ctx.forge is not None else None
    if remaining is None or remaining >= ctx.rate_limit_reserve:
        return False  # the usual case, decided without building the budget
    return budget_of(ctx).below_reserve(time.time())


async def _observe(
    ctx: ReconcilerContext,
    project: ProjectConfig,
    reported: ProjectObservation | None,
    *,
    urgent: bool,
    summary: RunSummary,
) -> ProjectObservation:
    actions_runs: Sequence[ObservedRun] = ()
    if ctx.forge is not None and not urgent and _rate_limit_low(ctx):
        # Non-urgent observation waits for the budget to reset; attempts in flight keep theirs.
        summary.count_skip(RATE_LIMIT_LOW)
        log_event(logger, "observation_skipped", reason=RATE_LIMIT_LOW, rate_remaining=ctx.forge.stats.rate_remaining)
    elif ctx.forge is not None:
        actions, _changed = await observe_actions(
            ctx.forge,
            project,
            previous=ctx.caches.observations.get(project.name),
            job_cache=ctx.caches.jobs,
        )
        ctx.caches.observations[project.name] = actions
        if reported is None:
            return actions  # already finished; on a 304 it is the previous pass's object, not a rebuild
        actions_runs = actions.runs
    obs = ProjectObservation()
    for run in actions_runs:
        obs.add(run)
    if reported is not None:
        for run in reported.runs:
            obs.add(run)
    obs.finish()
    return obs


async def _start(
    ctx: ReconcilerContext,
    project: ProjectConfig,
    run: ObservedRun,
    *,
    dry_run: bool,
    summary: RunSummary,
    spend: SpendStatus | None,
    note: RedJob,
) -> None:
    """Start the attempt the gate decided on; a start the database refuses is noted as the skip it became
    (the summary never reports a start that did not happen)."""
    if dry_run:
        summary.attempts_started.append(
            StartedAttempt(project=project.name, job=run.job, attempt_id=None, run_id=run.run_id)
        )
        return
    # The model is chosen now and recorded on the attempt: past the notice share, the cheaper fallback.
    choice = choose_model(project, ctx.config.agent, spend or SpendStatus(level="ok"))
    outcome = await store.start_attempt(
        ctx.sessions,
        project=project.name,
        job=run.job,
        fingerprint=failure_fingerprint(project.name, run.job, run.head_sha),
        run_id=run.run_id,
        head_sha=run.head_sha,
        model=choice.model,
        max_transient_retries=project.max_transient_retries,
    )
    if outcome.started and outcome.attempt_id is not None:
        summary.attempts_started.append(
            StartedAttempt(project=project.name, job=run.job, attempt_id=outcome.attempt_id, run_id=run.run_id)
        )
        log_event(
            logger,
            "attempt_started",
            attempt_id=outcome.attempt_id,
            job=run.job,
            run_id=run.run_id,
            model=choice.model,
            model_reason=choice.reason,
        )
        attempt = await store.get_attempt(ctx.sessions, outcome.attempt_id)
        if attempt is not None and ctx.dispatcher is not None:
            ctx.dispatcher.dispatch(attempt)
        return
    # Another reconciler won the race, or the store's rule for another attempt at this failure said no: the
    # database refused the duplicate (index, or fingerprint and generation).
    if outcome.reason in ("already_active", "already_handled"):
        reason = (
            SkipReason.ACTIVE_ATTEMPT.value if outcome.reason == "already_active" else SkipReason.ALREADY_HANDLED.value
        )
        summary.attempts_already_active += 1
        detail = f"the store refused the start: attempt {outcome.attempt_id!r} ({outcome.reason})"
    else:
        reason, detail = outcome.reason, "the store stayed busy: a later pass tries again"
    summary.count_skip(reason)
    refused = note.model_copy(update={"decision": "skip", "reason": reason, "detail": detail})
    summary.red = [refused if r is note else r for r in summary.red]
    log_event(logger, "attempt_start_refused", job=run.job, reason=reason, attempt_id=outcome.attempt_id)


async def _history(ctx: ReconcilerContext, project: str, *, reset_at: datetime | None) -> list[AttemptRecord]:
    rows = await store.attempt_history(ctx.sessions, project)
    out: list[AttemptRecord] = []
    for a in rows:
        status = AttemptStatus(a.status)
        if reset_at is not None and a.created_at <= reset_at and status in TERMINAL_STATUSES:
            continue  # an operator reset (or the job going green) wipes earlier failures from the count
        out.append(
            AttemptRecord(
                id=a.id,
                job=a.job,
                status=status,
                fingerprint=a.fingerprint,
                created_at=a.created_at,
                finished_at=a.finished_at,
                pushed_sha=a.pushed_sha,
                merged_sha=a.merged_sha,
                failure_class=FailureClass(a.failure_class) if a.failure_class else None,
            )
        )
    return out
