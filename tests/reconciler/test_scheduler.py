"""reconciler.scheduler: scheduled passes and the API in one loop, on a real port, with a clean shutdown.

The passes are a recording fake `reconcile_fn`: the scheduler's contract is to call it (trigger
"schedule", at once and then every interval, never overlapping) and to survive whatever it does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from policy.config import GreenloopConfig, ProjectConfig
from policy.errors import ConfigError
from reconciler.context import ReconcilerContext
from reconciler.metrics import Metrics
from reconciler.scheduler import run_service
from reconciler.service import leased_reconcile
from reconciler.store.engine import SessionFactory
from reconciler.store.state import acquire_lease, release_lease
from reconciler.summary import RunSummary, Trigger

pytestmark = pytest.mark.anyio

TOKEN = "scheduler-test-token-0123456789"
REPO_ROOT = Path(__file__).resolve().parents[2]


class FakePasses:
    """Records each call (time, arguments), how many ran at once, and whether one was cancelled."""

    def __init__(self, *, duration: float = 0.0, raises: bool = False) -> None:
        self.calls: list[dict[str, Any]] = []
        self.duration = duration
        self.raises = raises
        self.active = 0
        self.max_active = 0
        self.completed = 0
        self.cancelled = 0

    async def __call__(
        self,
        ctx: ReconcilerContext,
        *,
        repos: Sequence[str] | None = None,
        trigger: Trigger = "cli",
        dry_run: bool = False,
    ) -> RunSummary:
        self.calls.append({"at": time.monotonic(), "repos": repos, "trigger": trigger, "dry_run": dry_run})
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.duration)
            if self.raises:
                raise RuntimeError("pass exploded")
            self.completed += 1
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.active -= 1
        from datetime import UTC, datetime

        return RunSummary(trigger=trigger, dry_run=dry_run, started_at=datetime.now(UTC))

    async def wait_for_calls(self, n: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.calls) < n:  # noqa: ASYNC110 (a test poll on a plain counter)
                await asyncio.sleep(0.02)


def make_ctx(sessions: SessionFactory) -> ReconcilerContext:
    config = GreenloopConfig(projects=(ProjectConfig(name="alpha", repo="acme/alpha"),))
    return ReconcilerContext(config=config, sessions=sessions, forge=None, dispatcher=None, metrics=Metrics())


@asynccontextmanager
async def service(
    ctx: ReconcilerContext, fake: FakePasses, *, interval: float = 0.2, **kw: Any
) -> AsyncIterator[tuple[int, anyio.Event, asyncio.Task[None]]]:
    """Run the service in the background; yields (port, stop event, its task); stops it on exit."""
    stop = anyio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    kw.setdefault("api_token", TOKEN)
    kw.setdefault("reconcile_fn", fake)
    task = asyncio.create_task(
        run_service(
            ctx,
            interval_seconds=interval,
            host="127.0.0.1",
            port=0,
            stop=stop,
            on_listening=lambda _h, p: listening.set_result(p),
            **kw,
        )
    )
    try:
        port = await asyncio.wait_for(asyncio.shield(listening), 10)
        yield port, stop, task
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


async def test_first_pass_runs_at_once_then_on_schedule_and_the_api_answers(sessions: SessionFactory) -> None:
    fake = FakePasses()
    ctx = make_ctx(sessions)
    started = time.monotonic()
    async with service(ctx, fake, interval=0.2) as (port, stop, task):
        await fake.wait_for_calls(3)
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False) as http:
            health = await http.get("/healthz")
            unauthorized = await http.get("/kill-switch")
            authorized = await http.get("/kill-switch", headers={"Authorization": f"Bearer {TOKEN}"})
        stop.set()
        await asyncio.wait_for(task, 10)
        assert task.exception() is None
    assert fake.calls[0]["at"] - started < 1.5  # next_run_time=now: no wait for the first interval
    gaps = [round(b["at"] - a["at"], 3) for a, b in zip(fake.calls, fake.calls[1:], strict=False)]
    assert fake.calls[2]["at"] - fake.calls[0]["at"] > 0.25, gaps  # then every interval, not back to back
    assert {(c["trigger"], c["repos"], c["dry_run"]) for c in fake.calls} == {("schedule", None, False)}
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    assert unauthorized.status_code == 401
    assert authorized.json()["enabled"] is False
    assert _port_closed(port)
    calls = len(fake.calls)
    await asyncio.sleep(0.5)
    assert len(fake.calls) == calls  # nothing runs after shutdown


async def test_slow_passes_never_overlap(sessions: SessionFactory) -> None:
    fake = FakePasses(duration=0.5)
    async with service(make_ctx(sessions), fake, interval=0.05):
        await fake.wait_for_calls(3)
    assert fake.max_active == 1
    assert fake.completed >= 2


async def test_a_failing_pass_does_not_stop_the_schedule(sessions: SessionFactory) -> None:
    fake = FakePasses(raises=True)
    ctx = make_ctx(sessions)
    async with service(ctx, fake, interval=0.1):
        await fake.wait_for_calls(3)
    assert ctx.metrics.value("greenloop_reconcile_pass_failures_total", trigger="schedule") >= 3


async def test_a_hanging_pass_is_cancelled_at_its_timeout(sessions: SessionFactory) -> None:
    fake = FakePasses(duration=3600)
    ctx = make_ctx(sessions)
    async with service(ctx, fake, interval=0.1, pass_timeout_seconds=0.3):
        await fake.wait_for_calls(2)
    assert fake.cancelled >= 1
    assert ctx.metrics.value("greenloop_reconcile_pass_failures_total", trigger="schedule") >= 1


async def test_with_leased_reconcile_passes_wait_while_another_replica_holds_the_lease(
    sessions: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The service as `greenloop run` wires it: the real pass behind the store's pass lease."""
    caplog.set_level(logging.INFO, logger="greenloop.service")
    token = await acquire_lease(sessions, holder="other-replica", ttl_seconds=600)
    assert token is not None
    ctx = make_ctx(sessions)
    async with service(ctx, FakePasses(), interval=0.1, reconcile_fn=leased_reconcile):
        await asyncio.sleep(0.6)
        skipped = [r for r in caplog.records if r.getMessage() == "pass_skipped_lease_held"]
        assert len(skipped) >= 2
        assert ctx.metrics.value("greenloop_reconcile_passes_total", trigger="schedule") == 0
        await release_lease(sessions, token=token)
        async with asyncio.timeout(10):
            while ctx.metrics.value("greenloop_reconcile_passes_total", trigger="schedule") == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    assert ctx.metrics.value("greenloop_reconcile_pass_failures_total", trigger="schedule") == 0


async def test_stop_lets_a_short_pass_finish(sessions: SessionFactory) -> None:
    fake = FakePasses(duration=0.4)
    async with service(make_ctx(sessions), fake, interval=60, grace_seconds=5) as (_port, stop, task):
        await fake.wait_for_calls(1)
        stop.set()
        await asyncio.wait_for(task, 10)
    assert (fake.completed, fake.cancelled) == (1, 0)


async def test_stop_cancels_a_long_pass_after_the_grace_period(sessions: SessionFactory) -> None:
    fake = FakePasses(duration=3600)
    async with service(make_ctx(sessions), fake, interval=60, grace_seconds=0.3) as (_port, stop, task):
        await fake.wait_for_calls(1)
        t0 = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 10)
        assert time.monotonic() - t0 < 5
    assert fake.cancelled == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        pytest.param({"api_token": None}, "api_token: not set", id="no-token"),
        pytest.param({"api_token": ""}, "api_token: not set", id="empty-token"),
        pytest.param(
            {"api_token": None, "allow_no_token": True, "host": "0.0.0.0"}, "loopback only", id="no-token-public"
        ),
        pytest.param({"api_token": "short"}, "too short", id="weak-token"),
        pytest.param({"interval_seconds": 0}, "interval_seconds", id="zero-interval"),
        pytest.param({"pass_timeout_seconds": -1.0}, "pass timeout", id="negative-timeout"),
        pytest.param({"host": "no-such-host.invalid"}, "cannot listen", id="unresolvable-host"),
    ],
)
async def test_bad_settings_are_refused_before_anything_starts(
    sessions: SessionFactory, kw: dict[str, Any], match: str
) -> None:
    fake = FakePasses()
    args: dict[str, Any] = {"interval_seconds": 1.0, "host": "127.0.0.1", "port": 0, "api_token": TOKEN}
    args.update(kw)
    with pytest.raises(ConfigError, match=match):
        await run_service(make_ctx(sessions), reconcile_fn=fake, **args)
    assert fake.calls == []


async def test_a_busy_port_is_a_clear_error(sessions: SessionFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            await run_service(
                make_ctx(sessions),
                interval_seconds=1,
                host="127.0.0.1",
                port=port,
                api_token=TOKEN,
                reconcile_fn=FakePasses(),
            )


async def test_without_a_token_loopback_dev_mode_serves_loopback(sessions: SessionFactory) -> None:
    fake = FakePasses()
    async with service(make_ctx(sessions), fake, api_token=None, allow_no_token=True) as (port, _stop, _task):
        http = httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False)
        async with http:
            assert (await http.get("/kill-switch")).status_code == 200


_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime
    from infra.jsonlog import configure_json_logging
    from policy.config import GreenloopConfig, ProjectConfig
    from reconciler.context import ReconcilerContext
    from reconciler.metrics import Metrics
    from reconciler.scheduler import run_service
    from reconciler.store.engine import make_engine, make_sessionmaker
    from reconciler.store.migrate import upgrade_async
    from reconciler.summary import RunSummary

    async def fake(ctx, *, repos=None, trigger="cli", dry_run=False):
        print("pass", flush=True)
        return RunSummary(trigger=trigger, started_at=datetime.now(UTC))

    async def main():
        engine = make_engine(sys.argv[1])
        await upgrade_async(engine)
        config = GreenloopConfig(projects=(ProjectConfig(name="alpha", repo="acme/alpha"),))
        ctx = ReconcilerContext(config=config, sessions=make_sessionmaker(engine), forge=None, dispatcher=None,
                                metrics=Metrics())
        try:
            await run_service(ctx, interval_seconds=0.2, host="127.0.0.1", port=0, api_token="x" * 32,
                              reconcile_fn=fake, on_listening=lambda h, p: print("listening", p, flush=True))
        finally:
            await engine.dispose()
        print("clean exit", flush=True)

    configure_json_logging()
    asyncio.run(main())
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_shuts_the_service_down_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        f"sqlite+aiosqlite:///{tmp_path / 'svc.db'}",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while lines.count("pass") < 2:
                raw = await proc.stdout.readline()
                if not raw:  # EOF: the child exited early
                    break
                line = raw.decode().strip()
                lines.append(line.split()[0] if line else line)
        assert lines.count("pass") >= 2, lines
        proc.send_signal(sig)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "clean exit" in out.decode()
    events = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    stopped = [e for e in events if e["event"] == "service_stopped"]
    assert stopped and stopped[0]["reason"] == "signal"
    assert not [e for e in events if e["level"] == "error"]
