"""The long-running service: scheduled reconcile passes (APScheduler) and the HTTP API (uvicorn), one event loop.

The scheduler is the pass's runner: it owns the interval, the per-pass timeout and the logging of a failed
pass; the pass itself (`reconcile`) has none of these. A pass still running when the next one is due is not
doubled (`max_instances=1`), and passes missed meanwhile are folded into one (`coalesce=True`).

Replicas sharing one database: pass `reconciler.service.leased_reconcile` as `reconcile_fn`; it takes the
store's pass lease for scheduled passes (the lease is not re-entrant, so it is taken in one place only).

Shutdown (the `stop` event, SIGTERM or SIGINT): no new pass starts, a running pass gets `grace_seconds` to
finish and is then cancelled (the next start repairs anything half done: every pass recomputes from current
state), and uvicorn stops accepting connections and drains the open ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Final

import anyio
import uvicorn
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from infra.jsonlog import bind_context, log_event
from policy.errors import ConfigError
from reconciler.api import ReconcileFn, build_api
from reconciler.api_http import is_loopback_host
from reconciler.context import ReconcilerContext
from reconciler.errors import ReconcilerError
from reconciler.runner import reconcile
from reconciler.wake import Enqueue

__all__ = ["DEFAULT_GRACE_SECONDS", "run_service"]

logger = logging.getLogger("greenloop.scheduler")

DEFAULT_GRACE_SECONDS: Final = 10.0
_JOB_ID: Final = "reconcile"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run_service` owns SIGTERM/SIGINT for the whole service."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, bound here so a busy port is a clear error before anything starts.

    Raises:
        ConfigError: the address cannot be resolved or bound.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigError(f"server.http_host: cannot listen on {host!r}: {exc.strerror or exc}.") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"server.http_port: cannot listen on {host}:{port}: {exc.strerror or exc}.") from exc
    return sock


class _Passes:
    """The scheduled job: one pass with a timeout, never raising into APScheduler."""

    def __init__(self, ctx: ReconcilerContext, reconcile_fn: ReconcileFn, *, timeout: float) -> None:
        self.ctx = ctx
        self.reconcile_fn = reconcile_fn
        self.timeout = timeout
        self.running: set[asyncio.Task[Any]] = set()
        self.count = 0

    async def run(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.running.add(task)
        self.count += 1
        try:
            with bind_context(trigger="schedule", pass_number=self.count):
                await self._run()
        finally:
            if task is not None:
                self.running.discard(task)

    async def _run(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.reconcile_fn(self.ctx, trigger="schedule")
        except TimeoutError:
            self.ctx.metrics.observe_pass_failed("schedule")
            log_event(logger, "scheduled_pass_timed_out", level=logging.ERROR, timeout_seconds=self.timeout)
        except Exception:  # top-level handler of the job: one bad pass must not stop the schedule
            self.ctx.metrics.observe_pass_failed("schedule")
            logger.exception("scheduled_pass_failed")
        finally:
            if self.ctx.forge is not None:
                self.ctx.metrics.set_forge(self.ctx.forge.stats)


@contextlib.contextmanager
def _signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGINT call `on_signal` while inside (main thread of a loop that supports it; else nothing)."""
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, on_signal)
            except (NotImplementedError, RuntimeError, ValueError):  # e.g. Windows
                continue
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run_service(
    ctx: ReconcilerContext,
    *,
    interval_seconds: float,
    host: str,
    port: int,
    api_token: str | None,
    reconcile_fn: ReconcileFn = reconcile,
    stop: anyio.Event | None = None,
    allow_no_token: bool = False,
    pass_timeout_seconds: float | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    on_listening: Callable[[str, int], None] | None = None,
    enqueue: Enqueue | None = None,
) -> None:
    """Run scheduled passes every `interval_seconds` (the first at once) and serve the API on host:port.

    Returns after `stop` is set or SIGTERM/SIGINT arrives, once both have shut down. `port=0` picks a free
    port; `on_listening(host, port)` is called with the real one before the first pass. Without a token the
    API is served only on a loopback `host`, and only when `allow_no_token` is set (development).
    `pass_timeout_seconds` (default: ten intervals, at least 60 s) cancels a pass that hangs.

    Raises:
        ConfigError: a bad interval or timeout, no token where one is needed, or an address that cannot be
            bound.
        ReconcilerError: the HTTP server crashed (after the scheduler was shut down).
    """
    if not interval_seconds > 0:
        raise ConfigError(f"server.interval_seconds: must be positive: {interval_seconds!r}.")
    if api_token is None or api_token == "":
        if not allow_no_token:
            raise ConfigError("server.api_token: not set: the HTTP API needs a bearer token.")
        if not is_loopback_host(host):
            # Security: an unauthenticated API may only ever be reachable from this machine.
            raise ConfigError(f"server.http_host: without server.api_token the API listens on loopback only: {host!r}.")
    timeout = pass_timeout_seconds if pass_timeout_seconds is not None else max(60.0, 10 * interval_seconds)
    if not timeout > 0:
        raise ConfigError(f"pass timeout: must be positive: {timeout!r}.")
    app = build_api(ctx, api_token=api_token, reconcile_fn=reconcile_fn, allow_no_token=allow_no_token, enqueue=enqueue)

    sock = _bind(host, port)
    bound_port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        log_config=None,  # keep the process's JSON logging
        access_log=False,  # every handler logs its own structured event
        lifespan="off",
        timeout_graceful_shutdown=max(1, int(grace_seconds)),
    )
    server = _Server(config)
    passes = _Passes(ctx, reconcile_fn, timeout=timeout)
    scheduler = AsyncIOScheduler(timezone=UTC)
    scheduler.add_job(
        passes.run,
        "interval",
        seconds=interval_seconds,
        id=_JOB_ID,
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,  # a late pass still runs (once, coalesced) rather than being dropped
        next_run_time=datetime.now(UTC),
    )

    stopping = asyncio.Event()
    stop_reason = "stop event"

    def _on_signal() -> None:
        nonlocal stop_reason
        stop_reason = "signal"
        stopping.set()

    async def _watch_stop() -> None:
        if stop is not None:
            await stop.wait()
            stopping.set()

    log_event(logger, "service_starting", host=host, port=bound_port, interval_seconds=interval_seconds)
    serve_task: asyncio.Task[None] | None = None
    waiters = [asyncio.create_task(_watch_stop()), asyncio.create_task(stopping.wait())]
    try:
        with _signals(_on_signal):
            serve_task = asyncio.create_task(server.serve(sockets=[sock]))
            if on_listening is not None:
                on_listening(host, bound_port)
            scheduler.start()
            await asyncio.wait({waiters[1], serve_task}, return_when=asyncio.FIRST_COMPLETED)
            if not stopping.is_set():
                stop_reason = "http server exited"
            log_event(logger, "service_stopping", reason=stop_reason, passes=passes.count)
            await _shutdown(scheduler, passes, grace_seconds)
    finally:
        for waiter in waiters:
            waiter.cancel()
        server.should_exit = True
        if serve_task is not None:
            # uvicorn drains open connections for up to its graceful timeout; then it is cancelled.
            await asyncio.wait({serve_task}, timeout=grace_seconds + 5)
            if not serve_task.done():
                serve_task.cancel()
                await asyncio.wait({serve_task})
        sock.close()
        if scheduler.running:
            scheduler.shutdown(wait=False)
            await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the next loop iteration
    log_event(logger, "service_stopped", reason=stop_reason, passes=passes.count)
    crash = serve_task.exception() if serve_task is not None and not serve_task.cancelled() else None
    if crash is not None:
        raise ReconcilerError(f"Service error: the HTTP server stopped: {crash!r}.") from crash


async def _shutdown(scheduler: AsyncIOScheduler, passes: _Passes, grace_seconds: float) -> None:
    """Stop scheduling; let a running pass finish within the grace period, then cancel it."""
    scheduler.pause()
    if passes.running:
        _done, pending = await asyncio.wait(set(passes.running), timeout=grace_seconds)
        if pending:
            log_event(logger, "scheduled_pass_cancelled", level=logging.WARNING, grace_seconds=grace_seconds)
    scheduler.shutdown(wait=False)  # cancels whatever is still running
    await asyncio.sleep(0)
    leftover = set(passes.running)
    if leftover:
        await asyncio.wait(leftover, timeout=5)
