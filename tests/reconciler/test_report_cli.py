"""`greenloop report`, run as a subprocess against the real API served by uvicorn on loopback, on a real store."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from test_api import TOKEN, make_ctx
from test_notify import serve

from reconciler.api import build_api
from reconciler.store.engine import SessionFactory
from reconciler.store.models import JobRun

pytestmark = pytest.mark.anyio

SECRET = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
GIT = shutil.which("git") or "git"


@dataclass
class Api:
    url: str
    sessions: SessionFactory
    woken: list[str]


@pytest.fixture
async def api(sessions: SessionFactory) -> AsyncIterator[Api]:
    woken: list[str] = []
    app = build_api(make_ctx(sessions), api_token=TOKEN, enqueue=woken.append)
    async with serve(app) as url:
        yield Api(url=url, sessions=sessions, woken=woken)


@pytest.fixture
def checkout(tmp_path: Path) -> tuple[Path, str]:
    """A git checkout with one commit; (its directory, HEAD)."""
    work = tmp_path / "job"
    work.mkdir()
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (
        ["init", "--quiet"],
        ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "--allow-empty", "-m", "job"],
    ):
        subprocess.run([GIT, *args], cwd=work, env=env, check=True, timeout=30)
    head = subprocess.run([GIT, "rev-parse", "HEAD"], cwd=work, env=env, capture_output=True, text=True, check=True)
    return work, head.stdout.strip()


@dataclass
class Done:
    code: int
    stdout: str
    stderr: str


async def start(
    url: str, cwd: Path, *command: str, extra: tuple[str, ...] = (), token: str = TOKEN
) -> asyncio.subprocess.Process:
    """`greenloop report --job nightly --project alpha --url URL EXTRA -- COMMAND` in `cwd`, as a subprocess."""
    env = {**os.environ, "GREENLOOP_SERVER__API_TOKEN": token}
    env.pop("GREENLOOP_PROJECT", None)
    argv = ["report", "--job", "nightly", "--project", "alpha", "--url", url, *extra, "--", *command]
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "reconciler.cli",
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def report(url: str, cwd: Path, *command: str, extra: tuple[str, ...] = (), token: str = TOKEN) -> Done:
    proc = await start(url, cwd, *command, extra=extra, token=token)
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def runs(sessions: SessionFactory) -> list[JobRun]:
    async with sessions() as session:
        return list((await session.scalars(sa.select(JobRun).order_by(JobRun.id))).all())


FAILING = (
    sys.executable,
    "-c",
    "import sys; print('step 1 ok', flush=True); "
    f"print('Error: token {SECRET} rejected', file=sys.stderr); sys.exit(3)",
)


async def test_a_failing_command_is_reported_with_its_log_and_its_exit_code_is_kept(
    api: Api, checkout: tuple[Path, str]
) -> None:
    work, head = checkout
    done = await report(api.url, work, *FAILING)
    assert done.code == 3
    assert "step 1 ok" in done.stdout  # streamed through, stdout to stdout
    assert "rejected" in done.stderr and "step 1 ok" not in done.stderr
    assert "NOT reported" not in done.stderr
    [run] = await runs(api.sessions)
    assert (run.project, run.job, run.source, run.status, run.conclusion) == (
        "alpha",
        "nightly",
        "reported",
        "completed",
        "failure",
    )
    assert run.head_sha == head
    assert run.log_text is not None
    assert "step 1 ok" in run.log_text and "rejected" in run.log_text
    assert "exited with code 3" in run.log_text
    assert SECRET not in run.log_text
    assert api.woken == ["alpha"]  # the report woke the loop for the project


async def test_a_succeeding_command_is_reported_green(api: Api, checkout: tuple[Path, str]) -> None:
    done = await report(api.url, checkout[0], sys.executable, "-c", "print('fine')")
    assert done.code == 0
    [run] = await runs(api.sessions)
    assert run.conclusion == "success"


async def test_when_the_api_is_down_the_failure_is_kept_and_said_on_stderr(checkout: tuple[Path, str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    done = await report(f"http://127.0.0.1:{port}", checkout[0], *FAILING)
    assert done.code == 3
    assert "NOT reported" in done.stderr
    assert "did not answer" in done.stderr


async def test_a_refused_report_keeps_the_exit_code_and_says_why(api: Api, checkout: tuple[Path, str]) -> None:
    done = await report(api.url, checkout[0], *FAILING, token="wrong-token-0123456789")
    assert done.code == 3
    assert "HTTP 401" in done.stderr
    assert await runs(api.sessions) == []


async def test_outside_a_git_checkout_the_commit_must_be_given(api: Api, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    done = await report(api.url, plain, *FAILING)
    assert done.code == 3
    assert "--commit" in done.stderr
    assert await runs(api.sessions) == []
    done = await report(api.url, plain, *FAILING, extra=("--commit", "abcdef1"))
    assert done.code == 3
    [run] = await runs(api.sessions)
    assert run.head_sha == "abcdef1"


async def test_a_command_that_cannot_start_is_127_and_reported_red(api: Api, checkout: tuple[Path, str]) -> None:
    done = await report(api.url, checkout[0], "/nonexistent/job-binary")
    assert done.code == 127
    [run] = await runs(api.sessions)
    assert run.conclusion == "failure"
    assert run.log_text is not None and "could not start" in run.log_text


async def test_only_the_tail_of_a_long_log_is_sent(api: Api, checkout: tuple[Path, str]) -> None:
    script = "for i in range(5000): print(f'line {i:05d} ' + 'x' * 40)"
    done = await report(api.url, checkout[0], sys.executable, "-c", script, extra=("--log-tail-bytes", "4096"))
    assert done.code == 0
    assert "line 00000" in done.stdout  # the whole output still streams through
    [run] = await runs(api.sessions)
    assert run.log_text is not None
    assert len(run.log_text.encode()) < 4096 + 400
    assert "line 04999" in run.log_text and "line 00000" not in run.log_text
    assert "bytes of output are not included" in run.log_text


async def test_signals_reach_the_command(api: Api, checkout: tuple[Path, str]) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: (print('got SIGTERM', flush=True), sys.exit(143)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = await start(api.url, checkout[0], sys.executable, "-c", script)
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        assert (await proc.stdout.readline()).strip() == b"ready"
        proc.terminate()
        rest, _ = await proc.communicate()
    assert b"got SIGTERM" in rest
    assert proc.returncode == 143
    [run] = await runs(api.sessions)
    assert run.conclusion == "failure"


def test_without_a_command_it_says_how_to_call_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "reconciler.cli", "report", "--job", "j", "--project", "p"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no command given" in done.stderr
