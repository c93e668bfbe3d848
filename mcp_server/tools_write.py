"""The five write tools: the fix branch, its files, the commit, the pull request and its merge (agent sessions
only; a read-only server doesn't register them).

Each acts only on the attempt's own fix branch and pull request; what a write did is read back from the forge
when its reply was lost.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated

from pydantic import Field

from mcp_server.checks import refuse_unless_mergeable
from mcp_server.deadline import off_loop
from mcp_server.errors import ForgeError, ToolRefused
from mcp_server.forge import PullRequest
from mcp_server.middleware import ToolSpec, bound_session, tool
from mcp_server.models import (
    MAX_CONTENT_CHARS,
    MAX_PATH_CHARS,
    BranchCreated,
    FileWritten,
    PullRequestInfo,
    PullRequestMerged,
    Pushed,
)
from mcp_server.session import SessionBinding
from mcp_server.workspace import Workspace
from policy.redaction import secret_variants
from policy.types import Autonomy

__all__ = ["WRITE_TOOL_SPECS"]

_PR_FOOTER = "\n\n---\nOpened by greenloop attempt `{attempt}` for the failing job `{job}`."


def _on_fix_branch(s: SessionBinding, ws: Workspace) -> str:
    _, _, branch = s.require_agent()
    current = ws.current_branch()
    if current != branch:
        raise ToolRefused(
            f"Refused: the workspace is on branch {current!r}, not this attempt's fix branch; call create_branch first."
        )
    return branch


def _holds_live_secret(content: str, secrets: tuple[str, ...]) -> bool:
    return any(form in content for secret in secrets for form in secret_variants(secret))


@tool(title="Create the fix branch", write=True)
async def create_branch() -> BranchCreated:
    """Create this attempt's fix branch from the default branch and check it out (or check it out again).

    The name is fixed by the attempt (see get_project_info.fix_branch); it cannot be chosen. Only the
    attempt's own fix branch; never the default branch.
    """
    s = bound_session()
    _, _, branch = s.require_agent()
    ws = await s.ready_workspace()
    head = await ws.create_branch(branch)
    return BranchCreated(branch=branch, head_sha=head)


@tool(title="Write a repository file", write=True, destructive=True)
async def write_repo_file(
    path: Annotated[
        str,
        Field(min_length=1, max_length=MAX_PATH_CHARS, description="Path relative to the repository root."),
    ],
    content: Annotated[str, Field(max_length=MAX_CONTENT_CHARS, description="The file's whole new content.")],
) -> FileWritten:
    """Create or overwrite one text file on the fix branch (call create_branch first). The change is
    committed by commit_and_push. Refused when the attempt's change limits (files, lines, bytes) would be
    exceeded or the path is protected (workflows, CODEOWNERS, keys, .env, ...).

    Only files inside the project's repository; never .git/, never through a symlink.
    """
    s = bound_session()
    ws = await s.ready_workspace()
    _on_fix_branch(s, ws)
    # Security: the model only ever sees redacted text, so a live credential in content was smuggled in.
    if await off_loop(_holds_live_secret, content, s.live_secrets()):
        raise ToolRefused(f"Write refused: the content contains a live credential: {path!r}.")
    b = s.project.budgets
    got = await ws.write_file(
        path,
        content,
        max_bytes=b.max_file_bytes,
        max_files_changed=b.max_files_changed,
        max_lines_changed=b.max_lines_changed,
    )
    return FileWritten(
        path=got.path,
        bytes_written=got.bytes,
        created=got.created,
        files_changed=got.files_changed_total,
        lines_changed=got.lines_changed_total,
    )


@tool(title="Commit and push the fix", write=True, idempotent=False)
async def commit_and_push(
    message: Annotated[str, Field(min_length=1, max_length=2000, description="The commit message.")],
) -> Pushed:
    """Commit every change written on the fix branch and push it to the forge. Refused on any other branch
    and when there is nothing to commit.

    Only the attempt's own fix branch; never the default branch.
    """
    s = bound_session()
    attempt_id, _, _ = s.require_agent()
    ws = await s.ready_workspace()
    branch = _on_fix_branch(s, ws)
    got = await ws.commit_and_push(s.redact(message), attempt_id=attempt_id, expected_branch=branch)
    s.pushed_sha = got.sha
    return Pushed(sha=got.sha, branch=got.branch)


def _pr_info(s: SessionBinding, pr: PullRequest, *, created: bool) -> PullRequestInfo:
    return PullRequestInfo(
        number=pr.number,
        url=pr.html_url or "",
        state="merged" if _is_merged(pr) else pr.state,
        head_branch=pr.head.ref,
        head_sha=pr.head.sha,
        base_branch=pr.base.ref,
        title=s.redact(pr.title),
        created=created,
    )


@tool(title="Open the pull request", write=True)
async def create_pull_request(
    title: Annotated[str, Field(min_length=1, max_length=200, description="The pull request title.")],
    body: Annotated[str, Field(max_length=20_000, description="What failed, why, and what the fix changes.")],
) -> PullRequestInfo:
    """Open a pull request from the fix branch into the default branch, after commit_and_push. Idempotent:
    when the fix branch already has a pull request, that one is returned (created = false).

    Only from the attempt's own fix branch into the project's default branch.
    """
    s = bound_session()
    attempt_id, job, branch = s.require_agent()
    p = s.project
    existing = await s.forge.find_pull_request(p.repo, branch)
    if existing is not None:
        if existing.state != "open" and not _is_merged(existing):
            raise ToolRefused(
                f"Refused: pull request #{existing.number} of the fix branch was closed without merging; a human "
                "declined this fix. Stop here."
            )
        return _pr_info(s, existing, created=False)
    if s.pushed_sha is None:
        raise ToolRefused("Refused: nothing pushed yet; call commit_and_push before create_pull_request.")
    try:
        pr = await s.forge.create_pull_request(
            p.repo,
            head=branch,
            base=p.default_branch,
            title=s.redact(title),
            body=s.redact(body) + _PR_FOOTER.format(attempt=attempt_id, job=job),
        )
    except ForgeError as exc:
        # The request may have reached the forge (its reply lost): the forge says whether the PR exists.
        found = await _read_back(exc, s.forge.find_pull_request(p.repo, branch))
        if found is None or not (found.state == "open" or _is_merged(found)):
            raise ForgeError(f"{exc} Read back: the fix branch has no open pull request.", status=exc.status) from exc
        return _pr_info(s, found, created=True)
    return _pr_info(s, pr, created=True)


async def _read_back(failed: ForgeError, reading: Awaitable[PullRequest | None]) -> PullRequest | None:
    """What the forge shows after a write failed; a read-back that fails too raises the write's error."""
    try:
        return await reading
    except ForgeError as exc:
        raise ForgeError(f"{failed} Read back failed too: {exc}", status=failed.status) from failed


def _is_merged(pr: PullRequest) -> bool:
    """Whether the forge merged `pr` (list items carry `merged_at`, not `merged`)."""
    return pr.merged or pr.merged_at is not None


def _merged_at(pr: PullRequest, sha: str) -> bool:
    """Whether `pr` is merged with its head at `sha`."""
    return _is_merged(pr) and pr.head.sha == sha


@tool(title="Merge the pull request", write=True, destructive=True, idempotent=False)
async def merge_pull_request() -> PullRequestMerged:
    """Squash-merge the fix branch's pull request. Allowed only when the project's autonomy is auto_merge
    and the pull request's head is exactly the commit this session pushed; otherwise refused, and a human
    reviews and merges it.

    Only the attempt's own pull request.
    """
    s = bound_session()
    attempt_id, job, branch = s.require_agent()
    p = s.project
    # Security: the autonomy level is configuration, never the model's choice.
    if p.autonomy is not Autonomy.AUTO_MERGE:
        raise ToolRefused(
            f"Merge refused: project autonomy is {p.autonomy.value!r}, not 'auto_merge'; a human reviews and "
            "merges this pull request. Stop here."
        )
    pushed = s.pushed_sha
    if pushed is None:
        raise ToolRefused("Merge refused: this session has not pushed a commit; call commit_and_push first.")
    pr = await s.forge.find_pull_request(p.repo, branch)
    if pr is not None and _merged_at(pr, pushed):  # merged already (an earlier call's reply was lost)
        return PullRequestMerged(number=pr.number, merged=True, sha=pr.merge_commit_sha)
    if pr is None or pr.state != "open":
        raise ToolRefused("Merge refused: the fix branch has no open pull request; call create_pull_request.")
    # Security: only what this session pushed, onto the default branch, once its checks passed.
    await refuse_unless_mergeable(
        s.forge,
        p,
        pr,
        pushed,
        pusher="this session",
        not_green=" The pull request stays open; greenloop merges it once its checks pass. Stop here.",
    )
    try:
        merge_sha = await s.forge.merge_pull_request(
            p.repo,
            pr.number,
            sha=pushed,
            title=s.redact(pr.title),
            message=f"greenloop attempt {attempt_id} for job {job}",
        )
    except ForgeError as exc:
        # A lost reply, or a re-sent PUT told "not mergeable" because the first one merged: read it back.
        now = await _read_back(exc, s.forge.get_pull_request(p.repo, pr.number))
        if now is not None and _merged_at(now, pushed):
            return PullRequestMerged(number=now.number, merged=True, sha=now.merge_commit_sha)
        saw = f"#{pr.number} is {now.state if now else 'gone'}, not merged at {pushed[:12]}"
        raise ForgeError(f"{exc} Read back: pull request {saw}.", status=exc.status) from exc
    return PullRequestMerged(number=pr.number, merged=True, sha=merge_sha)


WRITE_TOOL_SPECS: tuple[ToolSpec, ...] = (
    create_branch,
    write_repo_file,
    commit_and_push,
    create_pull_request,
    merge_pull_request,
)
"""The write tools, in the order `tools/list` shows them."""
