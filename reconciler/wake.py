"""Waking the loop for one project: the `Enqueue` callable events call, and today's stand-in behind it.

Events are hints: a webhook or a reported run only asks "look at this project again soon"; the project is
re-read from the forge and the store, never taken from the event. Whoever runs the loop provides the
`Enqueue` (it coalesces and debounces); the HTTP API calls it with a configured project name.

`greenloop run` wakes its one `reconciler.runner.Runner` (`Runner.enqueue`: coalesced keys, one event
pass). `BackgroundReconcile` is the fallback for an API served without a runner (tests, the bench): it
runs the API's `reconcile_fn` for one project in the background; a key enqueued while its pass runs is
run once more afterwards (never twice at once, never more than one pass waiting per key).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from infra.jsonlog import log_event
from reconciler.context import ReconcilerContext

if TYPE_CHECKING:
    from reconciler.api import ReconcileFn

__all__ = ["BackgroundReconcile", "Enqueue"]

logger = logging.getLogger("greenloop.wake")

Enqueue = Callable[[str], None]
"""Ask for one project (its configured name) to be reconciled soon; returns at once, never raises."""


class BackgroundReconcile:
    """An `Enqueue` that runs `reconcile_fn(ctx, repos=[key])` in the background, one pass per key at a time."""

    def __init__(self, ctx: ReconcilerContext, reconcile_fn: ReconcileFn, *, timeout_seconds: float = 300.0) -> None:
        self._ctx = ctx
        self._reconcile = reconcile_fn
        self._timeout = timeout_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def __call__(self, key: str) -> None:
        if key in self._tasks:
            self._again.add(key)  # coalesced: one more pass after the running one
            return
        self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key), name=f"wake:{key}")

    async def _run(self, key: str) -> None:
        try:
            while True:
                self._again.discard(key)
                try:
                    async with asyncio.timeout(self._timeout):
                        await self._reconcile(self._ctx, repos=[key], trigger="debug")
                except Exception as exc:  # a background pass must not die silently: logged, next wake retries
                    log_event(logger, "wake_pass_failed", level=logging.WARNING, project=key, error=repr(exc)[:300])
                if key not in self._again:
                    return
        finally:
            self._tasks.pop(key, None)

    async def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no pass runs here (tests and the bench)."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel the passes still running."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
