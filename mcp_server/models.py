"""The pydantic models the ten MCP tools return (their MCP output schemas) and the bounds of their inputs.

Every text field a model carries that came from the repository, the forge or a log has been redacted
before the model is built.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_BUDGET_TOKENS",
    "MAX_CONTENT_CHARS",
    "MAX_LIST_LIMIT",
    "MAX_PATH_CHARS",
    "MAX_READ_LINES",
    "MAX_RUNS_LIMIT",
    "READ_TOOLS",
    "TOOL_NAMES",
    "WRITE_TOOLS",
    "BranchCreated",
    "ChangedFile",
    "CommitInfo",
    "CulpritRange",
    "FileListing",
    "FileSlice",
    "FileWritten",
    "JobLogs",
    "JobRun",
    "JobRuns",
    "ProjectInfo",
    "PullRequestInfo",
    "PullRequestMerged",
    "Pushed",
    "ReadRef",
    "ToolName",
    "WriteLimits",
]


class ToolName(StrEnum):
    """The ten tools, by the names the server registers and clients (the agent) call."""

    READ_REPO_FILE = "read_repo_file"
    LIST_REPO_FILES = "list_repo_files"
    GET_PROJECT_INFO = "get_project_info"
    LIST_JOB_RUNS = "list_job_runs"
    GET_JOB_LOGS = "get_job_logs"
    CREATE_BRANCH = "create_branch"
    WRITE_REPO_FILE = "write_repo_file"
    COMMIT_AND_PUSH = "commit_and_push"
    CREATE_PULL_REQUEST = "create_pull_request"
    MERGE_PULL_REQUEST = "merge_pull_request"


READ_TOOLS: tuple[str, ...] = tuple(t.value for t in list(ToolName)[:5])
"""The tools a read-only session gets."""
WRITE_TOOLS: tuple[str, ...] = tuple(t.value for t in list(ToolName)[5:])
"""The tools only an agent session gets."""
TOOL_NAMES: tuple[str, ...] = READ_TOOLS + WRITE_TOOLS

# Input bounds, shared by the tool signatures and their tests.
MAX_PATH_CHARS = 1024
MAX_READ_LINES = 2000
MAX_LIST_LIMIT = 1000
MAX_RUNS_LIMIT = 50
MAX_BUDGET_TOKENS = 20_000
MAX_CONTENT_CHARS = 1_000_000

ReadRef = Annotated[
    str | None,
    Field(
        min_length=1,
        max_length=100,
        description=(
            "Read the file as it was at this commit SHA (7-40 hex digits) of the default branch's history, e.g. "
            "the last green run's commit; null = the workspace's current branch. Names are refused."
        ),
    ),
]
"""`read_repo_file`'s optional `ref`; the workspace (`Workspace.read_file`) enforces what it may name."""


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class FileSlice(_Out):
    """A window of lines of one repository file."""

    path: str = Field(description="The file's path relative to the repository root.")
    start_line: int = Field(description="1-based number of the first line returned.")
    end_line: int = Field(description="Number of the last line returned (start_line - 1 when none).")
    total_lines: int = Field(description="Number of lines in the whole file.")
    content: str = Field(description="The lines, redacted.")
    truncated: bool = Field(description="True when the file has lines after end_line.")
    next_start_line: int | None = Field(description="Pass as start_line to read on; null at the end.")


class FileListing(_Out):
    """Files of the repository, relative to its root."""

    files: list[str]
    truncated: bool = Field(description="True when more files matched than `limit`.")
    total: int = Field(description="How many files matched.")


class CommitInfo(_Out):
    """One commit of the default branch."""

    sha: str
    message: str = Field(description="First line of the commit message, redacted.")


class WriteLimits(_Out):
    """The change budget of one attempt."""

    max_files_changed: int
    max_lines_changed: int
    max_file_bytes: int


class ChangedFile(_Out):
    """One file changed in a range of commits."""

    filename: str
    status: str = Field(description="added, removed, modified, renamed, ...")
    additions: int
    deletions: int


class CulpritRange(_Out):
    """What changed between the failing job's last green run and its first red run on the default branch."""

    job: str
    last_green_run_id: str | None = Field(description="null: no green run of the job among the recent runs.")
    last_green_sha: str | None
    first_red_run_id: str
    first_red_sha: str
    commits: list[CommitInfo] = Field(
        description="The commits after the last green one, up to the first red, oldest first."
    )
    total_commits: int
    files: list[ChangedFile] = Field(description="Files those commits changed (bounded list).")
    total_files: int
    diff_summary: str = Field(
        description="The start of each file's diff, redacted and bounded; read more with read_repo_file and ref."
    )
    note: str | None = None


class ProjectInfo(_Out):
    """The project this session is bound to."""

    name: str
    repo: str
    default_branch: str
    autonomy: Literal["observe", "propose", "auto_merge"]
    mode: Literal["read-only", "agent"]
    jobs: list[str] = Field(description="Jobs that matter; empty means every job.")
    attempt_id: str | None
    job: str | None = Field(description="The failing job this attempt is about (agent sessions).")
    fix_branch: str | None = Field(description="The branch create_branch creates (agent sessions).")
    write_limits: WriteLimits
    recent_commits: list[CommitInfo]
    culprit_range: CulpritRange | None = Field(
        default=None,
        description="Agent sessions: the commits between the failing job's last green and first red run.",
    )


class JobRun(_Out):
    """One run of one job on the default branch: an Actions workflow job, or a run reported from outside."""

    run_id: str
    job: str
    status: str
    conclusion: str | None
    head_sha: str
    head_branch: str | None
    created_at: str | None
    url: str | None
    source: Literal["actions", "reported"] = "actions"


class JobRuns(_Out):
    """Recent job runs, newest first."""

    runs: list[JobRun]


class JobLogs(_Out):
    """A failure-focused excerpt of one run's job log."""

    run_id: str
    job: str
    excerpt: str = Field(description="The excerpt, redacted; line numbers refer to the full log.")
    truncated: bool = Field(description="True when the budget cut the excerpt short.")
    next_start_line: int | None = Field(description="Pass as start_line to read further; null at the end.")


class BranchCreated(_Out):
    """The fix branch, checked out in the workspace."""

    branch: str
    head_sha: str = Field(description="The branch's head commit.")


class FileWritten(_Out):
    """A file written in the workspace (not yet committed)."""

    path: str
    bytes_written: int
    created: bool = Field(description="True when the file did not exist before.")
    files_changed: int = Field(description="Files the fix changes against the default branch, this one included.")
    lines_changed: int = Field(description="Lines the fix adds plus deletes against the default branch.")


class Pushed(_Out):
    """A commit pushed to the fix branch."""

    sha: str
    branch: str


class PullRequestInfo(_Out):
    """The pull request of the fix branch."""

    number: int
    url: str
    state: str
    head_branch: str
    head_sha: str
    base_branch: str
    title: str
    created: bool = Field(description="False when the pull request already existed.")


class PullRequestMerged(_Out):
    """A merged pull request."""

    number: int
    merged: bool
    sha: str | None = Field(description="The merge commit on the default branch.")
