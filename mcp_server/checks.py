"""The checks on a pull request's head, read from the forge and judged by policy/checks.py, and the merge
the reconciler makes once they passed.

One reader for the merge tool (which refuses unless they passed) and the reconciler (which shows the wait
and, for an `auto_merge` project, merges on a later pass once they passed). The reconciler's merge goes
through here, with the MCP server's forge client and the same walls as the tool; never through the model.
"""

from __future__ import annotations

from mcp_server.errors import ToolRefused
from mcp_server.forge import ForgeClient, PullRequest
from policy.checks import CheckState, ChecksVerdict, ContextReport, checks_verdict
from policy.config import ProjectConfig
from policy.types import Autonomy

__all__ = ["head_checks", "merge_when_green"]


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
    if pr.head.sha != pushed_sha:
        raise ToolRefused(
            f"Merge refused: the pull request head moved: {pr.head.sha[:12]!r} is not the commit the attempt "
            f"pushed ({pushed_sha[:12]!r}); a human must review it."
        )
    if pr.base.ref != project.default_branch:
        raise ToolRefused(f"Merge refused: the pull request targets {pr.base.ref!r}, not the default branch.")
    checks = await head_checks(forge, project.repo, pushed_sha, pr.base.ref)
    if checks.state is not CheckState.PASSED:
        raise ToolRefused(f"Merge refused: {checks.reason()}.")
    return await forge.merge_pull_request(project.repo, pr.number, sha=pushed_sha, title=title, message=message)
