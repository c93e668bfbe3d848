"""Observation: the latest run of each job on a project's default branch, from Actions or reported runs.

Both sources produce the same `ObservedRun`, so the pass treats them alike. Actions observation costs one
conditional request per project when nothing changed: the runs listing is fetched with its ETag, and a
304 reuses the previous observation. Only the job lists that can change the answer are
fetched (see `_runs_to_read`), and those of completed runs only once: they never change.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from mcp_server.forge import ForgeClient, Job, WorkflowRun
from policy.config import ProjectConfig
from reconciler.context import JobFacts, JobKey
from reconciler.store.engine import SessionFactory
from reconciler.store.runs import latest_reported_runs

__all__ = ["GREEN", "ObservedRun", "ProjectObservation", "observe_actions", "observe_reported"]

GREEN = frozenset({"success", "skipped", "neutral"})


@dataclass(frozen=True, slots=True)
class ObservedRun:
    """One job's run, whatever its source."""

    project: str
    job: str
    source: str  # "actions" | "reported"
    run_id: str
    run_attempt: int
    status: str  # queued | in_progress | completed
    conclusion: str | None
    head_sha: str
    event: str | None
    triggered_by: str | None
    commit_message: str | None
    created_at: datetime
    job_id: int | None = None  # Actions job id, for logs
    log_text: str | None = None  # reported runs may carry their log

    @property
    def order(self) -> tuple[datetime, int, int]:
        """Newest-last sort key: creation time, then run id (ids grow), then attempt."""
        return (self.created_at, int(self.run_id) if self.run_id.isdigit() else 0, self.run_attempt)

    @property
    def completed(self) -> bool:
        """Whether the run has finished."""
        return self.status == "completed"

    @property
    def green(self) -> bool:
        """Whether the run finished green."""
        return self.completed and (self.conclusion or "") in GREEN


@dataclass
class ProjectObservation:
    """Per job: the newest completed run, whether a newer run is still going, and green runs by SHA."""

    latest: dict[str, ObservedRun] = field(default_factory=dict)
    in_progress: set[str] = field(default_factory=set)
    green_shas: dict[str, set[str]] = field(default_factory=dict)
    runs: list[ObservedRun] = field(default_factory=list)
    _red: list[ObservedRun] | None = field(default=None, repr=False, compare=False)

    def add(self, run: ObservedRun) -> None:
        """Fold one run into the observation (runs may arrive in any order)."""
        self._red = None
        self.runs.append(run)
        if not run.completed:
            current = self.latest.get(run.job)
            if current is None or run.order >= current.order:
                self.in_progress.add(run.job)
            return
        if run.green:
            self.green_shas.setdefault(run.job, set()).add(run.head_sha)
        current = self.latest.get(run.job)
        if current is None or run.order >= current.order:
            self.latest[run.job] = run

    def red(self) -> list[ObservedRun]:
        """The latest completed run of each job that is red with no newer run going, by job name.

        Remembered until the next `add`: an unchanged project's observation is reused pass after pass."""
        if self._red is None:
            self._red = [
                run for job, run in sorted(self.latest.items()) if not run.green and job not in self.in_progress
            ]
        return list(self._red)

    def finish(self) -> None:
        """Drop in-progress marks older than the latest completed run of their job."""
        self._red = None
        for job in list(self.in_progress):
            latest = self.latest.get(job)
            newer = [r for r in self.runs if r.job == job and not r.completed]
            if latest is not None and all(r.order < latest.order for r in newer):
                self.in_progress.discard(job)

    def passed_before(self, run: ObservedRun) -> bool:
        """Whether `run.job` was green before on the same commit (a sign of flakiness)."""
        return run.head_sha in self.green_shas.get(run.job, set())


async def observe_actions(
    forge: ForgeClient,
    project: ProjectConfig,
    *,
    previous: ProjectObservation | None,
    job_cache: dict[JobKey, JobFacts],
) -> tuple[ProjectObservation, bool]:
    """Observe the project's workflow runs on its default branch; returns (observation, changed).

    Raises:
        ForgeError: the forge could not be read (the pass records it as this project's error).
    """
    page = await forge.list_workflow_runs(project.repo, branch=project.default_branch, per_page=30, max_pages=1)
    if page.not_modified and previous is not None:
        return previous, False
    obs = ProjectObservation()
    for run in _runs_to_read(page.runs):
        for job in await _jobs_of(forge, project, run, job_cache):
            if not project.watches(job.name):
                continue
            obs.add(_from_actions(project, run, job))
    obs.finish()
    return obs, True


def _run_order(run: WorkflowRun) -> tuple[datetime, int, int]:
    """Newest-last sort key of a run, as `ObservedRun.order`."""
    return (run.created_at or datetime.min.replace(tzinfo=UTC), run.id, run.run_attempt)


def _runs_to_read(runs: Sequence[WorkflowRun]) -> list[WorkflowRun]:
    """The runs whose job lists can change the observation, in page order.

    Per workflow: its newest completed run (the latest of its jobs), the older completed runs on that run's
    commit (`passed_before`, i.e. flaky detection, looks only at the latest run's SHA), and runs not yet
    completed that are newer (they mark their jobs in progress). Older runs of a workflow are superseded, so
    their job lists are not fetched: a page of 30 runs costs a handful of job-list requests, not 30. A run
    whose workflow is unknown is always read.
    """
    groups: dict[int | str, list[WorkflowRun]] = {}
    for run in runs:
        key = run.workflow_id if run.workflow_id is not None else run.path
        if key is not None:
            groups.setdefault(key, []).append(run)
    newest: dict[int | str, WorkflowRun] = {}
    for key, group in groups.items():
        done = [r for r in group if r.status == "completed"]
        if done:
            newest[key] = max(done, key=_run_order)
    out: list[WorkflowRun] = []
    for run in runs:
        key = run.workflow_id if run.workflow_id is not None else run.path
        top = newest.get(key) if key is not None else None
        if (
            top is None
            or run is top
            or (run.status == "completed" and run.head_sha == top.head_sha)
            or (run.status != "completed" and _run_order(run) >= _run_order(top))
        ):
            out.append(run)
    return out


async def _jobs_of(
    forge: ForgeClient, project: ProjectConfig, run: WorkflowRun, cache: dict[JobKey, JobFacts]
) -> Sequence[Job]:
    key = (project.repo, run.id, run.run_attempt)
    cached = cache.get(key)
    if cached is not None:
        return tuple(Job.model_construct(id=i, run_id=run.id, name=n, status=s, conclusion=c) for i, n, s, c in cached)
    jobs = tuple(await forge.list_run_jobs(project.repo, run.id))
    if run.status == "completed":
        # A completed run's jobs never change; only the few fields a pass reads are kept (a Job with its
        # steps is ~4 KiB, and a project's page of 30 runs has 100+ jobs).
        cache[key] = tuple((j.id, j.name, j.status, j.conclusion) for j in jobs)
    return jobs


def _producer(run: WorkflowRun) -> str | None:
    """Who produced the failing state: for a re-run, the original actor, not whoever asked for the re-run.

    Security: the circuit breaker keys on this. A re-run the bot requested of a human's commit is not the
    agent's own change; a first run the bot triggered (its push or merge) is.
    """
    if run.run_attempt > 1 and run.actor is not None:
        return run.actor.login
    return run.triggering_login


def _from_actions(project: ProjectConfig, run: WorkflowRun, job: Job) -> ObservedRun:
    return ObservedRun(
        project=project.name,
        job=job.name,
        source="actions",
        run_id=str(run.id),
        run_attempt=run.run_attempt,
        status=job.status or run.status or "queued",
        conclusion=job.conclusion if job.status == "completed" else None,
        head_sha=run.head_sha,
        event=run.event,
        triggered_by=_producer(run),
        commit_message=run.head_commit_message,
        created_at=run.created_at or datetime.now(UTC),
        job_id=job.id,
    )


async def observe_reported(
    sessions: SessionFactory, projects: Iterable[ProjectConfig]
) -> dict[str, ProjectObservation]:
    """Latest reported runs per job for all `projects`, in one query (runs sent to `POST /runs`).

    Raises:
        StoreError: the database failed.
    """
    by_name = {p.name: p for p in projects}
    if not by_name:
        return {}
    rows = await latest_reported_runs(sessions, list(by_name))
    out: dict[str, ProjectObservation] = {}
    for row in rows:
        project = by_name[row.project]
        if not project.watches(row.job):
            continue
        out.setdefault(row.project, ProjectObservation()).add(
            ObservedRun(
                project=row.project,
                job=row.job,
                source="reported",
                run_id=row.run_id,
                run_attempt=row.run_attempt,
                status=row.status,
                conclusion=row.conclusion,
                head_sha=row.head_sha,
                event=row.event,
                triggered_by=row.triggered_by,
                commit_message=row.commit_message,
                created_at=row.created_at,
                log_text=row.log_text,
            )
        )
    for obs in out.values():
        obs.finish()
    return out
