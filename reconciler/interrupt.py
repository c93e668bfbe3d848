"""SIGINT/SIGTERM on a one-shot command (`greenloop reconcile`): cancel this process's attempts, say why.

Without this, Ctrl-C left the attempt the command had started `running` with nobody working on it, and the
project blocked until its heartbeat went stale (`attempt_timeout_seconds`). Now the first signal stops the
work, and each attempt this process's dispatcher is running is cancelled through the one operator cancel
(`reconciler.operations.cancel_attempt`: the store first, then the agent, then its pull request) with the
reason `interrupted: SIGINT` (or `SIGTERM`). A second signal is not caught again: it stops the process the
ordinary way.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable
from types import TracebackType
from typing import Final, TypeVar

from infra.jsonlog import log_event
from policy.types import AttemptStatus
from reconciler.context import ReconcilerContext
from reconciler.errors import ReconcilerError
from reconciler.operations import Cancelled, OperationRefused, cancel_attempt
from reconciler.store import attempts as attempt_store

__all__ = ["SIGNALS", "SignalWatch", "cancel_here", "exit_code", "until_signal"]

logger = logging.getLogger("greenloop.interrupt")

SIGNALS: Final = (signal.SIGINT, signal.SIGTERM)
PASS_GRACE_SECONDS: Final = 10.0
"""How long a pass under way may finish after a signal (so an attempt it inserts is also dispatched and can be
cancelled) before it is cancelled."""

T = TypeVar("T")


class SignalWatch:
    """Catches the first SIGINT/SIGTERM on the running loop (while entered); `name` is the signal's name."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._caught = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> SignalWatch:
        loop = asyncio.get_running_loop()
        try:
            for sig in SIGNALS:
                loop.add_signal_handler(sig, self._catch, sig)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread, or no signals here
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)
            return self
        self._loop = loop
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._restore()

    def _restore(self) -> None:
        if self._loop is not None:
            for sig in SIGNALS:
                self._loop.remove_signal_handler(sig)
            self._loop = None

    def _catch(self, sig: signal.Signals) -> None:
        self.name = sig.name
        self._caught.set()
        self._restore()  # a second signal is the default one: the process stops

    async def wait(self) -> str:
        """Wait for the signal; its name."""
        await self._caught.wait()
        return self.name or "signal"


async def until_signal(work: Awaitable[T], watch: SignalWatch, *, grace: float = PASS_GRACE_SECONDS) -> T | None:
    """`work`'s result, or None when a signal came first (then `work` gets `grace` seconds, then is cancelled)."""
    task = asyncio.ensure_future(work)
    caught = asyncio.ensure_future(watch.wait())
    try:
        await asyncio.wait([task, caught], return_when=asyncio.FIRST_COMPLETED)
    finally:
        caught.cancel()
    if task.done():
        return task.result()
    await asyncio.wait([task], timeout=grace)
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def cancel_here(ctx: ReconcilerContext, signame: str) -> list[Cancelled]:
    """Cancel the active attempts this process's dispatcher works on, with the reason `interrupted: SIG...`.

    An attempt that already finished or moved past its agent (`pr_open`: its pull request stands) is left as
    it is. A store failure is logged: the attempt's stale heartbeat then frees the project later.
    """
    dispatcher = ctx.dispatcher
    if dispatcher is None:
        return []
    done: list[Cancelled] = []
    try:
        active = await attempt_store.active_attempts(ctx.sessions)
    except ReconcilerError as exc:
        log_event(logger, "interrupt_cancel_failed", level=logging.WARNING, error=str(exc))
        return done
    for attempt in active:
        status = AttemptStatus(attempt.status)
        if not dispatcher.is_running(attempt.id) or status not in (AttemptStatus.PENDING, AttemptStatus.RUNNING):
            continue
        try:
            done.append(await cancel_attempt(ctx, attempt, why=f"interrupted: {signame}"))
        except OperationRefused:
            continue  # it finished meanwhile
        except ReconcilerError as exc:
            log_event(logger, "interrupt_cancel_failed", level=logging.WARNING, attempt_id=attempt.id, error=str(exc))
    log_event(logger, "interrupted", signal=signame, cancelled=[c.attempt.id for c in done])
    return done


def exit_code(signame: str) -> int:
    """The shell's exit code for a process stopped by `signame` (128 + its number)."""
    return 128 + int(getattr(signal, signame, signal.SIGINT))
