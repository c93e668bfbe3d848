"""Running the agent for a started attempt, in the background, and recording how it ended.

The dispatcher owns retries of nothing: it runs what it is given. It marks the attempt `running`, keeps its
heartbeat fresh while the agent works, and records the outcome: a pull request -> `pr_open` (later passes
advance it); no fix after trying a protected path -> `escalated` (only a human can make that change); any
other stop -> `failed` with the guard's reason. The outcome is read back, not remembered: however the agent
stopped (even crashed), the forge is asked for the fix branch's pull request first, and one that exists
makes the attempt `pr_open` (merged: `verifying`) with its number, whatever the model said (a reply lost
after the forge acted leaves the model believing it failed). A worker that dies leaves a stale heartbeat; a
later pass carries on from its PR (`pr_open`), or re-dispatches the same attempt once (`running`, resumed: the tools are
idempotent), and fails it (`worker_died`) if the resumed worker dies too. A pass also re-dispatches an attempt
whose fix PR failed its checks (`pr_open -> running`, a revision round): the agent is told why (the failing
check's log excerpt) and works on the same fix branch, so the PR updates.

Budgets are per attempt: a resumed run and a revision round get what earlier runs of the attempt left
(`policy.rounds.remaining`). Every heartbeat records what the run has used so far (turns, tokens, cost, wall
seconds, added to what earlier runs used), so even a run whose worker dies is counted.

The database is the source of truth for whether an attempt may still run: the heartbeat loop re-reads its
status and cancels the agent once it is no longer `pending`/`running` (cancelled by an operator through
another replica, or closed by a pass), and `cancel()` stops it at once on this replica. A cancelled run
records nothing: whoever ended the attempt already recorded why.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.accounting import ModelCall, total_of
from agent.errors import ModelError
from agent.loop import AttemptOutcome, ToolSession, run_attempt
from agent.models import ModelBackend
from agent.types import AttemptTask, Revision, StopReason
from infra.jsonlog import bind_context, log_event
from mcp_server.checks import failed_checks
from mcp_server.culprit import culprit_or_none
from mcp_server.errors import ForgeError, ForgeRateLimited, ForgeUnavailable
from mcp_server.forge import ForgeClient, PullRequest
from mcp_server.models import ToolName
from mcp_server.operator import Operator
from policy.branches import fix_branch_name
from policy.config import GreenloopConfig, ProjectConfig
from policy.paths import matches_glob
from policy.redaction import redact
from policy.rounds import BudgetUse, remaining
from policy.types import AttemptStatus, FailureClass
from reconciler.errors import ReconcilerError
from reconciler.finish import attempt_finished
from reconciler.memory import earlier_attempts
from reconciler.metrics import Metrics
from reconciler.store import attempts as store
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt
from reconciler.store.runs import StoreReportedRuns

__all__ = [
    "AgentDispatcher",
    "BackendFactory",
    "SessionOpener",
    "budget_use",
    "failure_class",
    "fix_branch_pull_request",
    "is_merged",
    "pull_request_fields",
    "tried_protected_path",
]

logger = logging.getLogger("greenloop.dispatch")

BackendFactory = Callable[[Attempt, ProjectConfig], ModelBackend]
"""Chooses the model back-end for one attempt (real model, or a scripted one in the demo)."""

SessionOpener = Callable[[Attempt], AbstractAsyncContextManager[ToolSession]]
"""Opens an MCP client session bound to one attempt (in-process server, or a sidecar over HTTP)."""


def tried_protected_path(outcome: AttemptOutcome, project: ProjectConfig) -> str | None:
    """The first denied path the agent tried to write during the run, if any."""
    for event in outcome.transcript:
        if event.get("kind") != "tool_call" or event.get("name") != ToolName.WRITE_REPO_FILE:
            continue
        arguments = event.get("input")
        path = arguments.get("path") if isinstance(arguments, dict) else None
        if isinstance(path, str) and any(matches_glob(path, g) for g in project.write.effective_denied):
            return path
    return None


async def fix_branch_pull_request(forge: ForgeClient | None, repo: str, branch: str) -> PullRequest | None:
    """The fix branch's open or merged pull request as the forge shows it now: the attempt's outcome.

    None when there is none (or only one closed unmerged), when there is no forge client, or when the forge
    cannot answer: then the agent's word stands and a later pass reads the forge again.
    """
    if forge is None:
        return None
    try:
        pr = await forge.find_pull_request(repo, branch)
    except ForgeError as exc:
        log_event(logger, "pull_request_read_back_failed", level=logging.WARNING, error=str(exc))
        return None
    return pr if pr is not None and (pr.state == "open" or is_merged(pr)) else None


def is_merged(pr: PullRequest) -> bool:
    """Whether the forge merged `pr` (list items carry `merged_at`, not `merged`)."""
    return pr.merged or pr.merged_at is not None


def pull_request_fields(pr: PullRequest) -> dict[str, Any]:
    """What an attempt records from its pull request (with the merge commit once merged)."""
    fields: dict[str, Any] = {"pr_number": pr.number, "pr_url": pr.html_url, "pushed_sha": pr.head.sha}
    if is_merged(pr):
        fields["merged_sha"] = pr.merge_commit_sha
    return fields


def budget_use(attempt: Attempt) -> BudgetUse:
    """What the attempt's earlier runs used, as its row records it."""
    return BudgetUse(
        turns=attempt.turns,
        tokens=attempt.input_tokens + attempt.output_tokens + attempt.cache_tokens,
        cost_usd=attempt.cost_usd,
        wall_seconds=attempt.agent_seconds,
    )


@dataclass
class _RunUse:
    """One agent run's usage on top of what the attempt had used before it (its row when the run started)."""

    before: Attempt
    calls: list[ModelCall] = field(default_factory=list)  # appended to by the model loop as it goes
    started: float = field(default_factory=time.monotonic)

    def fields(self) -> dict[str, Any]:
        """The attempt's usage columns, this run included so far."""
        run, before = total_of(self.calls), self.before
        return {
            "input_tokens": before.input_tokens + run.input_tokens,
            "output_tokens": before.output_tokens + run.output_tokens,
            "cache_tokens": before.cache_tokens + run.cache_creation_input_tokens + run.cache_read_input_tokens,
            "cost_usd": before.cost_usd + run.cost_usd,
            "turns": before.turns + len(self.calls),
            "agent_seconds": before.agent_seconds + (time.monotonic() - self.started),
        }


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def failure_class(exc: BaseException) -> FailureClass:
    """How an agent run that raised `exc` failed: `transient` when the outside did it (the model API after the
    SDK's retries, the forge unavailable, rate limited or unreachable), else `permanent`."""
    leaf = _leaf(exc)
    for cause in (leaf, leaf.__cause__):
        if isinstance(cause, ModelError) and cause.transient:
            return FailureClass.TRANSIENT
        if isinstance(cause, ForgeUnavailable | ForgeRateLimited):
            return FailureClass.TRANSIENT
        if isinstance(cause, ForgeError) and (cause.status is None or cause.status >= 500):
            return FailureClass.TRANSIENT
    return FailureClass.PERMANENT


def _root_cause(exc: BaseException) -> str:
    """A short, secret-free name for what broke: the first leaf of an exception group, by type."""
    exc = _leaf(exc)
    cause = exc.__cause__
    name = exc.__class__.__name__
    return f"{name} (from {cause.__class__.__name__})" if cause is not None else name


class AgentDispatcher:
    """Runs one background task per dispatched attempt, at most `concurrency` agents at once."""

    def __init__(
        self,
        config: GreenloopConfig,
        sessions: SessionFactory,
        *,
        open_session: SessionOpener,
        backend_for: BackendFactory,
        metrics: Metrics,
        heartbeat_seconds: float = 5.0,
        secrets: tuple[str, ...] = (),
        forge: ForgeClient | None = None,
        operator: Operator | None = None,
    ) -> None:
        self._config = config
        self._forge = forge  # to read each attempt's outcome back from the forge
        self._operator = operator  # to post an escalation (the MCP server's operator surface)
        self._sessions = sessions
        self._reported = StoreReportedRuns(sessions)  # runs reported from outside Actions, for the culprit range
        self._open_session = open_session
        self._backend_for = backend_for
        self._metrics = metrics
        self._heartbeat_seconds = heartbeat_seconds
        self._secrets = secrets
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(config.server.concurrency)

    def dispatch(self, attempt: Attempt) -> None:
        """Start the agent for `attempt` in the background (no-op if it already runs here).

        A `pending` attempt is moved to `running` first. A `running` attempt is a resume: the pass that
        re-dispatches it has already claimed it in the database (see `reconciler.reconcile`), so it runs as is.
        """
        if attempt.id in self._tasks:
            return
        task = asyncio.create_task(self._run(attempt), name=f"attempt-{attempt.id}")
        self._tasks[attempt.id] = task
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task.get_name().removeprefix("attempt-"), None)

    def is_running(self, attempt_id: str) -> bool:
        """Whether this process is working on `attempt_id`."""
        return attempt_id in self._tasks

    async def wait_idle(self, timeout: float) -> None:
        """Wait for every running attempt to finish, at most `timeout` seconds."""
        pending = list(self._tasks.values())
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def cancel(self, attempt_id: str, *, timeout: float = 10.0) -> bool:
        """Stop the agent working on `attempt_id` here; True if one was running (and has now stopped).

        Only the background task is cancelled: the caller has already moved the attempt to a terminal status
        in the database, and the run records nothing over it. Waits at most `timeout` seconds for the task to
        unwind, so that once this returns the agent opens no pull request and pushes nothing more.
        """
        task = self._tasks.get(attempt_id)
        if task is None:
            return False
        task.cancel()
        await asyncio.wait([task], timeout=timeout)
        log_event(logger, "attempt_cancelled_here", attempt_id=attempt_id, stopped=task.done())
        if task.done():
            await self._remove_workspace(attempt_id)
        return True

    async def aclose(self) -> None:
        """Cancel running attempts (their heartbeats go stale; a later pass closes them)."""
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _run(self, attempt: Attempt) -> None:
        project = self._config.project(attempt.project)
        with bind_context(attempt_id=attempt.id, trace_id=attempt.trace_id or attempt.id, project=attempt.project):
            async with self._slots:
                if AttemptStatus(attempt.status) is AttemptStatus.RUNNING:
                    log_event(logger, "attempt_resumed")  # claimed by the pass that re-dispatched it
                else:
                    moved = await store.transition(
                        self._sessions,
                        attempt.id,
                        AttemptStatus.RUNNING,
                        reason="agent_started",
                        expected=AttemptStatus.PENDING,
                        branch=fix_branch_name(attempt.job, attempt.id),
                    )
                    if not moved:
                        log_event(logger, "attempt_not_pending", level=logging.WARNING)
                        return
                runner = asyncio.current_task()
                use = _RunUse(attempt)
                beat = asyncio.create_task(self._heartbeat(attempt.id, runner, use))
                started = time.perf_counter()
                try:
                    outcome = await self._agent(attempt, project, use)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the agent's crash is this attempt's failure, not the process's
                    logger.exception("attempt_crashed")
                    await self._remove_workspace(attempt.id)
                    crashed = f"runner_error: {_root_cause(exc)}"
                    branch = fix_branch_name(attempt.job, attempt.id)
                    pr = await fix_branch_pull_request(self._forge, project.repo, branch)
                    if pr is not None:  # it crashed after opening its PR: carry on from the PR
                        await self._pull_request_found(attempt.id, pr, stop_reason=crashed, **use.fields())
                    elif await store.transition(
                        self._sessions,
                        attempt.id,
                        AttemptStatus.FAILED,
                        reason="runner_error",
                        stop_reason=crashed,
                        **use.fields(),
                        failure_class=failure_class(exc).value,
                    ):
                        await self._finished(attempt.id, AttemptStatus.FAILED)
                    return
                finally:
                    beat.cancel()
                await self._remove_workspace(attempt.id)
                await self._record(attempt, project, outcome, use, elapsed=time.perf_counter() - started)

    def _workspace(self, attempt_id: str) -> Path | None:
        """The attempt's working copy on this host (`<workspace_dir>/attempt-<id>`); None when a sidecar has it."""
        if self._config.server.mcp_url:
            return None  # the MCP sidecar's disk, not ours
        return Path(self._config.server.workspace_dir) / f"attempt-{attempt_id}"

    async def _remove_workspace(self, attempt_id: str) -> None:
        """Delete the attempt's working copy once its agent run is over (pushed work lives on the forge).

        Not on shutdown (`aclose`): a resumed attempt picks its clone up again. A failure to delete is logged,
        never raised: the attempt's outcome matters more than the disk.
        """
        root = self._workspace(attempt_id)
        if root is None or not root.exists():
            return
        errors: list[str] = []

        def remove() -> None:
            try:
                shutil.rmtree(root)
            except OSError as exc:
                errors.append(f"{exc.__class__.__name__}: {exc.strerror}")

        await asyncio.to_thread(remove)
        log_event(
            logger,
            "workspace_removed" if not errors else "workspace_remove_failed",
            level=logging.INFO if not errors else logging.WARNING,
            errors=errors[:5],
        )

    async def _agent(self, attempt: Attempt, project: ProjectConfig, use: _RunUse) -> AttemptOutcome:
        # Budgets are per attempt: this run gets what earlier runs (resumes, revision rounds) left.
        budgets = remaining(project.budgets, budget_use(attempt))
        log_event(
            logger,
            "attempt_run_budgets",
            revisions=attempt.revisions,
            max_turns=budgets.max_turns,
            max_tokens=budgets.max_tokens,
            wall_seconds=round(budgets.wall_seconds, 3),
        )
        backend = self._backend_for(attempt, project)
        settings = self._config.agent
        if attempt.model and attempt.model != settings.model:  # chosen at start (policy.spend.choose_model)
            settings = settings.model_copy(update={"model": attempt.model})
        try:
            # Wall-clock guard around the whole run; the loop enforces its own budget inside, this is the backstop.
            async with asyncio.timeout(budgets.wall_seconds + 30):
                task = await self._task(attempt, project)
                async with self._open_session(attempt) as session:
                    return await run_attempt(
                        backend, session, task, budgets, settings=settings, secrets=self._secrets, calls=use.calls
                    )
        finally:
            close = getattr(backend, "aclose", None)
            if close is not None:  # the model client's connections (e.g. AnthropicBackend's HTTP pool)
                await close()

    async def _revision(self, attempt: Attempt, project: ProjectConfig) -> Revision:
        """What a revision round is told: which checks failed on the PR head, and the failing check's log excerpt
        (read from the forge; without it the round still runs, told only that the checks failed)."""
        names: tuple[str, ...] = ()
        log: str | None = None
        if self._forge is not None and attempt.pushed_sha:
            try:
                failed = await failed_checks(self._forge, project.repo, attempt.pushed_sha, extra_secrets=self._secrets)
                names, log = failed.names, failed.excerpt
            except ForgeError as exc:
                log_event(logger, "revision_checks_unread", level=logging.WARNING, error=str(exc))
        return Revision(
            round=attempt.revisions,
            max_rounds=max(project.max_revisions, attempt.revisions),
            branch=fix_branch_name(attempt.job, attempt.id),
            pr_number=attempt.pr_number,
            failing_checks=names,
            log_excerpt=log[:12_000] if log else None,
        )

    async def _task(self, attempt: Attempt, project: ProjectConfig) -> AttemptTask:
        """The attempt's task, with what its first message tells the model besides the failure itself."""
        secrets = self._secrets

        def redact_text(text: str) -> str:
            return redact(text, extra_secrets=secrets)

        return AttemptTask(
            project=attempt.project,
            job=attempt.job,
            failing_run_id=attempt.run_id,
            head_sha=attempt.head_sha,
            revision=await self._revision(attempt, project) if attempt.revisions > 0 else None,
            # What changed since the job was last green (its Actions runs, or its runs reported from outside
            # Actions), compared on the forge.
            culprit_range=await culprit_or_none(
                self._forge,
                project.repo,
                project.default_branch,
                attempt.job,
                redact_text=redact_text,
                reported=self._reported,
                project=project.name,
            ),
            # What earlier attempts on this job did and why they stopped (the store, and the forge for a
            # human's words on a closed pull request): the agent gets it in its task, never from the store.
            earlier_attempts=await earlier_attempts(
                self._sessions,
                self._forge,
                project=project.name,
                repo=project.repo,
                job=attempt.job,
                attempt_id=attempt.id,
                bots=frozenset({self._config.forge.bot_login.lower()}),
                redact_text=redact_text,
            ),
        )

    async def _finished(self, attempt_id: str, status: AttemptStatus) -> None:
        attempt = await store.get_attempt(self._sessions, attempt_id)
        project = next((p for p in self._config.projects if attempt is not None and p.name == attempt.project), None)
        await attempt_finished(
            self._sessions,
            self._metrics,
            attempt_id=attempt_id,
            status=status,
            webhook_url=self._config.server.slack_webhook_url,
            project=project,
            forge=self._forge,
            operator=self._operator,
        )

    async def _pull_request_found(self, attempt_id: str, pr: PullRequest, **fields: Any) -> None:
        """Record the attempt's pull request as the forge shows it: `pr_open` with its number, then `verifying`
        at once when it is merged already (the pass then waits for the job on the merge commit)."""
        if not await store.transition(
            self._sessions,
            attempt_id,
            AttemptStatus.PR_OPEN,
            reason="pr_opened",
            expected=AttemptStatus.RUNNING,
            **{**fields, **pull_request_fields(pr)},
        ):
            return
        if is_merged(pr):
            await store.transition(
                self._sessions, attempt_id, AttemptStatus.VERIFYING, reason="pr_merged", expected=AttemptStatus.PR_OPEN
            )

    async def _heartbeat(self, attempt_id: str, runner: asyncio.Task[Any] | None, use: _RunUse) -> None:
        """Beat every `heartbeat_seconds`, recording the attempt's usage so far (a run that dies is counted);
        cancel `runner` once the database says the attempt is over."""
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                current = await store.get_attempt(self._sessions, attempt_id)
                status = AttemptStatus(current.status) if current is not None else None
                if status in (AttemptStatus.PENDING, AttemptStatus.RUNNING) and await store.heartbeat(
                    self._sessions, attempt_id, **use.fields()
                ):
                    continue
            except ReconcilerError as exc:  # a busy or unreachable store: try again on the next beat
                log_event(logger, "heartbeat_failed", level=logging.WARNING, error=str(exc))
                continue
            # Cancelled by an operator (maybe through another replica) or closed by a pass: stop working on it.
            log_event(logger, "attempt_ended_elsewhere", status=status.value if status else None)
            if runner is not None:
                runner.cancel()
            return

    async def _record(
        self, attempt: Attempt, project: ProjectConfig, outcome: AttemptOutcome, use: _RunUse, *, elapsed: float
    ) -> None:
        fields: dict[str, Any] = {
            "stop_reason": outcome.stop_reason.value,
            **use.fields(),  # every run of the attempt so far, this one included
            "transcript": json.dumps(_earlier_events(attempt) + outcome.transcript, ensure_ascii=False, default=str),
        }
        pr = await fix_branch_pull_request(self._forge, project.repo, fix_branch_name(attempt.job, attempt.id))
        if pr is not None:  # the forge's word, whatever the model said
            await self._pull_request_found(attempt.id, pr, **fields)
            to = AttemptStatus.PR_OPEN
        elif outcome.stop_reason is StopReason.SUCCEEDED_PR:
            fields.update(pr_number=outcome.pr_number, pr_url=outcome.pr_url, pushed_sha=outcome.pushed_sha)
            to, reason = AttemptStatus.PR_OPEN, "pr_opened"
        else:
            fields["report"] = outcome.report_markdown
            protected = tried_protected_path(outcome, project)
            if protected is not None and outcome.stop_reason is StopReason.NO_FIX:
                to, reason = AttemptStatus.ESCALATED, f"needs_human: fix is in a protected path ({protected})"
            else:
                to, reason = AttemptStatus.FAILED, outcome.stop_reason.value
                failed_as = FailureClass.TRANSIENT if outcome.transient else FailureClass.PERMANENT
                fields["failure_class"] = failed_as.value
        if pr is None:
            moved = await store.transition(
                self._sessions, attempt.id, to, reason=reason, expected=AttemptStatus.RUNNING, **fields
            )
            if moved and to is not AttemptStatus.PR_OPEN:
                await self._finished(attempt.id, to)
        log_event(
            logger,
            "attempt_agent_finished",
            status=to.value,
            stop_reason=outcome.stop_reason.value,
            pr_url=outcome.pr_url,
            turns=outcome.turns,
            input_tokens=outcome.usage.input_tokens,
            output_tokens=outcome.usage.output_tokens,
            cost_usd=round(outcome.cost_usd, 6),
            seconds=round(elapsed, 3),
        )


def _earlier_events(attempt: Attempt) -> list[Any]:
    """The transcript events of the attempt's earlier runs (a revision round's transcript follows them)."""
    if not attempt.transcript:
        return []
    try:
        events = json.loads(attempt.transcript)
    except ValueError:
        return []
    return events if isinstance(events, list) else []
