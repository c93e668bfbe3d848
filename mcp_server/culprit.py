"""The culprit range of a red job: the commits between its last green run and its first red run.

The cause of a failure is usually in what changed since the job was last green. `culprit_range` walks the
job's recent completed runs on the default branch (newest first, at most `RUNS_EXAMINED` that ran the job):
the red ones back to the first red run, then the last green run before it. The runs are the job's GitHub
Actions runs, or, for a job reported from outside Actions (`POST /runs`, `greenloop report`: a cron job), its
reported runs (a `ReportedRunSource`; the newest attempt of each run id). Either way the forge's compare
(`ForgeClient.compare`, `GET /repos/{o}/{r}/compare/{green}...{red}`) gives the commits between them and
the files they changed, and a diff summary is cut from the patches: each file's diff redacted as a whole
first, then its head kept, within `DIFF_CHARS` characters (about `DIFF_CHARS / 4` tokens) in all. The model
reads any file as it was at the last green commit with `read_repo_file(path, ref=...)`.

The get_project_info tool returns it (its session's `SessionBinding.reported` for reported jobs); the dispatcher
puts it in the agent's first message (reading reported runs through the store's `StoreReportedRuns`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

from infra.jsonlog import log_event
from mcp_server.errors import ForgeError
from mcp_server.forge import ForgeClient
from mcp_server.models import ChangedFile, CommitInfo, CulpritRange
from mcp_server.reported_runs import ReportedRunSource

__all__ = [
    "DIFF_CHARS",
    "MAX_COMMITS",
    "MAX_FILES",
    "RUNS_EXAMINED",
    "culprit_or_none",
    "culprit_range",
    "diff_summary",
]

logger = logging.getLogger("greenloop.mcp.culprit")

RUNS_EXAMINED = 20  # runs of the job looked at (each costs one job listing)
MAX_COMMITS = 20
MAX_FILES = 40
DIFF_CHARS = 6_000  # ~1,500 tokens of diff in all
FILE_DIFF_CHARS = 1_500  # the head of one file's diff
_RED = frozenset({"failure", "timed_out", "startup_failure"})


@dataclass(frozen=True)
class _Point:
    run_id: str
    sha: str


@dataclass(frozen=True)
class _Completed:
    """One completed run of the job: where it ran and how the job concluded in it."""

    point: _Point
    conclusions: frozenset[str | None]


async def _actions_runs(forge: ForgeClient, repo: str, branch: str, job: str) -> AsyncGenerator[_Completed, None]:
    """The job's completed Actions runs on `branch`, newest first (each costs one job listing)."""
    page = await forge.list_workflow_runs(repo, branch=branch)
    for run in page.runs:  # newest first
        if run.status != "completed":
            continue
        jobs = [j for j in await forge.list_run_jobs(repo, run.id) if j.name == job and j.status == "completed"]
        if jobs:
            yield _Completed(_Point(str(run.id), run.head_sha), frozenset(j.conclusion for j in jobs))


async def _reported_runs(reported: ReportedRunSource, project: str, job: str) -> list[_Completed] | None:
    """The job's completed reported runs, newest first (the newest attempt of each run id); None: the job has no
    reported run (it is not a reported job)."""
    runs = await reported.list_runs(project, job=job, limit=RUNS_EXAMINED * 3)
    if not runs:
        return None
    seen: set[str] = set()
    completed: list[_Completed] = []
    for run in runs:  # newest first, the newest attempt of a run id before its older ones
        if run.run_id in seen:
            continue
        seen.add(run.run_id)
        if run.status == "completed":
            completed.append(_Completed(_Point(run.run_id, run.head_sha), frozenset({run.conclusion})))
    return completed


async def _listed(runs: list[_Completed]) -> AsyncGenerator[_Completed, None]:
    for run in runs:
        yield run


async def _bounds(runs: AsyncGenerator[_Completed, None]) -> tuple[_Point | None, _Point | None]:
    """(last green, first red) among the newest `RUNS_EXAMINED` completed runs; first red None: not red."""
    first_red: _Point | None = None
    examined = 0
    async with aclosing(runs):
        async for run in runs:  # newest first
            if run.conclusions & _RED:
                first_red = run.point
            elif "success" in run.conclusions and first_red is not None:
                return run.point, first_red
            elif "success" in run.conclusions:
                return None, None  # green now: nothing to explain
            examined += 1
            if examined >= RUNS_EXAMINED:
                break
    return None, first_red


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def diff_summary(patches: list[tuple[str, str | None]], redact_text: Callable[[str], str], *, limit: int) -> str:
    """The head of each file's diff (redacted whole, then cut) within `limit` characters in all."""
    parts: list[str] = []
    used = 0
    left_out = 0
    for filename, patch in patches:
        if patch is None:
            continue
        shown = redact_text(patch)
        if len(shown) > FILE_DIFF_CHARS:
            cut = shown[:FILE_DIFF_CHARS]
            shown = cut[: cut.rfind("\n") + 1 or FILE_DIFF_CHARS] + "… (cut; read the file for more)\n"
        block = f"--- {filename}\n{shown.rstrip()}\n"
        if used + len(block) > limit:
            left_out += 1
            continue
        parts.append(block)
        used += len(block)
    if left_out:
        parts.append(f"({left_out} more file diff(s) not shown: read them with read_repo_file and ref)\n")
    return "".join(parts)


async def culprit_range(
    forge: ForgeClient,
    repo: str,
    branch: str,
    job: str,
    *,
    redact_text: Callable[[str], str],
    diff_chars: int = DIFF_CHARS,
    reported: ReportedRunSource | None = None,
    project: str | None = None,
) -> CulpritRange | None:
    """The culprit range of `job` on `branch`, redacted and bounded; None when the job is not red.

    With `reported` and `project`, a job that has reported runs is walked over those (its runs outside
    Actions); any other job over its Actions runs.

    Raises:
        ForgeError: the forge failed.
    """
    listed = await _reported_runs(reported, project, job) if reported is not None and project else None
    runs = _listed(listed) if listed is not None else _actions_runs(forge, repo, branch, job)
    green, red = await _bounds(runs)
    if red is None:
        return None
    base = CulpritRange(
        job=redact_text(job),
        last_green_run_id=green.run_id if green else None,
        last_green_sha=green.sha if green else None,
        first_red_run_id=red.run_id,
        first_red_sha=red.sha,
        commits=[],
        total_commits=0,
        files=[],
        total_files=0,
        diff_summary="",
    )
    if green is None:
        note = f"no green run of {job!r} among its last {RUNS_EXAMINED} runs: the range is unknown"
        return base.model_copy(update={"note": redact_text(note)})
    if green.sha == red.sha:
        note = (
            "the last green and the first red run ran on the same commit: no code change explains it "
            "(flaky test, environment, data or schedule)"
        )
        return base.model_copy(update={"note": note})
    compared = await forge.compare(repo, green.sha, red.sha)
    commits = [CommitInfo(sha=c.sha, message=redact_text(_first_line(c.commit.message))) for c in compared.commits]
    files = [
        ChangedFile(filename=redact_text(f.filename), status=f.status, additions=f.additions, deletions=f.deletions)
        for f in compared.files
    ]
    patches = [(redact_text(f.filename), f.patch) for f in compared.files]
    return base.model_copy(
        update={
            "commits": commits[-MAX_COMMITS:],  # the newest, closest to the first red run
            "total_commits": compared.total_commits,
            "files": files[:MAX_FILES],
            "total_files": len(files),
            "diff_summary": diff_summary(patches, redact_text, limit=diff_chars),
        }
    )


async def culprit_or_none(
    forge: ForgeClient | None,
    repo: str,
    branch: str,
    job: str | None,
    *,
    redact_text: Callable[[str], str],
    reported: ReportedRunSource | None = None,
    project: str | None = None,
) -> CulpritRange | None:
    """`culprit_range`, or None without a forge or a job, or when the forge failed (logged): a missing range
    costs the model a few reads, never the attempt."""
    if forge is None or job is None:
        return None
    try:
        return await culprit_range(
            forge, repo, branch, job, redact_text=redact_text, reported=reported, project=project
        )
    except ForgeError as exc:
        log_event(logger, "culprit_range_failed", level=logging.WARNING, error=str(exc))
        return None
