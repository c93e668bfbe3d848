"""Everything a reconcile pass needs, built once by whoever runs the loop (CLI, scheduler, API, demo).

`ReconcilerContext` is immutable: its dependencies are fixed when it is built. What the reconciler learns
between passes lives in `PassCaches`, one typed object with one field per cache (no `object` values to
narrow again with `isinstance`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from policy.config import GreenloopConfig
from reconciler.pacing import ResyncPacer
from reconciler.store.engine import SessionFactory
from reconciler.store.projects import sync_projects

if TYPE_CHECKING:
    from mcp_server.forge import ForgeClient
    from mcp_server.operator import Operator
    from reconciler.metrics import Metrics
    from reconciler.observe import ProjectObservation
    from reconciler.store.models import Attempt

__all__ = ["AttemptDispatcher", "JobFacts", "JobKey", "PassCaches", "ReconcilerContext"]

JobKey = tuple[str, int, int]
JobFacts = tuple[tuple[int, str, str | None, str | None], ...]
"""(id, name, status, conclusion) of each job of a completed run: all a pass reads of a job."""
"""A run's job listing in the cache: (repository, run id, run attempt)."""


class AttemptDispatcher(Protocol):
    """Runs the agent for a started attempt, in the background; a pass never waits for it."""

    def dispatch(self, attempt: Attempt) -> None:
        """Start working on `attempt` (`pending`; or `running`, claimed by a pass to resume it)."""

    async def cancel(self, attempt_id: str) -> bool:
        """Stop working on `attempt_id` here (already ended in the database); True if it was running here."""

    def is_running(self, attempt_id: str) -> bool:
        """Whether this process is working on `attempt_id` right now."""

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no attempt is running here (demo and tests)."""


@dataclass
class PassCaches:
    """What the forge said last time, so an unchanged project costs one 304; and what this process did."""

    # The last observation of each project (from the Actions API), reused when the runs listing is a 304.
    observations: dict[str, ProjectObservation] = field(default_factory=dict)
    # Job listings of completed runs (they never change).
    jobs: dict[JobKey, JobFacts] = field(default_factory=dict)
    # Re-runs this process asked the forge for: (project, run id).
    reruns_requested: set[tuple[str, str]] = field(default_factory=set)
    # Whether every configured project has its store row (synced once per process).
    projects_synced: bool = False
    # Ended attempts this process found in line with their fix branch on the forge (see `reconciler.repair`).
    repair_checked: set[str] = field(default_factory=set)
    # Spend notices this process claimed or found claimed: (flag key, window:level) (see `reconciler.budget`).
    spend_notices: set[tuple[str, str]] = field(default_factory=set)
    # Where the paced periodic resync is in its round of the projects (see `reconciler.pacing`).
    resync: ResyncPacer = field(default_factory=ResyncPacer)


@dataclass(frozen=True)
class ReconcilerContext:
    """The reconciler's dependencies, passed in (never module globals)."""

    config: GreenloopConfig
    sessions: SessionFactory
    forge: ForgeClient | None
    dispatcher: AttemptDispatcher | None
    metrics: Metrics
    bot_logins: frozenset[str] = frozenset({"greenloop[bot]"})
    caches: PassCaches = field(default_factory=PassCaches)
    # Below this many forge requests left (until the budget resets), projects without an active attempt are
    # not observed: the budget left is kept for attempts in flight (skip reason `rate_limit_low`).
    rate_limit_reserve: int = 100
    # The reconciler's writes (re-run, merge on green, close a cancelled PR, escalation, orphan branches) go
    # through the MCP server's operator surface: in-process or the sidecar's loopback routes. None: no writes.
    operator: Operator | None = None

    async def ensure_projects(self) -> None:
        """Rows for every configured project (attempts, runs and flags reference them); once per process.

        Raises:
            StoreError: the store failed.
        """
        if not self.caches.projects_synced:
            await sync_projects(self.sessions, {p.name: p.repo for p in self.config.projects})
            self.caches.projects_synced = True
