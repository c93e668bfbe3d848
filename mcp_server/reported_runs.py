"""Runs of jobs that are not GitHub Actions (cron, Kubernetes CronJob, Airflow), as the read tools see them.

Such runs are reported to the reconciler (`POST /runs`, `greenloop report`) with their log, and kept in its
store. The MCP server may not import the reconciler, so it reads them through `ReportedRunSource`, injected
into each session (`SessionBinding.reported`): in-process by `reconciler.runtime`; in the sidecar
(`greenloop-mcp serve-http --runs-db URL`, default the `--audit-db` URL) by the `greenloop-mcp` entry point,
which opens the store's reader on that database (a `ClosableReportedRunSource`). `list_job_runs` lists them
beside the Actions runs and `get_job_logs` serves their stored log exactly like an Actions log (excerpt,
pages). Run ids are strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = ["ClosableReportedRunSource", "ReportedRunInfo", "ReportedRunSource"]


@dataclass(frozen=True)
class ReportedRunInfo:
    """One reported run of one job (`log_text` is None when no log was posted, or when it was not asked for)."""

    run_id: str
    job: str
    status: str
    conclusion: str | None
    head_sha: str
    created_at: datetime | None
    log_url: str | None = None
    log_text: str | None = None


class ReportedRunSource(Protocol):
    """Where a project's reported runs and their logs are read (the reconciler implements it from its store)."""

    async def list_runs(self, project: str, *, job: str | None, limit: int) -> Sequence[ReportedRunInfo]:
        """The project's reported runs (of `job` when given), newest first, without their logs."""

    async def get_run(self, project: str, run_id: str, *, job: str | None) -> ReportedRunInfo | None:
        """The newest attempt of run `run_id` (of `job` when given), with its stored log; None if unknown."""


class ClosableReportedRunSource(ReportedRunSource, Protocol):
    """A `ReportedRunSource` that owns a resource (the sidecar's database connection) to release at the end."""

    async def aclose(self) -> None:
        """Release what the source holds."""
