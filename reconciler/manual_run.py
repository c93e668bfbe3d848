"""`greenloop agent run` recorded as an attempt: a manual run is visible to the store like any other.

Before the model is called, the run is inserted as an attempt for its failure (the same fingerprint a pass
would use) and moved to `running` (reason `manual_run`), with its heartbeat kept fresh while it works. The
database's one-active-attempt index and its once-per-failure fingerprint then stop `greenloop run` from
starting a second attempt on the same failure, and a manual run on a failure already handled, or on a project
with an active attempt, is refused before any token is spent. When it ends, the outcome is recorded as the
dispatcher records an agent's: the fix branch's pull request as the forge shows it -> `pr_open` (later passes
follow it), a fix only a protected path allows -> `escalated`, anything else -> `failed` with the stop reason;
a run that did not end normally (an error, Ctrl-C) -> `failed` (`manual_run_interrupted`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any, TextIO

from agent.errors import AgentError
from agent.loop import AttemptOutcome
from agent.types import AttemptTask, StopReason
from infra.jsonlog import log_event
from policy.branches import fix_branch_name
from policy.config import GreenloopConfig, ProjectConfig
from policy.gate import failure_fingerprint
from policy.types import AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.dispatch import fix_branch_pull_request, is_merged, pull_request_fields, tried_protected_path
from reconciler.errors import ReconcilerError
from reconciler.finish import attempt_finished
from reconciler.runtime import open_runtime
from reconciler.store import attempts as store
from reconciler.store.attempts import new_attempt_id

__all__ = ["ManualRunRefused", "StoreRecorder", "manual_agent_run"]

logger = logging.getLogger("greenloop.manual_run")


class ManualRunRefused(AgentError):
    """The store refused to record the manual run (an attempt is active, or this failure was handled)."""


class StoreRecorder:
    """A `agent.cli.RunRecorder` on the reconciler's store, for the attempt `attempt_id`."""

    def __init__(
        self, ctx: ReconcilerContext, project: ProjectConfig, attempt_id: str, *, heartbeat_seconds: float = 5.0
    ) -> None:
        self._ctx = ctx
        self._project = project
        self.attempt_id = attempt_id
        self._heartbeat_seconds = heartbeat_seconds
        self._beat: asyncio.Task[None] | None = None
        self._job = ""

    async def started(self, task: AttemptTask) -> None:
        """Insert the attempt and mark it `running`; raises `ManualRunRefused` when the store says no."""
        ctx, name = self._ctx, self._project.name
        await ctx.ensure_projects()
        outcome = await store.start_attempt(
            ctx.sessions,
            project=name,
            job=task.job,
            fingerprint=failure_fingerprint(name, task.job, task.head_sha),
            run_id=task.failing_run_id,
            head_sha=task.head_sha,
            attempt_id=self.attempt_id,
        )
        if not outcome.started:
            why = {
                "already_active": f"project {name!r} has an active attempt",
                "already_handled": f"an attempt already handled this failure (run {task.failing_run_id})",
            }.get(outcome.reason, f"the store refused it ({outcome.reason})")
            raise ManualRunRefused(f"manual run refused: {why}; see greenloop attempts list --project {name}")
        self._job = task.job
        await store.transition(
            ctx.sessions,
            self.attempt_id,
            AttemptStatus.RUNNING,
            reason="manual_run",
            expected=AttemptStatus.PENDING,
            branch=fix_branch_name(task.job, self.attempt_id),
        )
        log_event(logger, "manual_run_started", attempt_id=self.attempt_id, project=name, job=task.job)
        self._beat = asyncio.create_task(self._heartbeat(), name=f"manual-heartbeat-{self.attempt_id}")

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                await store.heartbeat(self._ctx.sessions, self.attempt_id)
            except ReconcilerError as exc:  # a busy store: the next beat tries again
                log_event(logger, "heartbeat_failed", level=logging.WARNING, error=str(exc))

    async def finished(self, outcome: AttemptOutcome | None) -> None:
        """Record how the run ended (see the module doc)."""
        if self._beat is not None:
            self._beat.cancel()
            await asyncio.gather(self._beat, return_exceptions=True)
        ctx, project = self._ctx, self._project
        fields: dict[str, Any] = {}
        if outcome is not None:
            fields = {
                "stop_reason": outcome.stop_reason.value,
                "input_tokens": outcome.usage.input_tokens,
                "output_tokens": outcome.usage.output_tokens,
                "cache_tokens": outcome.usage.cache_creation_input_tokens + outcome.usage.cache_read_input_tokens,
                "cost_usd": outcome.cost_usd,
                "turns": outcome.turns,
                "transcript": json.dumps(outcome.transcript, ensure_ascii=False, default=str),
            }
        pr = await fix_branch_pull_request(ctx.forge, project.repo, fix_branch_name(self._job, self.attempt_id))
        if pr is not None:  # the forge's word, whatever the model said
            await self._transition(AttemptStatus.PR_OPEN, "pr_opened", **{**fields, **pull_request_fields(pr)})
            if is_merged(pr):
                await store.transition(
                    ctx.sessions,
                    self.attempt_id,
                    AttemptStatus.VERIFYING,
                    reason="pr_merged",
                    expected=AttemptStatus.PR_OPEN,
                )
            return
        if outcome is None:
            await self._transition(AttemptStatus.FAILED, "manual_run_interrupted", stop_reason="interrupted")
            return
        if outcome.stop_reason is StopReason.SUCCEEDED_PR:
            fields.update(pr_number=outcome.pr_number, pr_url=outcome.pr_url, pushed_sha=outcome.pushed_sha)
            await self._transition(AttemptStatus.PR_OPEN, "pr_opened", **fields)
            return
        fields["report"] = outcome.report_markdown
        protected = tried_protected_path(outcome, project)
        if protected is not None and outcome.stop_reason is StopReason.NO_FIX:
            to, reason = AttemptStatus.ESCALATED, f"needs_human: fix is in a protected path ({protected})"
        else:
            to, reason = AttemptStatus.FAILED, outcome.stop_reason.value
        await self._transition(to, reason, **fields)

    async def _transition(self, to: AttemptStatus, reason: str, **fields: Any) -> None:
        ctx = self._ctx
        moved = await store.transition(
            ctx.sessions, self.attempt_id, to, reason=reason, expected=AttemptStatus.RUNNING, **fields
        )
        log_event(logger, "manual_run_finished", attempt_id=self.attempt_id, status=to.value, recorded=moved)
        if moved and to not in (AttemptStatus.PR_OPEN, AttemptStatus.VERIFYING):
            await attempt_finished(
                ctx.sessions,
                ctx.metrics,
                attempt_id=self.attempt_id,
                status=to,
                webhook_url=ctx.config.server.slack_webhook_url,
                project=self._project,
                forge=ctx.forge,
            )


async def manual_agent_run(
    config: GreenloopConfig,
    project: str,
    job: str,
    model_spec: str | None,
    *,
    run_id: str | None = None,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
) -> int:
    """`greenloop agent run`, recorded as an attempt in the store (see the module doc); the exit code."""
    from agent.cli import agent_run_command

    try:
        project_config = config.project(project)
    except KeyError:
        project_config = None
    if project_config is None:  # agent_run_command says so, with its exit code
        return await agent_run_command(config, project, job, model_spec, run_id=run_id, env=env, out=out)
    async with open_runtime(config, backend_for=None, with_dispatcher=False) as ctx:
        recorder = StoreRecorder(ctx, project_config, new_attempt_id())
        return await agent_run_command(
            config, project, job, model_spec, run_id=run_id, attempt_id=recorder.attempt_id, recorder=recorder,
            env=env, out=out,
        )  # fmt: skip
