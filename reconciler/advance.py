"""The status table: how a pass moves an active attempt along, one small function per status.

`ADVANCE[status]` reads what the forge and the runs say now and makes at most one transition; it returns
the attempt while it is still active, None once it ended. Statuses without an entry (the terminal ones)
are never active. Every step is idempotent: a pass that dies halfway, or two replicas running the same
step, end in the same state (transitions are compare-and-set in the store).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Final

from infra.jsonlog import log_event
from mcp_server.checks import head_checks
from mcp_server.errors import ToolRefused
from mcp_server.forge import ForgeClient, PullRequest
from policy.checks import CheckState, ChecksVerdict
from policy.config import ProjectConfig
from policy.rounds import next_round, spent
from policy.types import TERMINAL_STATUSES, AttemptStatus, Autonomy
from reconciler.context import ReconcilerContext
from reconciler.dispatch import budget_use
from reconciler.finish import attempt_finished
from reconciler.observe import ProjectObservation
from reconciler.stale import announce_if_stale
from reconciler.store import attempts as store
from reconciler.store.attempts import RESUMED, ResumeClaim
from reconciler.store.models import Attempt
from reconciler.summary import RunSummary, TransitionNote

__all__ = ["ADVANCE", "RESUMED", "Step", "StepInput", "advance", "claim_resume", "note_transition"]

logger = logging.getLogger("greenloop.reconcile")


@dataclass(frozen=True)
class StepInput:
    """What a step sees: the project, its active attempt, this pass's observation, where to note changes."""

    ctx: ReconcilerContext
    project: ProjectConfig
    attempt: Attempt
    obs: ProjectObservation
    summary: RunSummary


Step = Callable[[StepInput], Awaitable[Attempt | None]]


def _now() -> datetime:
    return datetime.now(UTC)


def note_transition(summary: RunSummary, attempt: Attempt, from_status: str, to_status: str, reason: str) -> None:
    """Record a state change the pass made: in the summary and as one structured event."""
    summary.transitions.append(
        TransitionNote(
            attempt_id=attempt.id, project=attempt.project, from_status=from_status, to_status=to_status, reason=reason
        )
    )
    log_event(logger, "attempt_transition", attempt_id=attempt.id, to=to_status, reason=reason)


async def _transition(step: StepInput, to: AttemptStatus, *, reason: str, **fields: object) -> bool:
    """A compare-and-set on the status and revision round this pass read: a pass holding an older read of the
    attempt changes nothing."""
    ctx, attempt = step.ctx, step.attempt
    moved = await store.transition(
        ctx.sessions,
        attempt.id,
        to,
        reason=reason,
        expected=AttemptStatus(attempt.status),
        expected_revisions=attempt.revisions,
        **fields,
    )
    if moved:
        note_transition(step.summary, attempt, attempt.status, to.value, reason)
        if to in TERMINAL_STATUSES:
            await attempt_finished(
                ctx.sessions,
                ctx.metrics,
                attempt_id=attempt.id,
                status=to,
                webhook_url=ctx.config.server.slack_webhook_url,
                project=step.project,
                forge=ctx.forge,
                operator=ctx.operator,
            )
    return moved


async def claim_resume(ctx: ReconcilerContext, attempt: Attempt, status: AttemptStatus) -> ResumeClaim:
    """Claim a dead worker's attempt to run it again, at most once (see `store.attempts.claim_resume`)."""
    timeout = timedelta(seconds=ctx.config.server.attempt_timeout_seconds)
    return await store.claim_resume(ctx.sessions, attempt.id, status, timeout=timeout)


async def _worker(step: StepInput) -> Attempt | None:
    """`pending`/`running`: nothing to do while a worker is alive; a dead worker's attempt is carried on."""
    ctx, project, attempt = step.ctx, step.project, step.attempt
    status = AttemptStatus(attempt.status)
    if ctx.dispatcher is not None and ctx.dispatcher.is_running(attempt.id):
        return attempt
    beat = attempt.heartbeat_at or attempt.updated_at or attempt.created_at or _now()
    if _now() - beat < timedelta(seconds=ctx.config.server.attempt_timeout_seconds):
        return attempt  # another worker may still be on it
    # The worker died. If it got as far as a PR, carry on from there; otherwise close it with a reason.
    # A PR it merged before dying counts too (the list endpoint gives `merged_at`, not `merged`): the
    # PR_OPEN step then moves it to verifying, instead of failing an attempt whose fix has landed.
    pr = None
    if ctx.forge is not None and attempt.branch:
        pr = await ctx.forge.find_pull_request(project.repo, attempt.branch)
    if pr is not None and (pr.state == "open" or pr.merged or pr.merged_at is not None):
        await _transition(
            step,
            AttemptStatus.PR_OPEN,
            reason="worker_died_after_pr",
            pr_number=pr.number,
            pr_url=pr.html_url,
            pushed_sha=pr.head.sha,
        )
        return attempt
    # No PR: run the same attempt again, once (the tools are idempotent: no second branch or PR). A process
    # without a dispatcher cannot run it, a second death means it won't get further, and a run that spent the
    # attempt's budget before it died leaves nothing to resume with (budgets are per attempt): fail it.
    if ctx.dispatcher is not None and spent(project.budgets, budget_use(attempt)) is None:
        claim = await claim_resume(ctx, attempt, status)
        if claim == "lost":
            return attempt  # it beat again or moved on since it was read: someone else has it
        if claim == "resumed":
            resumed = await store.get_attempt(ctx.sessions, attempt.id)
            if resumed is not None:
                note_transition(step.summary, attempt, status.value, status.value, RESUMED)
                ctx.dispatcher.dispatch(resumed)
            return resumed
    await _transition(step, AttemptStatus.FAILED, reason="worker_died", stop_reason="worker_died")
    return None


async def _pr_open(step: StepInput) -> Attempt | None:
    """`pr_open`: merged -> verifying; closed unmerged -> cancelled; open: its head's checks decide.

    Checks passed on an `auto_merge` project -> merged here (the MCP server's forge client and walls, never
    the model) -> verifying; checks failing (either autonomy) -> a revision round (`running`, the same attempt
    and branch), or escalated once the rounds are used up; otherwise (pending, or passed under `propose`) ->
    wait, with the checks' state recorded.
    """
    ctx, project, attempt = step.ctx, step.project, step.attempt
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
        # What the merged head's checks say now: the value recorded for the PR may be an earlier round's, when
        # the merge (the agent's tool, or a person) came before a pass saw the newer head's checks.
        verdict = await head_checks(ctx.forge, project.repo, attempt.pushed_sha or pr.head.sha, pr.base.ref)
        await _transition(
            step,
            AttemptStatus.VERIFYING,
            reason="pr_merged",
            merged_sha=pr.merge_commit_sha,
            checks=verdict.state.value,
        )
        return attempt
    if pr.state == "closed":
        await _transition(step, AttemptStatus.CANCELLED, reason="pr_closed_unmerged")
        return None
    await announce_if_stale(ctx, project, attempt)
    return await _open_pr(step, ctx.forge, pr)


async def _open_pr(step: StepInput, forge: ForgeClient, pr: PullRequest) -> Attempt | None:
    """An open fix PR: record what its head's checks say, and act on it."""
    ctx, project, attempt = step.ctx, step.project, step.attempt
    head = attempt.pushed_sha or pr.head.sha
    verdict = await head_checks(forge, project.repo, head, pr.base.ref)
    if verdict.state.value != attempt.checks:
        # Compare-and-set on `pr_open`: a pass that read the attempt before it merged (or before a revision
        # round pushed a new head) must not write its stale verdict over the newer one.
        await store.heartbeat(ctx.sessions, attempt.id, expected=AttemptStatus.PR_OPEN, checks=verdict.state.value)
        log_event(logger, "pr_checks", attempt_id=attempt.id, checks=verdict.state.value, reason=verdict.reason())
    if verdict.state is CheckState.FAILING:
        return await _checks_failed(step, verdict)
    if (
        verdict.state is CheckState.PASSED
        and project.autonomy is Autonomy.AUTO_MERGE
        and attempt.pushed_sha
        and ctx.operator is not None
    ):
        try:
            merged = await ctx.operator.merge_when_green(
                project.name,
                pr.number,
                pushed_sha=attempt.pushed_sha,
                title=pr.title,
                message=f"greenloop attempt {attempt.id} for job {attempt.job}",
                attempt_id=attempt.id,
            )
        except ToolRefused as exc:  # the head moved, or a check changed since it was read: a later pass sees
            log_event(logger, "merge_refused", level=logging.WARNING, attempt_id=attempt.id, reason=str(exc))
            return attempt
        await _transition(
            step, AttemptStatus.VERIFYING, reason="merged_on_green_checks", merged_sha=merged, checks="passed"
        )
    return attempt


async def _checks_failed(step: StepInput, verdict: ChecksVerdict) -> Attempt | None:
    """The fix PR's checks failed: the same attempt goes back to the agent (a revision round, on the same
    branch: the PR updates) while `max_revisions` and the attempt's budgets allow; then a human is needed.

    Both autonomy levels revise: a wrong fix is wrong whoever merges it. The round starts with a
    compare-and-set `pr_open -> running`, so two replicas never start the same round twice.
    """
    ctx, project, attempt = step.ctx, step.project, step.attempt
    failing = ", ".join(verdict.failing)
    decision = next_round(project, attempt.revisions, budget_use(attempt))
    if decision == "revise":
        if ctx.dispatcher is None:
            return attempt  # no agent runs in this process (e.g. `greenloop reconcile`): a later pass revises
        if not await _transition(
            step,
            AttemptStatus.RUNNING,
            reason=f"revision_round: {failing}",
            revisions=attempt.revisions + 1,
            checks=verdict.state.value,
        ):
            return attempt
        revised = await store.get_attempt(ctx.sessions, attempt.id)
        if revised is not None:
            log_event(logger, "revision_round", attempt_id=attempt.id, round=revised.revisions, checks=failing)
            ctx.dispatcher.dispatch(revised)
        return revised
    # No rounds left: a human looks at the PR. With no revision allowed at all, say only that the checks failed.
    why = "pr_checks_failing" if project.max_revisions == 0 else "revisions_exhausted"
    detail = f"{why}: {failing}" + (" (the attempt's budget is spent)" if decision == "budget_spent" else "")
    await _transition(step, AttemptStatus.ESCALATED, reason=detail, stop_reason=why, checks=verdict.state.value)
    return None


async def _verifying(step: StepInput) -> Attempt | None:
    """`verifying`: the job's first completed run on a commit containing the fix decides."""
    attempt, obs = step.attempt, step.obs
    run = obs.latest.get(attempt.job)
    since = attempt.updated_at or attempt.created_at or _now()
    if run is None or attempt.job in obs.in_progress:
        return attempt
    if run.head_sha != attempt.merged_sha and run.created_at < since:
        return attempt  # no run yet on a commit containing the fix
    if run.green:
        await _transition(step, AttemptStatus.SUCCEEDED, reason="job_green")
    else:
        # Security: the circuit breaker. This failure came from the agent's own change; the gate will
        # refuse to remediate it (OWN_CHANGE) and a human is told.
        await _transition(
            step, AttemptStatus.ESCALATED, reason="fix_did_not_turn_green", stop_reason="fix_did_not_turn_green"
        )
    return None


ADVANCE: Final[Mapping[AttemptStatus, Step]] = MappingProxyType(
    {
        AttemptStatus.PENDING: _worker,
        AttemptStatus.RUNNING: _worker,
        AttemptStatus.PR_OPEN: _pr_open,
        AttemptStatus.VERIFYING: _verifying,
    }
)


async def advance(step: StepInput) -> Attempt | None:
    """Run the step of the attempt's status; returns it if still active."""
    handler = ADVANCE.get(AttemptStatus(step.attempt.status))
    return step.attempt if handler is None else await handler(step)
