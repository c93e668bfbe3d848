"""The five read tools: files, the project, its job runs and their logs (every session gets them).

Each acts for the session the middleware bound (`mcp_server.middleware.bound_session`) and shows only redacted
text (`redactor`): a file is redacted whole before its window is cut, a log before its excerpt or page is.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from mcp_server.culprit import culprit_or_none
from mcp_server.deadline import off_loop
from mcp_server.errors import ToolRefused
from mcp_server.log_excerpt import MIN_BUDGET_TOKENS, excerpt
from mcp_server.middleware import ToolSpec, bound_session, mark_redacted, redactor, tool
from mcp_server.models import (
    MAX_BUDGET_TOKENS,
    MAX_LIST_LIMIT,
    MAX_PATH_CHARS,
    MAX_READ_LINES,
    MAX_RUNS_LIMIT,
    CommitInfo,
    FileListing,
    FileSlice,
    JobLogs,
    JobRun,
    JobRuns,
    ProjectInfo,
    ReadRef,
    WriteLimits,
)
from mcp_server.reported_runs import ReportedRunInfo
from mcp_server.session import SessionBinding

__all__ = ["READ_TOOL_SPECS"]

# The run ids POST /runs accepts; Actions run ids are numbers.
_RunIdText = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]


@tool(title="Read a repository file", write=False)
async def read_repo_file(
    path: Annotated[
        str,
        Field(min_length=1, max_length=MAX_PATH_CHARS, description="Path relative to the repository root."),
    ],
    start_line: Annotated[int, Field(ge=1, le=10_000_000, description="1-based first line to return.")] = 1,
    max_lines: Annotated[int, Field(ge=1, le=MAX_READ_LINES, description="At most this many lines.")] = 400,
    ref: ReadRef = None,
) -> FileSlice:
    """Read lines of one text file of the project's repository (on the current branch of the workspace).

    Returns at most `max_lines` lines from `start_line`; when `truncated` is true, call again with
    `next_start_line`. Secrets in the file are masked. Fails for binary files, directories and missing
    files. Only files inside the project's repository; never .git/.
    """
    s = bound_session()
    ws = await s.ready_workspace()
    # Security: redacted as a whole file before the window is cut (workspace.read_file); the window, whole
    # lines of the redacted text, is clean for this call's last gate.
    shown = redactor(s)
    got = await ws.read_file(path, start_line=start_line, max_lines=max_lines, redact_text=shown, ref=ref)
    mark_redacted(shown, got.content)
    return FileSlice(
        path=got.path,
        start_line=got.start_line,
        end_line=got.end_line,
        total_lines=got.total_lines,
        content=got.content,
        truncated=got.truncated,
        next_start_line=got.next_start_line,
    )


@tool(title="List repository files", write=False)
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
    s = bound_session()
    ws = await s.ready_workspace()
    got = await ws.list_files(under=under, glob=glob, limit=limit, redact_text=redactor(s))
    return FileListing(files=list(got.paths), truncated=got.truncated, total=got.total)


@tool(title="Describe the project", write=False)
async def get_project_info() -> ProjectInfo:
    """Describe the project this session is bound to: repository, default branch, autonomy, watched jobs,
    the attempt and failing job (agent sessions), the fix branch name, the change limits and recent commits;
    for agent sessions, the culprit range: the commits between the job's last green and first red run.

    Only the project this session is bound to; there is no way to name another.
    """
    s = bound_session()
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
        culprit_range=await culprit_or_none(
            s.forge, p.repo, p.default_branch, s.job, redact_text=redactor(s), reported=s.reported, project=p.name
        ),
    )


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


@tool(title="List recent job runs", write=False)
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
    s = bound_session()
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


@tool(title="Read a job's log excerpt", write=False)
async def get_job_logs(
    run_id: Annotated[
        _RunIdText | Annotated[int, Field(ge=1)],
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
    s = bound_session()
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
        excerpt=await off_loop(redactor(s), got.rendered),
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


READ_TOOL_SPECS: tuple[ToolSpec, ...] = (
    read_repo_file,
    list_repo_files,
    get_project_info,
    list_job_runs,
    get_job_logs,
)
"""The read tools, in the order `tools/list` shows them."""
