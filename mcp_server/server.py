"""The greenloop MCP server: exactly ten least-privilege tools over one bound project.

No tool takes a repository: every session is bound to one project (and, for the agent, one attempt and one
failing job) by its `SessionGrant`. `read-only` servers register the five read tools only; `agent` servers
all ten. Every call, whatever its outcome, is audited; everything shown to the model is redacted with the
known secret patterns and the live installation tokens.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import anyio
import pydantic_core
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from mcp_server.audit import AuditEvent, Outcome
from mcp_server.auth import grant_from_access_token
from mcp_server.checks import head_checks
from mcp_server.deadline import DEFAULT_CALL_DEADLINE_SECONDS, call_deadline, off_loop
from mcp_server.errors import (
    OUTSIDE_FAILURE_PREFIXES,
    ForgeError,
    ForgeRateLimited,
    ForgeUnavailable,
    McpServerError,
    ToolRefused,
)
from mcp_server.forge import PullRequest
from mcp_server.log_excerpt import MIN_BUDGET_TOKENS, excerpt
from mcp_server.models import (
    MAX_BUDGET_TOKENS,
    MAX_CONTENT_CHARS,
    MAX_LIST_LIMIT,
    MAX_PATH_CHARS,
    MAX_READ_LINES,
    MAX_RUNS_LIMIT,
    READ_TOOLS,
    TOOL_NAMES,
    WRITE_TOOLS,
    BranchCreated,
    CommitInfo,
    FileListing,
    FileSlice,
    FileWritten,
    JobLogs,
    JobRun,
    JobRuns,
    ProjectInfo,
    PullRequestInfo,
    PullRequestMerged,
    Pushed,
    WriteLimits,
)
from mcp_server.reported_runs import ReportedRunInfo
from mcp_server.session import BindingFactory, Mode, SessionBinding, SessionGrant
from mcp_server.workspace import Workspace
from policy.checks import CheckState
from policy.errors import PolicyViolation
from policy.redaction import redact, redact_obj, secret_variants
from policy.types import Autonomy

__all__ = ["READ_TOOLS", "TOOL_NAMES", "WRITE_TOOLS", "build_server"]

logger = logging.getLogger("greenloop.mcp.server")


_INTERNAL_ERROR = "Internal error: the tool failed unexpectedly; the details are in the server log."
_INLINE_REDACT_CHARS = 16_000  # results with more text than this are redacted in a worker thread
_AUDIT_STRING_CHARS = 2000  # longer argument strings (file contents) are stored as a head and a length
# The run ids POST /runs accepts; Actions run ids are numbers.
_RunIdText = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]
_PR_FOOTER = "\n\n---\nOpened by greenloop attempt `{attempt}` for the failing job `{job}`."


# --------------------------------------------------------------------------------------------------------------
# Per-call state: the middleware binds the session, the tool wrapper records how the call ended.


@dataclass
class _Call:
    binding: SessionBinding
    deadline_seconds: float = DEFAULT_CALL_DEADLINE_SECONDS
    outcome: Outcome | None = None
    message: str | None = None
    # Text this call's redaction produced (or cut at line breaks from it): shown as it is, never redacted twice.
    clean: set[str] = field(default_factory=set)

    def redact(self, text: str) -> str:
        """`text` with the session's secrets masked, once per call: text it already redacted comes back as is.

        Safe from a worker thread (one set insertion under the GIL)."""
        if text in self.clean:
            return text
        shown = self.binding.redact(text)
        self.clean.add(shown)
        return shown


_CURRENT: ContextVar[_Call | None] = ContextVar("greenloop_mcp_call", default=None)


def _redactor(s: SessionBinding) -> Callable[[str], str]:
    """The redaction for what `s`'s tools show: the current call's (each text redacted once), else the session's."""
    call = _CURRENT.get()
    return call.redact if call is not None and call.binding is s else s.redact


def _session() -> SessionBinding:
    call = _CURRENT.get()
    if call is None:  # only reachable when a tool is invoked outside the server's middleware
        raise ToolRefused("Access denied: this session is not bound to a project.")
    return call.binding


_F = TypeVar("_F", bound=Callable[..., Awaitable[BaseModel]])


@dataclass(frozen=True)
class _ToolSpec:
    fn: Callable[..., Awaitable[BaseModel]]
    write: bool
    annotations: ToolAnnotations
    parameters: frozenset[str]


_TOOLS: list[_ToolSpec] = []


def _tool(*, title: str, write: bool, destructive: bool = False, idempotent: bool = True) -> Callable[[_F], _F]:
    """Register a tool: it runs under the session's wall and its errors become model-readable ToolErrors."""

    def decorator(fn: _F) -> _F:
        @functools.wraps(fn)
        async def guarded(**kwargs: Any) -> BaseModel:
            call = _CURRENT.get()
            seconds = call.deadline_seconds if call is not None else DEFAULT_CALL_DEADLINE_SECONDS
            try:
                if write:
                    # Security: write tools exist only on agent servers, and act only for agent grants.
                    _session().require_agent()
                # Security: no call may hold its session (or the server) past its deadline.
                with call_deadline(seconds, fn.__name__):
                    return await fn(**kwargs)
            except (ToolRefused, PolicyViolation) as exc:
                raise ToolError(_finish(call, "refused", str(exc))) from None
            except McpServerError as exc:
                # Forge and git failures: their messages are written to be shown (no tokens, no host paths).
                raise ToolError(_finish(call, "error", _shown(exc))) from None
            except OSError as exc:
                if isinstance(exc, TimeoutError | ConnectionError):  # not the filesystem: a crash like any other
                    raise ToolError(_crashed(call, fn.__name__, exc)) from None
                # The filesystem refused: say what it said, never the host path it names.
                reason = exc.strerror or exc.__class__.__name__
                message = f"Refused: the filesystem refused the request: {reason}."
                raise ToolError(_finish(call, "refused", message)) from None
            except Exception as exc:  # top-level boundary of the tool: log the detail, show a generic message
                raise ToolError(_crashed(call, fn.__name__, exc)) from None

        _TOOLS.append(
            _ToolSpec(
                fn=guarded,
                write=write,
                parameters=frozenset(inspect.signature(fn).parameters),
                annotations=ToolAnnotations(
                    title=title,
                    read_only_hint=not write,
                    destructive_hint=destructive,
                    idempotent_hint=idempotent,
                    open_world_hint=False,
                ),
            )
        )
        return fn

    return decorator


def _shown(exc: McpServerError) -> str:
    """The message of a forge or git failure; an outage of the forge always begins with an outside prefix."""
    text = str(exc)
    if isinstance(exc, ForgeUnavailable | ForgeRateLimited) and not text.startswith(OUTSIDE_FAILURE_PREFIXES):
        text = f"{OUTSIDE_FAILURE_PREFIXES[0]} {text}"
    return text


def _crashed(call: _Call | None, tool: str, exc: BaseException) -> str:
    """Log an unexpected failure in full (redacted) and record it; returns the generic message for the model."""
    detail = _redact(call, "".join(traceback.format_exception(exc)))
    logger.error(json.dumps({"event": "mcp_tool_crashed", "tool": tool, "detail": detail}))
    _finish(call, "error", f"unexpected {exc.__class__.__name__}")
    return _INTERNAL_ERROR


def _redact(call: _Call | None, text: str) -> str:
    return call.redact(text) if call is not None else redact(text)


def _finish(call: _Call | None, outcome: Outcome, message: str) -> str:
    """Record how the call ended; returns the redacted message for the model."""
    shown = _redact(call, message)
    if call is not None:
        call.outcome, call.message = outcome, shown
    return shown


# --------------------------------------------------------------------------------------------------------------
# The five read tools.


@_tool(title="Read a repository file", write=False)
async def read_repo_file(
    path: Annotated[
        str,
        Field(min_length=1, max_length=MAX_PATH_CHARS, description="Path relative to the repository root."),
    ],
    start_line: Annotated[int, Field(ge=1, le=10_000_000, description="1-based first line to return.")] = 1,
    max_lines: Annotated[int, Field(ge=1, le=MAX_READ_LINES, description="At most this many lines.")] = 400,
) -> FileSlice:
    """Read lines of one text file of the project's repository (on the current branch of the workspace).

    Returns at most `max_lines` lines from `start_line`; when `truncated` is true, call again with
    `next_start_line`. Secrets in the file are masked. Fails for binary files, directories and missing
    files. Only files inside the project's repository; never .git/.
    """
    s = _session()
    ws = await s.ready_workspace()
    # Security: redacted as a whole file before the window is cut (workspace.read_file); the window, whole
    # lines of the redacted text, is clean for this call's last gate.
    shown = _redactor(s)
    got = await ws.read_file(path, start_line=start_line, max_lines=max_lines, redact_text=shown)
    call = _CURRENT.get()
    if call is not None and shown == call.redact:
        call.clean.add(got.content)
    return FileSlice(
        path=got.path,
        start_line=got.start_line,
        end_line=got.end_line,
        total_lines=got.total_lines,
        content=got.content,
        truncated=got.truncated,
        next_start_line=got.next_start_line,
    )


@_tool(title="List repository files", write=False)
async def list_repo_files(
    under: Annotated[
        str, Field(max_length=MAX_PATH_CHARS, description="Directory to list, relative to the root; '' = all.")
    ] = "",
    glob: Annotated[
        str | None, Field(max_length=200, description="Only paths matching this glob, e.g. '**/*.py'.")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT, description="At most this many paths.")] = 200,
) -> FileListing:
    """List the files (not directories) of the project's repository, sorted, relative to its root.

    `under` narrows to one directory, `glob` filters the relative paths. `truncated` is true when more
    files matched than `limit`. Only files inside the project's repository; never .git/.
    """
    s = _session()
    ws = await s.ready_workspace()
    got = await ws.list_files(under=under, glob=glob, limit=limit, redact_text=_redactor(s))
    return FileListing(files=list(got.paths), truncated=got.truncated, total=got.total)


@_tool(title="Describe the project", write=False)
async def get_project_info() -> ProjectInfo:
    """Describe the project this session is bound to: repository, default branch, autonomy, watched jobs,
    the attempt and failing job (agent sessions), the fix branch name, the change limits and recent commits.

    Only the project this session is bound to; there is no way to name another.
    """
    s = _session()
    p = s.project
    ws = await s.ready_workspace()
    commits = await ws.recent_commits(5)
    return ProjectInfo(
        name=p.name,
        repo=p.repo,
        default_branch=p.default_branch,
        autonomy=p.autonomy.value,
        mode=s.mode.value,
        jobs=list(p.jobs),
        attempt_id=s.attempt_id,
        job=s.job,
        fix_branch=s.fix_branch,
        write_limits=WriteLimits(
            max_files_changed=p.budgets.max_files_changed,
            max_lines_changed=p.budgets.max_lines_changed,
            max_file_bytes=p.budgets.max_file_bytes,
        ),
        recent_commits=[CommitInfo(sha=c.sha, message=s.redact(_first_line(c.message))) for c in commits],
    )


def _holds_live_secret(content: str, secrets: tuple[str, ...]) -> bool:
    return any(form in content for secret in secrets for form in secret_variants(secret))


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


@_tool(title="List recent job runs", write=False)
async def list_job_runs(
    job: Annotated[
        str | None, Field(min_length=1, max_length=200, description="Only runs of this job; null = all jobs.")
    ] = None,
    limit: Annotated[int, Field(ge=1, le=MAX_RUNS_LIMIT, description="At most this many job runs.")] = 10,
) -> JobRuns:
    """List the most recent job runs on the project's default branch, newest first, with their status and
    conclusion ('failure', 'success', ...). Use a run's `run_id` with get_job_logs.

    Only the project's own runs: its workflow runs and the runs reported from outside Actions (cron, ...).
    """
    s = _session()
    p = s.project
    runs: list[JobRun] = []
    if s.reported is not None:
        for r in await s.reported.list_runs(p.name, job=job, limit=limit):
            if p.watches(r.job):
                runs.append(_reported_job_run(s, r))
    runs.extend(await _actions_job_runs(s, job, limit))
    runs.sort(key=lambda r: r.created_at or "", reverse=True)
    return JobRuns(runs=runs[:limit])


def _reported_job_run(s: SessionBinding, r: ReportedRunInfo) -> JobRun:
    return JobRun(
        run_id=r.run_id,
        job=s.redact(r.job),
        status=r.status,
        conclusion=r.conclusion,
        head_sha=r.head_sha,
        head_branch=None,
        created_at=r.created_at.isoformat() if r.created_at is not None else None,
        url=None,
        source="reported",
    )


async def _actions_job_runs(s: SessionBinding, job: str | None, limit: int) -> list[JobRun]:
    p = s.project
    page = await s.forge.list_workflow_runs(p.repo, branch=p.default_branch)
    runs: list[JobRun] = []
    for run in page.runs:
        if len(runs) >= limit:
            break
        for j in await s.forge.list_run_jobs(p.repo, run.id):
            if (job is not None and j.name != job) or not p.watches(j.name):
                continue
            runs.append(
                JobRun(
                    run_id=str(run.id),
                    job=s.redact(j.name),
                    status=j.status or "unknown",
                    conclusion=j.conclusion,
                    head_sha=run.head_sha,
                    head_branch=run.head_branch,
                    created_at=run.created_at.isoformat() if run.created_at is not None else None,
                    url=j.html_url,
                )
            )
            if len(runs) >= limit:
                break
    return runs


@_tool(title="Read a job's log excerpt", write=False)
async def get_job_logs(
    run_id: Annotated[
        Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]
        | Annotated[int, Field(ge=1)],
        Field(description="A run_id from list_job_runs (a string; a number is accepted too)."),
    ],
    job: Annotated[
        str | None,
        Field(min_length=1, max_length=200, description="Job name; null = this attempt's job or the failed one."),
    ] = None,
    budget_tokens: Annotated[
        int, Field(ge=MIN_BUDGET_TOKENS, le=MAX_BUDGET_TOKENS, description="Approximate size of the excerpt in tokens.")
    ] = 2000,
    start_line: Annotated[
        int | None,
        Field(ge=1, description="null: the failure excerpt; a line number: consecutive lines from there."),
    ] = None,
) -> JobLogs:
    """Read one job's log from one run. By default a failure-focused excerpt (the error lines with their
    context) within `budget_tokens`; with `start_line`, consecutive lines from that line, and
    `next_start_line` says where the next page starts. Secrets are masked.

    Only the project's own runs: its workflow runs and the runs reported from outside Actions (cron, ...).
    """
    s = _session()
    p = s.project
    rid = str(run_id)
    wanted = job or s.job
    reported = await s.reported.get_run(p.name, rid, job=wanted) if s.reported is not None else None
    if reported is not None and p.watches(reported.job):
        if reported.log_text is None:
            raise ToolRefused(f"Not found: run {rid!r} of job {reported.job!r} was reported without a log.")
        name, text = reported.job, reported.log_text
    elif rid.isdigit() and int(rid) >= 1:
        name, text = await _actions_log(s, int(rid), job)
    else:
        raise ToolRefused(f"Not found: no run {rid!r}" + (f" of job {wanted!r}." if wanted else "."))
    try:
        got = await off_loop(
            excerpt, text, budget_tokens=budget_tokens, start_line=start_line, extra_secrets=s.live_secrets()
        )
    except ValueError as exc:  # a start_line past the end of the log
        raise ToolRefused(str(exc)) from None
    return JobLogs(
        run_id=rid,
        job=s.redact(name),
        excerpt=await off_loop(_redactor(s), got.rendered),
        truncated=got.truncated,
        next_start_line=got.next_start_line,
    )


async def _actions_log(s: SessionBinding, run_id: int, job: str | None) -> tuple[str, str]:
    """(job name, whole log) of one job of an Actions run."""
    p = s.project
    jobs = await s.forge.list_run_jobs(p.repo, run_id)
    wanted = job or s.job
    chosen = next((j for j in jobs if j.name == wanted), None) if wanted else None
    if chosen is None and job is None:
        chosen = next((j for j in jobs if j.conclusion == "failure"), jobs[0] if jobs else None)
    if chosen is None:
        names = ", ".join(repr(j.name) for j in jobs) or "none"
        raise ToolRefused(f"Not found: run {run_id} has no job {wanted!r} (its jobs: {names}).")
    return chosen.name, await s.forge.download_job_logs(p.repo, chosen.id)


# --------------------------------------------------------------------------------------------------------------
# The five write tools (agent sessions only).


def _on_fix_branch(s: SessionBinding, ws: Workspace) -> str:
    _, _, branch = s.require_agent()
    current = ws.current_branch()
    if current != branch:
        raise ToolRefused(
            f"Refused: the workspace is on branch {current!r}, not this attempt's fix branch; call create_branch first."
        )
    return branch


@_tool(title="Create the fix branch", write=True)
async def create_branch() -> BranchCreated:
    """Create this attempt's fix branch from the default branch and check it out (or check it out again).

    The name is fixed by the attempt (see get_project_info.fix_branch); it cannot be chosen. Only the
    attempt's own fix branch; never the default branch.
    """
    s = _session()
    _, _, branch = s.require_agent()
    ws = await s.ready_workspace()
    head = await ws.create_branch(branch)
    return BranchCreated(branch=branch, head_sha=head)


@_tool(title="Write a repository file", write=True, destructive=True)
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
    s = _session()
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


@_tool(title="Commit and push the fix", write=True, idempotent=False)
async def commit_and_push(
    message: Annotated[str, Field(min_length=1, max_length=2000, description="The commit message.")],
) -> Pushed:
    """Commit every change written on the fix branch and push it to the forge. Refused on any other branch
    and when there is nothing to commit.

    Only the attempt's own fix branch; never the default branch.
    """
    s = _session()
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


@_tool(title="Open the pull request", write=True)
async def create_pull_request(
    title: Annotated[str, Field(min_length=1, max_length=200, description="The pull request title.")],
    body: Annotated[str, Field(max_length=20_000, description="What failed, why, and what the fix changes.")],
) -> PullRequestInfo:
    """Open a pull request from the fix branch into the default branch, after commit_and_push. Idempotent:
    when the fix branch already has a pull request, that one is returned (created = false).

    Only from the attempt's own fix branch into the project's default branch.
    """
    s = _session()
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


@_tool(title="Merge the pull request", write=True, destructive=True, idempotent=False)
async def merge_pull_request() -> PullRequestMerged:
    """Squash-merge the fix branch's pull request. Allowed only when the project's autonomy is auto_merge
    and the pull request's head is exactly the commit this session pushed; otherwise refused, and a human
    reviews and merges it.

    Only the attempt's own pull request.
    """
    s = _session()
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
    # Security: merge only what this session pushed; a head moved by anyone else needs a human.
    if pr.head.sha != pushed:
        raise ToolRefused(
            f"Merge refused: the pull request head moved: {pr.head.sha[:12]!r} is not the commit this "
            f"session pushed ({pushed[:12]!r}); a human must review it."
        )
    if pr.base.ref != p.default_branch:
        raise ToolRefused(f"Merge refused: the pull request targets {pr.base.ref!r}, not the default branch.")
    # Security: untested code never lands: the head's checks (the required ones, or all) must have passed.
    checks = await head_checks(s.forge, p.repo, pushed, pr.base.ref)
    if checks.state is not CheckState.PASSED:
        raise ToolRefused(
            f"Merge refused: {checks.reason()}. The pull request stays open; greenloop merges it once its "
            "checks pass. Stop here."
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


# --------------------------------------------------------------------------------------------------------------
# Sessions, audit and the server.


class _Sessions:
    """Resolves each request's grant and caches one binding per grant, until it has been idle for
    `idle_seconds` or the server shuts down."""

    def __init__(
        self,
        factory: BindingFactory,
        *,
        mode: Mode,
        grant: SessionGrant | None,
        parameters: Mapping[str, frozenset[str]],
        idle_seconds: float,
        deadline_seconds: float = DEFAULT_CALL_DEADLINE_SECONDS,
    ) -> None:
        self.parameters = parameters
        self.deadline_seconds = deadline_seconds
        self._factory = factory
        self._mode = mode
        self._grant = grant
        self._idle_seconds = idle_seconds
        self._bindings: dict[SessionGrant, SessionBinding] = {}
        self._used: dict[SessionGrant, float] = {}
        self._creating: dict[SessionGrant, anyio.Lock] = {}
        self._lock = anyio.Lock()

    def grant_for(self, ctx: ServerRequestContext[Any, Any]) -> SessionGrant | None:
        token = _access_token(ctx)
        grant = grant_from_access_token(token) if token is not None else self._grant
        if grant is None:
            return None
        # Security: a session never gets more than the server was started with.
        if grant.mode is Mode.AGENT and self._mode is not Mode.AGENT:
            grant = SessionGrant(project=grant.project, mode=Mode.READ_ONLY, client=grant.client)
        return grant

    async def binding(self, grant: SessionGrant) -> SessionBinding:
        async with self._lock:
            await self._evict_idle(keep=grant)
            creating = self._creating.setdefault(grant, anyio.Lock())
        async with creating:  # one grant's clone doesn't hold up the others
            found = self._bindings.get(grant)
            if found is None:
                found = await self._factory(grant)
                self._bindings[grant] = found
            self._used[grant] = time.monotonic()
            return found

    async def _evict_idle(self, *, keep: SessionGrant) -> None:
        now = time.monotonic()
        for grant, used in list(self._used.items()):
            binding = self._bindings.get(grant)
            creating = self._creating.get(grant)
            if grant == keep or binding is None or now - used < self._idle_seconds:
                continue
            if binding.lock.locked() or (creating is not None and creating.locked()):
                continue
            del self._bindings[grant], self._used[grant]
            self._creating.pop(grant, None)
            with anyio.CancelScope(shield=True):
                await binding.aclose()

    @asynccontextmanager
    async def lifespan(self, _server: MCPServer[Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {}
        finally:
            with anyio.CancelScope(shield=True):
                bindings, self._bindings, self._used = list(self._bindings.values()), {}, {}
                for b in bindings:
                    await b.aclose()


def _access_token(ctx: ServerRequestContext[Any, Any]) -> AccessToken | None:
    request = ctx.request
    scope = getattr(request, "scope", None)
    user = scope.get("user") if isinstance(scope, Mapping) else None
    if isinstance(user, AuthenticatedUser):
        return user.access_token
    return get_access_token()


def _as_dict(result: HandlerResult) -> dict[str, Any] | None:
    if isinstance(result, BaseModel):
        dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped
    return result


def _error_result(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True, "resultType": "complete"}


def _audit_arguments(s: SessionBinding, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if isinstance(value, str) and len(value) > _AUDIT_STRING_CHARS:
            value = f"{value[:200]}... ({len(value)} characters)"
        out[str(key)] = value
    redacted: dict[str, Any] = s.redact_obj(out)
    return redacted


def _unknown_arguments(declared: frozenset[str] | None, arguments: Any) -> list[str]:
    if declared is None or not isinstance(arguments, Mapping):
        return []
    return sorted(str(k)[:64] for k in arguments if k not in declared)[:5]


def _text_chars(value: Any, clean: set[str]) -> int:
    """How many characters of text not yet redacted a JSON-like result holds (what redacting it costs)."""
    if isinstance(value, str):
        return 0 if value in clean else len(value)
    if isinstance(value, Mapping):
        return sum(_text_chars(v, clean) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_chars(v, clean) for v in value)
    return 0


def _json_text(structured: Any) -> str:
    """The SDK's text block for a structured result: its JSON, indented by 2 (`func_metadata.convert_result`)."""
    return pydantic_core.to_json(structured, fallback=str, indent=2).decode()


def _to_mask(data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """What of a result the gate redacts, and whether its one text block is the JSON of `structuredContent`
    (then rebuilt from the redacted structure instead of being redacted a second time as text)."""
    structured = data.get("structuredContent")
    blocks = data.get("content")
    if isinstance(structured, dict) and isinstance(blocks, list) and len(blocks) == 1:
        block = blocks[0]
        if (
            isinstance(block, dict)
            and block.keys() == {"type", "text"}
            and block["type"] == "text"
            and block["text"] == _json_text(structured)
        ):
            return {k: v for k, v in data.items() if k != "content"}, True
    return data, False


def _gate(call: _Call, data: dict[str, Any]) -> dict[str, Any]:
    """The result with the session's secrets masked in every string (keys too), each string once."""
    payload, rebuild = _to_mask(data)
    gated: dict[str, Any] = redact_obj(payload, extra_secrets=call.binding.live_secrets(), clean=call.clean)
    if rebuild:
        gated["content"] = [{"type": "text", "text": _json_text(gated["structuredContent"])}]
    return gated


def _first_text(result: Mapping[str, Any]) -> str | None:
    for block in result.get("content") or ():
        if isinstance(block, Mapping) and isinstance(block.get("text"), str):
            return str(block["text"])
    return None


def _filter_tools(result: HandlerResult, allowed: tuple[str, ...]) -> HandlerResult:
    data = _as_dict(result)
    if data is None:
        return result
    data["tools"] = [t for t in data.get("tools", ()) if isinstance(t, Mapping) and t.get("name") in allowed]
    return data


class _SessionMiddleware:
    """Binds each tools/call to its session, audits it and redacts its result; trims tools/list."""

    def __init__(self, sessions: _Sessions) -> None:
        self._sessions = sessions

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/list":
            result = await call_next(ctx)
            grant = self._sessions.grant_for(ctx)
            # Security: a read-only grant on an agent server sees (and may call) only the read tools.
            if grant is not None and grant.mode is Mode.READ_ONLY:
                return _filter_tools(result, READ_TOOLS)
            return result
        if ctx.method != "tools/call":
            return await call_next(ctx)
        return await _audited_call(self._sessions, ctx, call_next)


async def _audited_call(sessions: _Sessions, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
    started = time.perf_counter()
    params = ctx.params or {}
    tool = str(params.get("name", ""))[:100]
    arguments = params.get("arguments")
    grant = sessions.grant_for(ctx)
    if grant is None:
        return _error_result("Access denied: this session is not bound to a project.")
    try:
        binding = await sessions.binding(grant)
    except (ToolRefused, PolicyViolation, McpServerError) as exc:
        logger.error(json.dumps({"event": "mcp_session_failed", "project": grant.project, "error": str(exc)}))
        return _error_result(f"Session unavailable: {exc}")
    except Exception as exc:  # top-level boundary: the session could not be built
        logger.error(json.dumps({"event": "mcp_session_failed", "project": grant.project, "error": type(exc).__name__}))
        return _error_result("Session unavailable: the server could not prepare this project; see the server log.")

    call = _Call(binding, deadline_seconds=sessions.deadline_seconds)
    data: dict[str, Any] | None = None
    token = _CURRENT.set(call)
    try:
        unknown = _unknown_arguments(sessions.parameters.get(tool), arguments)
        if unknown:
            # Security: no tool takes a repository (or anything it doesn't declare): refuse, don't ignore.
            call.outcome = "refused"
            call.message = f"Invalid arguments: {tool} takes no argument {', '.join(repr(u) for u in unknown)}."
            data = _error_result(call.message)
        else:
            async with binding.lock:
                data = _as_dict(await call_next(ctx))
        if data is not None:
            # Security: the last gate before the model: nothing leaves without the live secrets masked. A large
            # result is redacted in a worker thread, so it holds up no other session.
            if _text_chars(_to_mask(data)[0], call.clean) > _INLINE_REDACT_CHARS:
                data = await off_loop(_gate, call, data)
            else:
                data = _gate(call, data)
        if call.outcome is None:
            if data is not None and data.get("isError"):
                # The SDK refused the call before the tool ran: unknown tool or arguments outside the schema.
                call.outcome, call.message = "refused", _first_text(data)
            else:
                call.outcome = "ok"
        return data
    except BaseException as exc:
        call.outcome = call.outcome or "error"
        call.message = call.message or f"protocol error: {exc.__class__.__name__}"
        raise
    finally:
        _CURRENT.reset(token)
        event = AuditEvent(
            project=binding.project.name,
            client=call.redact(_client_name(grant, ctx)),
            tool=call.redact(tool),
            arguments=_audit_arguments(binding, arguments),
            outcome=call.outcome or "error",
            message=call.redact(call.message)[:2000] if call.message else None,
            result_bytes=len(json.dumps(data, separators=(",", ":"))) if data is not None else 0,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            attempt_id=binding.attempt_id,
        )
        with anyio.CancelScope(shield=True):
            await binding.audit.record(event)


def _client_name(grant: SessionGrant, ctx: ServerRequestContext[Any, Any]) -> str:
    info: Any = None
    meta = (ctx.params or {}).get("_meta")
    if isinstance(meta, Mapping):
        info = meta.get("io.modelcontextprotocol/clientInfo")
    if not isinstance(info, Mapping):
        params = getattr(ctx.session, "client_params", None)
        client_info = getattr(params, "client_info", None)
        info = {"name": getattr(client_info, "name", None)}
    name = info.get("name") if isinstance(info, Mapping) else None
    return f"{grant.client}/{str(name)[:64]}" if name else grant.client


def _package_version() -> str:
    """greenloop's installed version, announced as `serverInfo.version` at initialize."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("greenloop")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout that was never installed
        return "0+unknown"


def build_server(
    binding_factory: BindingFactory,
    *,
    mode: Mode,
    grant: SessionGrant | None = None,
    token_verifier: TokenVerifier | None = None,
    auth: AuthSettings | None = None,
    name: str = "greenloop",
    idle_seconds: float = 3600.0,
    call_deadline_seconds: float = DEFAULT_CALL_DEADLINE_SECONDS,
) -> MCPServer[Any]:
    """The greenloop MCP server: the five read tools (`read-only`) or all ten (`agent`).

    Each request's session grant comes from its bearer token (HTTP, with `token_verifier` and `auth`) or
    else from `grant` (stdio and in-memory). A grant asking for more than `mode` is cut down to read-only.
    `binding_factory` turns a grant into the binding the tools act on; bindings are cached per grant and
    closed after `idle_seconds` without a call, or when the server's lifespan ends. A tool call still running
    after `call_deadline_seconds` is stopped and refused as too long (`mcp_server.deadline`).
    """
    specs = [spec for spec in _TOOLS if mode is Mode.AGENT or not spec.write]
    parameters = {spec.fn.__name__: spec.parameters for spec in specs}
    sessions = _Sessions(
        binding_factory,
        mode=Mode(mode),
        grant=grant,
        parameters=parameters,
        idle_seconds=idle_seconds,
        deadline_seconds=call_deadline_seconds,
    )
    server: MCPServer[Any] = MCPServer(
        name,
        instructions=(
            "greenloop: tools over one bound project. Read with read_repo_file, list_repo_files, "
            "get_project_info, list_job_runs and get_job_logs. Agent sessions fix a failing job with "
            "create_branch, write_repo_file, commit_and_push and create_pull_request."
        ),
        token_verifier=token_verifier,
        auth=auth,
        version=_package_version(),
        lifespan=sessions.lifespan,
        log_level="WARNING",
        warn_on_duplicate_tools=True,
    )
    for spec in specs:  # Security: a read-only server does not even list the write tools.
        server.add_tool(
            spec.fn,
            description=inspect.cleandoc(spec.fn.__doc__ or ""),
            annotations=spec.annotations,
            structured_output=True,
        )
    server.middleware.append(_SessionMiddleware(sessions))
    return server
