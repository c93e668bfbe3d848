"""SIGINT/SIGTERM on a real `greenloop reconcile` process: its attempt ends `cancelled`, with the signal as the
reason, so the project is not blocked until the heartbeat goes stale.

The child is the real command line (`python -m reconciler.cli reconcile`) against the local forge and the
fake Anthropic API, whose first answer takes minutes: the agent is `running` (waiting on the model) when the
signal comes.
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
            "ANTHROPIC_API_KEY": fake.api_key,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
        }
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
