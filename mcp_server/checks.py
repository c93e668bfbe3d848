"""The checks on a pull request's head, read from the forge and judged by policy/checks.py, and the merge
the reconciler makes once they passed.

One reader for the merge tool (which refuses unless they passed) and the reconciler (which shows the wait
and, for an `auto_merge` project, merges on a later pass once they passed). The reconciler's merge goes
through here, with the MCP server's forge client and the same walls as the tool; never through the model.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from mcp_server.errors import ForgeError, ToolRefused
from mcp_server.forge import ForgeClient, PullRequest
from mcp_server.log_excerpt import excerpt
from policy.checks import PASSING_CONCLUSIONS, CheckState, ChecksVerdict, ContextReport, checks_verdict
from policy.config import ProjectConfig
from policy.types import Autonomy

__all__ = ["FailedChecks", "failed_checks", "head_checks", "merge_when_green", "refuse_unless_mergeable"]

REVISION_EXCERPT_TOKENS = 1500
"""How much of the failing check's log a revision round is given (about 5,000 characters)."""


@dataclass(frozen=True)
class FailedChecks:
    """The check runs that failed on a head, and the log excerpt of the first one with a log (redacted)."""

    names: tuple[str, ...]
    excerpt: str | None = None
    url: str | None = None


async def head_checks(forge: ForgeClient, repo: str, sha: str, base: str) -> ChecksVerdict:
    """The verdict on `sha`: the contexts branch protection of `base` requires, or every check and status."""
    required = await forge.required_status_checks(repo, base)
    runs = await forge.list_check_runs(repo, sha)
    statuses = await forge.list_commit_statuses(repo, sha)
    reports = [ContextReport(r.name, "check", r.status, r.conclusion, r.html_url or r.details_url) for r in runs]
    reports += [ContextReport(s.context, "status", s.state, None, s.target_url) for s in statuses]
    return checks_verdict(reports, required)


async def merge_when_green(
    forge: ForgeClient, project: ProjectConfig, pr: PullRequest, *, pushed_sha: str, title: str, message: str
) -> str:
    """Squash-merge the attempt's pull request at `pushed_sha` once its checks passed; the merge commit's sha.

    Raises:
        ToolRefused: not `auto_merge`, not open, the head moved, not on the default branch, or checks not green.
    """
    # Security: the same walls as the merge tool: configuration decides, and only what the attempt pushed.
    if project.autonomy is not Autonomy.AUTO_MERGE:
        raise ToolRefused(f"Merge refused: project autonomy is {project.autonomy.value!r}, not 'auto_merge'.")
    if pr.state != "open":
        raise ToolRefused(f"Merge refused: pull request #{pr.number} is {pr.state}.")
    await refuse_unless_mergeable(forge, project, pr, pushed_sha, pusher="the attempt")
    return await forge.merge_pull_request(project.repo, pr.number, sha=pushed_sha, title=title, message=message)


async def refuse_unless_mergeable(
    forge: ForgeClient, project: ProjectConfig, pr: PullRequest, pushed_sha: str, *, pusher: str, not_green: str = ""
) -> None:
    """The walls every merge of an open pull request passes, the merge tool's and the reconciler's alike.

    `pusher` names who pushed `pushed_sha` in the refusal ("this session", "the attempt"); `not_green` is
    appended to the refusal when the checks have not passed (what the caller does next).

    Raises:
        ToolRefused: the head is not `pushed_sha`, the base is not the default branch, or the head's checks
            (the required ones, or all) have not passed.
    """
    # Security: merge only what was pushed; a head moved by anyone else needs a human.
    if pr.head.sha != pushed_sha:
        raise ToolRefused(
            f"Merge refused: the pull request head moved: {pr.head.sha[:12]!r} is not the commit {pusher} "
            f"pushed ({pushed_sha[:12]!r}); a human must review it."
        )
    if pr.base.ref != project.default_branch:
        raise ToolRefused(f"Merge refused: the pull request targets {pr.base.ref!r}, not the default branch.")
    # Security: untested code never lands.
    checks = await head_checks(forge, project.repo, pushed_sha, pr.base.ref)
    if checks.state is not CheckState.PASSED:
        raise ToolRefused(f"Merge refused: {checks.reason()}.{not_green}")


async def failed_checks(
    forge: ForgeClient, repo: str, sha: str, *, extra_secrets: Collection[str] = ()
) -> FailedChecks:
    """The check runs that completed unsuccessfully on `sha`, with the log excerpt of the first whose job log
    the forge serves (an Actions job is a check run with the same id; an outside check has no log there).

    Raises:
        ForgeError: the check runs could not be listed (a log that cannot be read is left out instead).
    """
    failing = [r for r in await forge.list_check_runs(repo, sha) if r.status == "completed"]
    failing = [r for r in failing if r.conclusion not in PASSING_CONCLUSIONS]
    names = tuple(dict.fromkeys(r.name for r in failing))
    for run in failing:
        try:
            log = await forge.download_job_logs(repo, run.id)
        except ForgeError:
            continue  # an outside check run: no Actions log
        shown = excerpt(log, budget_tokens=REVISION_EXCERPT_TOKENS, extra_secrets=extra_secrets)
        return FailedChecks(names, shown.rendered, run.html_url or run.details_url)
    return FailedChecks(names, None, failing[0].html_url if failing else None)
