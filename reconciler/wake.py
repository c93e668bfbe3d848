"""Waking the loop for one project: the `Enqueue` callable events call, always backed by a `Runner`.

Events are hints: a webhook or a reported run only asks "look at this project again soon"; the project is
re-read from the forge and the store, never taken from the event. Whoever runs the loop provides the
`Enqueue`; the HTTP API calls it with a configured project name.

Every wake-up goes through a `reconciler.runner.Runner` (`Runner.enqueue`: coalesced keys, one event pass at
a time). `greenloop run` and the demo pass their one runner's `enqueue`; an API built without one (the
operators' CLI on the database, tests, the bench) gets a runner of its own, started on the first wake-up
(`started_on_first_wake`), so there is one way to run an event pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from reconciler.runner import Runner

__all__ = ["Enqueue", "started_on_first_wake"]

Enqueue = Callable[[str], None]
"""Ask for one project (its configured name) to be reconciled soon; returns at once."""


def started_on_first_wake(runner: Runner) -> Enqueue:
    """`runner.enqueue`, starting the runner's worker on the running loop at the first call.

    The worker runs until the loop ends (or `runner.aclose()`); the caller that built the runner may close it.
    """
    starting: list[asyncio.Task[None]] = []

    def wake(key: str) -> None:
        runner.enqueue(key)
        if not starting:
            starting.append(asyncio.get_running_loop().create_task(runner.start(), name="greenloop-runner-start"))

    return wake
