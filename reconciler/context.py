"""Everything a reconcile pass needs, built once by whoever runs the loop (CLI, scheduler, API, demo)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from policy.config import GreenloopConfig
from reconciler.store.engine import SessionFactory

if TYPE_CHECKING:
    from mcp_server.forge import ForgeClient
    from reconciler.metrics import Metrics
    from reconciler.store.models import Attempt

__all__ = ["AttemptDispatcher", "ReconcilerContext"]


class AttemptDispatcher(Protocol):
    """Runs the agent for a started attempt, in the background; `reconcile()` never waits for it."""

    def dispatch(self, attempt: Attempt) -> None:
        """Start working on `attempt` (`pending`; or `running`, claimed by a pass to resume it)."""

    async def cancel(self, attempt_id: str) -> bool:
        """Stop working on `attempt_id` here (already ended in the database); True if it was running here."""

    def is_running(self, attempt_id: str) -> bool:
        """Whether this process is working on `attempt_id` right now."""

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no attempt is running here (demo and tests)."""


@dataclass
class ReconcilerContext:
    """The reconciler's dependencies, passed in (never module globals)."""

    config: GreenloopConfig
    sessions: SessionFactory
    forge: ForgeClient | None
    dispatcher: AttemptDispatcher | None
    metrics: Metrics
    bot_logins: frozenset[str] = frozenset({"greenloop[bot]"})
    # Observation caches: what the forge said last time, so an unchanged project costs one 304.
    observations: dict[str, object] = field(default_factory=dict)
    job_cache: dict[tuple[str, int, int], object] = field(default_factory=dict)
    reruns_requested: set[tuple[str, str]] = field(default_factory=set)
    # Ended attempts this process found in line with their fix branch on the forge (see `reconciler.repair`).
    repair_checked: set[str] = field(default_factory=set)
    projects_synced: bool = False
    # Below this many forge requests left (until the budget resets), projects without an active attempt are
    # not observed: the budget left is kept for attempts in flight (skip reason `rate_limit_low`).
    rate_limit_reserve: int = 100
