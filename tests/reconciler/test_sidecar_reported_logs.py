"""The MCP sidecar (`greenloop-mcp serve-http`) serves the log of a run reported from outside Actions, as the
in-process server does: `get_job_logs` reads it from the reconciler's store through the store's reader
(`--runs-db`, default the `--audit-db` URL), over streamable HTTP with a minted token."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from fixtures.forge import Forge, run_forge
from mcp_server.auth import mint_token
from mcp_server.session import Mode
from reconciler.store.engine import make_engine, make_sessionmaker
from reconciler.store.migrate import upgrade_async
from reconciler.store.projects import sync_projects
from reconciler.store.runs import record_reported_run

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "sidecar-runs-secret-" + "r" * 32
PROJECT = "cron-report"
RUN_ID = "20261203T020000Z-5e1f0c2a"
LOG = "Traceback (most recent call last):\nValueError: Invalid isoformat string: '01/11/2026'\n"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(forge: Forge, db_url: str, work: Path) -> str:
    s = forge.forge_settings()
    return "\n".join(
        [
            "[server]",
            f'database_url = "{db_url}"',
            f'workspace_dir = "{work / "workspaces"}"',
            "[forge]",
            f'api_url = "{s.api_url}"',
            f'git_url = "{s.git_url}"',
            f'app_id = "{s.app_id}"',
            f'installation_id = "{s.installation_id}"',
            f'private_key_path = "{s.private_key_path}"',
            "[[project]]",
            f'name = "{PROJECT}"',
            f'repo = "acme/{PROJECT}"',
            'jobs = ["nightly"]',
            "",
        ]
    )


async def _sidecar(config: Path, port: int, extra: list[str], log: Path) -> asyncio.subprocess.Process:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(config.parent),
        "PYTHONPATH": str(REPO_ROOT),
        "GREENLOOP_MCP_TOKEN_SECRET": SECRET,
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }
    argv = ["serve-http", "--config", str(config), "--port", str(port), *extra]
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reconciler.mcp_cli", *argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )
    ends = time.monotonic() + 90
    while time.monotonic() < ends:
        if proc.returncode is not None:
            raise RuntimeError(f"the sidecar exited: {await asyncio.to_thread(log.read_text)}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return proc
    proc.kill()
    await proc.wait()
    raise TimeoutError(f"the sidecar did not listen: {await asyncio.to_thread(log.read_text)}")


async def _get_logs(port: int) -> tuple[bool, str]:
    token = mint_token(SECRET, project=PROJECT, mode=Mode.READ_ONLY, ttl_seconds=300)
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30, trust_env=False)
    with anyio.fail_after(60):
        async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http)) as client:
            result = await client.call_tool("get_job_logs", {"run_id": RUN_ID, "job": "nightly"})
    text = "\n".join(getattr(block, "text", "") for block in result.content)
    return result.is_error, text + repr(result.structured_content)


@pytest.mark.timeout(300)
async def test_the_sidecar_serves_a_reported_runs_posted_log_from_the_store(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=[PROJECT]) as forge:
        db_url = f"sqlite+aiosqlite:///{tmp_path / 'greenloop.db'}"
        engine = make_engine(db_url)
        try:
            await upgrade_async(engine)
            sessions = make_sessionmaker(engine)
            await sync_projects(sessions, {PROJECT: f"acme/{PROJECT}"})
            await record_reported_run(
                sessions,
                project=PROJECT,
                job="nightly",
                run_id=RUN_ID,
                source="reported",
                status="completed",
                conclusion="failure",
                head_sha="a" * 40,
                event="schedule",
                created_at=datetime.now(UTC),
                log_text=LOG,
            )
        finally:
            await engine.dispose()
        config = tmp_path / "greenloop.toml"
        config.write_text(_toml(forge, db_url, tmp_path), encoding="utf-8")

        for extra, served in (([], False), (["--audit-db", db_url], True), (["--runs-db", db_url], True)):
            port = _free_port()
            proc = await _sidecar(config, port, extra, tmp_path / "mcp.log")
            try:
                is_error, text = await _get_logs(port)
            finally:
                proc.terminate()
                await proc.wait()
            if served:  # the posted log, excerpted like an Actions log
                assert not is_error, text
                assert "Invalid isoformat string: '01/11/2026'" in text
                assert RUN_ID in text
            else:  # without the store the sidecar knows only Actions: not found, never a guess
                assert is_error and "Not found" in text, text
