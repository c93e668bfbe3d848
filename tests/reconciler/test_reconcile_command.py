"""A real `greenloop reconcile` process (`python -m reconciler.cli reconcile`) against the local forge and the
fake Anthropic API.

- SIGINT/SIGTERM: its attempt ends `cancelled`, with the signal as the reason, so the project is not blocked
  until the heartbeat goes stale (the fake's first answer takes minutes: the agent is `running` when the
  signal comes).
- On a terminal (a pseudo-terminal here) it shows the pass, each state change of its attempt and a final
  table; piped, its output is the pass summary alone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import attempts_of, e2e_config, forge_for, sqlite_url, transitions_of

from fixtures.fake_anthropic import FakeAnthropic, run_fake_anthropic
from reconciler.store.engine import make_engine, make_sessionmaker

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "bug-lib"


def _toml(data: Any, prefix: str = "") -> list[str]:
    """A minimal TOML writer for a config dump (tables, arrays of tables, scalars, arrays of scalars)."""
    import json

    lines: list[str] = []
    nested = []
    for key, value in data.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and isinstance(value[0], dict)):
            nested.append((key, value))
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    for key, value in nested:
        name = f"{prefix}.{key}" if prefix else key
        for item in [value] if isinstance(value, dict) else value:
            lines.append(f"[{name}]" if isinstance(value, dict) else f"[[{name}]]")
            lines.extend(_toml(item, name))
    return lines


def _setup(tmp_path: Path, forge: Any, model_url: str, api_key: str) -> tuple[Path, dict[str, str]]:
    """The config file for `PROJECT` on `forge` with the model at `model_url`, and the child's environment."""
    db = tmp_path / "greenloop.db"
    config = e2e_config(forge, [PROJECT], database_url=sqlite_url(db), workspace_dir=tmp_path / "ws")
    data = config.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    data["project"] = data.pop("projects")
    data.setdefault("agent", {})["base_url"] = model_url
    (tmp_path / "greenloop.toml").write_text("\n".join(_toml(data)) + "\n", encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "ANTHROPIC_API_KEY": api_key,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    return db, env


def _status(db: Path) -> str | None:
    with sqlite3.connect(db) as conn:
        try:
            row = conn.execute("SELECT status FROM reconciler_attempt").fetchone()
        except sqlite3.OperationalError:  # not migrated yet
            return None
    return None if row is None else str(row[0])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_cancels_the_running_attempt_with_the_reason(sig: signal.Signals, tmp_path: Path) -> None:
    fake = FakeAnthropic([{"delay": 600, "text": "never answered in time"}])
    async with forge_for(tmp_path / "forge", [PROJECT]) as forge, run_fake_anthropic(fake) as model_url:
        db, env = _setup(tmp_path, forge, model_url, fake.api_key)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reconciler.cli", "--config", str(tmp_path / "greenloop.toml"), "reconcile",
            cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            ends = time.monotonic() + 180
            while time.monotonic() < ends and proc.returncode is None:
                if db.exists() and await asyncio.to_thread(_status, db) == "running":
                    break
                await asyncio.sleep(0.2)
            assert proc.returncode is None, (await proc.communicate())[1].decode()[-3000:]
            proc.send_signal(sig)
            stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    err = stderr.decode()
    assert proc.returncode == 128 + sig.value, err[-3000:]
    engine = make_engine(sqlite_url(db))
    try:
        sessions = make_sessionmaker(engine)
        [attempt] = await attempts_of(sessions, PROJECT)
        trail = await transitions_of(sessions, attempt.id)
    finally:
        await engine.dispose()
    assert attempt.status == "cancelled", (trail, attempt.stop_reason, [(r.path, r.status) for r in fake.requests])
    assert trail[-1] == ("running", "cancelled", f"interrupted: {sig.name}")
    assert f"greenloop: interrupted by {sig.name}: cancelled attempt(s) {attempt.id}" in err
    assert "Traceback" not in err
    assert stdout == b""  # no summary of a pass that was cut short


def _read_all(fd: int) -> bytes:
    """Everything written to a pseudo-terminal's child side until the child closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: every child side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
async def test_progress_on_a_terminal_and_the_summary_alone_when_piped(terminal: bool, tmp_path: Path) -> None:
    import pty

    fake = FakeAnthropic([{"text": "I looked at the log and cannot fix this failure."}])
    async with forge_for(tmp_path / "forge", [PROJECT]) as forge, run_fake_anthropic(fake) as model_url:
        _db, env = _setup(tmp_path, forge, model_url, fake.api_key)
        argv = [sys.executable, "-m", "reconciler.cli", "--config", str(tmp_path / "greenloop.toml"), "reconcile"]
        if terminal:
            master, child_side = pty.openpty()
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=tmp_path, env=env, stdout=child_side, stderr=asyncio.subprocess.PIPE
            )
            os.close(child_side)
            reader = asyncio.ensure_future(asyncio.to_thread(_read_all, master))
            _, stderr = await asyncio.wait_for(proc.communicate(), 240)
            out = (await reader).decode().replace("\r\n", "\n")
            os.close(master)
        else:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            raw, stderr = await asyncio.wait_for(proc.communicate(), 240)
            out = raw.decode()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    lines = out.splitlines()
    summary_at = next(i for i, line in enumerate(lines) if "project(s) scanned" in line)
    assert "1 attempt(s) started" in lines[summary_at]
    if not terminal:
        assert summary_at == 0 and not any(line.startswith("[") for line in lines), out
        return
    # The pass, then its summary at once, then the agent's state changes as they happen, then a table.
    assert "reconcile pass over 1 project(s) ..." in lines[0] and summary_at == 1, out
    progress = "\n".join(lines[summary_at:])
    assert "waiting for 1 agent(s)" in progress and "Ctrl-C cancels them" in progress
    assert ": new -> pending" in progress
    assert ": pending -> running (agent_started)" in progress
    assert ": running -> failed (" in progress
    head = next(i for i, line in enumerate(lines) if line.startswith("ATTEMPT"))
    assert head > summary_at and out.count("project(s) scanned") == 1, out
    table = lines[head : head + 2]
    assert table[0].split() == ["ATTEMPT", "PROJECT", "JOB", "STATUS", "TURNS", "TOKENS", "COST", "PULL", "REQUEST"]
    assert table[1].split()[1:4] == [PROJECT, "test", "failed"], out
    print(out)  # shown with -s: what a person sees


def test_until_signal_gives_the_work_its_grace_then_cancels_it() -> None:
    from reconciler.interrupt import SignalWatch, exit_code, until_signal

    cancelled: list[bool] = []

    async def work() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return "done"

    async def main() -> tuple[str | None, str | None]:
        with SignalWatch() as watch:
            asyncio.get_running_loop().call_later(0.1, os.kill, os.getpid(), signal.SIGTERM)
            result = await until_signal(work(), watch, grace=0.1)
        return result, watch.name

    assert asyncio.run(main()) == (None, "SIGTERM")
    assert cancelled == [True]
    assert exit_code("SIGTERM") == 143 and exit_code("SIGINT") == 130


def test_a_signal_watch_outside_the_main_thread_watches_nothing() -> None:
    import threading

    from reconciler.interrupt import SignalWatch

    seen: list[str | None] = []

    async def main() -> None:
        with SignalWatch() as watch:
            seen.append(watch.name)

    thread = threading.Thread(target=lambda: asyncio.run(main()))
    thread.start()
    thread.join(30)
    assert seen == [None]
