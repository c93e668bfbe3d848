"""`greenloop run --dev`: a real process on loopback, the fixture forge, the scripted model, no token.

It says so at start and prints its address; its API answers without a token on 127.0.0.1 (even when the
environment asks for 0.0.0.0); a pass on it starts attempts that the scripted model carries to a pull request;
SIGTERM stops it cleanly and removes its temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import httpx2
import pytest

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(400)
async def test_run_dev_serves_the_fixture_forge_with_the_scripted_model_on_loopback_without_a_token(
    tmp_path: Path,
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GREENLOOP_SERVER__HTTP_PORT": "0",  # a free port
        "GREENLOOP_SERVER__HTTP_HOST": "0.0.0.0",  # --dev listens on loopback whatever the config says
        "GREENLOOP_SERVER__API_TOKEN": "a-token-that-dev-mode-does-not-use-0123",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reconciler.cli", "run", "--dev",
        cwd=tmp_path, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    banner: list[str] = []
    try:
        url = None
        while url is None:
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line, f"exited early: {banner}"
            banner.append(line)
            found = re.search(r"listening on (http://[\d.]+:\d+)", line)
            url = found.group(1) if found else None
        text = "".join(banner)
        assert text.startswith("greenloop run --dev: DEVELOPMENT MODE")
        assert "loopback (127.0.0.1) only, with NO API token" in text
        assert "local fixture forge" in text and "scripted model" in text
        assert url.startswith("http://127.0.0.1:")
        found_dir = re.search(r"the store and the workspaces are in (\S+)", text)
        assert found_dir is not None, text
        work = Path(found_dir.group(1))
        assert await asyncio.to_thread(work.is_dir) and work.parent == tmp_path

        async with httpx2.AsyncClient(base_url=url, timeout=30, trust_env=False) as http:
            projects = (await http.get("/projects")).json()  # no Authorization header
            names = {p["name"] for p in projects["projects"]}
            assert {"bug-lib", "data-job", "clean"} <= names
            ends = time.monotonic() + 240
            statuses: list[str] = []
            while time.monotonic() < ends:
                r = await http.post("/debug/reconcile", json={})
                assert r.status_code == 200, r.text
                statuses = [a["status"] for a in (await http.get("/attempts")).json()["attempts"]]
                if any(s in ("pr_open", "verifying", "succeeded") for s in statuses):
                    break
                await asyncio.sleep(2)
            assert any(s in ("pr_open", "verifying", "succeeded") for s in statuses), statuses
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    assert not await asyncio.to_thread(work.exists)
