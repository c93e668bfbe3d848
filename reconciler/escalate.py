"""An escalation reaches a human: the report on the forge (PR comment or issue, owners brought in), the
project's record of it (GET /projects), and the words the Slack notice uses.

Called once per escalation from `finish.attempt_finished`: an attempt that ends `escalated` (merged fix still
red, PR checks failing, revisions exhausted, a protected path needed), or a `failed` attempt that reaches
the project's `max_consecutive_failures` (the attempt cap). Forge failures are logged, never raised: the
pass goes on, and the Slack notice still goes out.
"""

from __future__ import annotations

import json
import logging

from agent.report import AttemptChange, render_escalation
from infra.jsonlog import log_event
from mcp_server.errors import ForgeError
from mcp_server.escalation import EscalationPosted, escalation_marker
from mcp_server.forge import ForgeClient
from mcp_server.operator import Operator
from policy.config import ProjectConfig
from reconciler.store import attempts as store
from reconciler.store import projects as project_store
from reconciler.store.audit import tool_calls
from reconciler.store.engine import SessionFactory
from reconciler.store.models import Attempt

__all__ = ["ATTEMPT_CAP", "escalate", "why_escalated"]

logger = logging.getLogger("greenloop.escalation")

ATTEMPT_CAP = "attempt_cap_reached"
_WHY = {
    "fix_did_not_turn_green": "The fix was merged, but the job is still red on a commit containing it.",
    "pr_checks_failing": "The fix pull request's checks failed.",
    "revisions_exhausted": "The fix pull request's checks still failed after every revision round.",
    ATTEMPT_CAP: "Every attempt allowed on this failure ended without a fix.",
}


def why_escalated(attempt: Attempt) -> str:
    """One sentence, in words that match the state, for the report and the Slack notice."""
    reason = attempt.stop_reason or ""
    if reason.startswith("needs_human") or (reason == "no_fix" and attempt.status == "escalated"):
        return "The only fix is in a protected path (workflows, secrets), which greenloop may not change."
    return _WHY.get(reason, f"The attempt stopped: {reason or 'no reason recorded'}.")


def _hypothesis(report: str | None) -> str | None:
    """The hypothesis section of the agent's own report, when it wrote one."""
    if not report or "## Hypothesised root cause" not in report:
        return None
    section = report.split("## Hypothesised root cause", 1)[1].split("\n## ", 1)[0]
    return "\n".join(ln.removeprefix("> ").removeprefix(">") for ln in section.strip().splitlines()) or None


async def _files(sessions: SessionFactory, attempt_id: str) -> tuple[str, ...]:
    """The files the attempt wrote (write_repo_file calls that succeeded), with their size."""
    out: dict[str, str] = {}
    for call in await tool_calls(sessions, attempt_id=attempt_id):
        if call.tool != "write_repo_file" or call.outcome != "ok":
            continue
        try:
            args = json.loads(call.arguments)
        except ValueError:
            continue
        path = args.get("path") if isinstance(args, dict) else None
        if isinstance(path, str):
            content = args.get("content")
            size = f"{len(content)} chars" if isinstance(content, str) else "written"
            out[path] = f"{path} ({size})"
    return tuple(out.values())


async def _run_facts(forge: ForgeClient, repo: str, attempt: Attempt) -> tuple[str | None, str | None]:
    """The failing run's link and its failing job's log (None where the forge has none)."""
    if not attempt.run_id.isdigit():
        return None, None
    run_id = int(attempt.run_id)
    try:
        run = await forge.get_workflow_run(repo, run_id)
        job = next((j for j in await forge.list_run_jobs(repo, run_id) if j.name == attempt.job), None)
        log = await forge.download_job_logs(repo, job.id) if job is not None else None
    except ForgeError as exc:
        log_event(logger, "escalation_run_unread", level=logging.WARNING, attempt_id=attempt.id, reason=str(exc))
        return None, None
    return run.html_url, log


async def escalate(
    sessions: SessionFactory,
    forge: ForgeClient | None,
    project: ProjectConfig,
    attempt: Attempt,
    *,
    why: str,
    reason: str,
    operator: Operator | None = None,
) -> tuple[str, EscalationPosted | None]:
    """Render the report, post it on the forge and record it on the project; (report, where it landed)."""
    history = [a for a in await store.attempt_history(sessions, project.name, limit=10) if a.job == attempt.job]
    changes = [
        AttemptChange(a.id, a.status, a.stop_reason, await _files(sessions, a.id), a.pr_url) for a in reversed(history)
    ]
    run_url, log = await _run_facts(forge, project.repo, attempt) if forge is not None else (None, None)
    links = [("failing run", run_url)] if run_url else []
    if attempt.pr_url:
        links.append(("fix pull request", attempt.pr_url))
    report = render_escalation(
        project=project.name,
        job=attempt.job,
        run_id=attempt.run_id,
        run_url=run_url,
        head_sha=attempt.head_sha,
        why=why,
        log=log,
        attempts=changes,
        hypothesis=_hypothesis(attempt.report),
        links=[(label, url) for label, url in links if url],
    )
    posted: EscalationPosted | None = None
    if operator is not None:
        try:
            posted = await operator.post_escalation(
                project.name,
                marker=escalation_marker(project.name, attempt.job),
                title=f"greenloop needs a human: {attempt.job} is failing on {project.default_branch}",
                report=report,
                pr_number=attempt.pr_number,
                owners=project.owners,
                attempt_id=attempt.id,
            )
        except ForgeError as exc:
            log_event(logger, "escalation_not_posted", level=logging.WARNING, attempt_id=attempt.id, reason=str(exc))
    await project_store.record_escalation(
        sessions, project.name, reason=reason, url=posted.url if posted is not None else None
    )
    log_event(
        logger,
        "escalation_posted" if posted is not None else "escalation_recorded",
        attempt_id=attempt.id,
        project=project.name,
        reason=reason,
        kind=posted.kind if posted is not None else None,
        url=posted.url if posted is not None else None,
    )
    return report, posted
