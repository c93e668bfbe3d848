"""`kill -9` of the MCP sidecar (`greenloop-mcp serve-http`) while an attempt uses it; then a restart.

The reconciler runs in sidecar mode (`server.mcp_url` + `server.mcp_token_secret`: each attempt gets its own
minted token, the sidecar writes the audit trail into the shared store). This is also the end-to-end test of
that mode: first data-job's attempt runs through the sidecar to a merged, verified fix; then bug-lib's
attempt loses its sidecar to SIGKILL after three tool calls, and a restart (new sidecar, new reconciler)
settles everything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from crash_support import APP_PERMISSIONS, REPO_ROOT, Zygote, check_store, count_rows, forge_refs, to_toml

from fixtures.forge import Forge, run_forge
from fixtures.projects.catalog import load_project
from policy.config import AgentSettings, GreenloopConfig, ServerSettings
from policy.types import AttemptStatus
from reconciler.store.engine import make_engine
from reconciler.store.migrate import upgrade_async

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SECRET = "crash-sidecar-secret-" + "s" * 32
PROJECT = "bug-lib"  # the attempt whose sidecar dies
CLEAN_RUN = "data-job"  # the attempt that runs through the sidecar undisturbed first


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(forge: Forge, work: Path, port: int, names: tuple[str, ...]) -> GreenloopConfig:
    return GreenloopConfig(
        server=ServerSettings(
            database_url=f"sqlite+aiosqlite:///{work / 'greenloop.db'}",
            workspace_dir=str(work / "workspaces"),
            attempt_timeout_seconds=2.0,
            mcp_url=f"http://127.0.0.1:{port}/mcp",
            mcp_token_secret=SECRET,
        ),
        forge=forge.forge_settings(),
        agent=AgentSettings(),
        projects=tuple(f.project_config() for f in map(load_project, names)),
    )


async def _sidecar(config_toml: Path, port: int, db_url: str, log: Path) -> asyncio.subprocess.Process:
    """`greenloop-mcp serve-http` in its own process, ready when its port accepts connections."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(config_toml.parent),
        "PYTHONPATH": str(REPO_ROOT),
        "GREENLOOP_MCP_TOKEN_SECRET": SECRET,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "LC_ALL": "C",
    }
    argv = ["serve-http", "--config", str(config_toml), "--port", str(port), "--mode", "agent", "--audit-db", db_url]
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
    raise TimeoutError(f"the sidecar did not listen on {port}: {await asyncio.to_thread(log.read_text)}")


@pytest.mark.timeout(600)
async def test_kill_9_of_the_mcp_sidecar_mid_attempt_ends_it_with_a_reason_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    projects = [CLEAN_RUN, PROJECT]
    async with run_forge(tmp_path / "forge", projects=projects, app_permissions=APP_PERMISSIONS) as forge:
        await forge.wait_idle(60)
        git_dir = forge.state.repo(*load_project(PROJECT).repo.split("/", 1)).git_dir  # type: ignore[union-attr]
        before = await forge_refs(git_dir)
        port = _free_port()
        config = _config(forge, tmp_path, port, (PROJECT,))
        both = _config(forge, tmp_path, port, (CLEAN_RUN, PROJECT))  # the sidecar serves both projects
        data = both.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        data["project"] = data.pop("projects")
        (tmp_path / "greenloop.toml").write_text(to_toml(data), encoding="utf-8")
        config_json = tmp_path / "greenloop.json"
        config_json.write_text(config.model_dump_json(), encoding="utf-8")
        clean_json = tmp_path / "clean.json"
        clean_json.write_text(_config(forge, tmp_path, port, (CLEAN_RUN,)).model_dump_json(), encoding="utf-8")
        db = tmp_path / "greenloop.db"
        engine = make_engine(config.server.database_url)
        try:
            await upgrade_async(engine)  # the sidecar writes audit rows into the store the reconciler reads
        finally:
            await engine.dispose()

        zygote = await Zygote.start(admin_token=forge.admin_token, home=tmp_path)
        sidecar = await _sidecar(tmp_path / "greenloop.toml", port, config.server.database_url, tmp_path / "mcp.log")
        try:
            clean = await zygote.spawn("start", clean_json, tmp_path / "clean.log")
            assert await clean.wait() == 0, (tmp_path / "clean.log").read_text()[-3000:]
            await forge.wait_idle(60)
            settled = await zygote.spawn("settle", clean_json, tmp_path / "clean.log")
            assert await settled.wait() == 0, (tmp_path / "clean.log").read_text()[-3000:]
            first = check_store(db, secrets=[SECRET])
            assert [(a["project"], a["status"]) for a in first.attempts] == [(CLEAN_RUN, "succeeded")], first.attempts
            # The agent's eight tool calls over MCP, then the reconciler's merge on green checks through the
            # sidecar's operator route (the reconciler holds no key and no write-scoped token), audited alike.
            tool_calls = [c for c in first.calls if c["client"].startswith("http")]
            operator_calls = [(c["client"], c["tool"], c["outcome"]) for c in first.calls if c not in tool_calls]
            assert len(tool_calls) == 8, first.calls
            assert operator_calls == [("reconciler", "operator.merge_when_green", "ok")], first.calls
            clean_calls = len(first.calls)

            child = await zygote.spawn("start", config_json, tmp_path / "start.log")
            killed_at = None
            ends = time.monotonic() + 120
            waiter = asyncio.ensure_future(child.wait(150))
            while time.monotonic() < ends and not waiter.done():
                calls, _ = await asyncio.to_thread(count_rows, db)
                # Mid-attempt: its logs and two reads done, nothing written yet.
                if calls >= clean_calls + 3 and killed_at is None:
                    sidecar.send_signal(signal.SIGKILL)
                    await sidecar.wait()
                    killed_at = calls
                await asyncio.sleep(0.02)
            code = await waiter
            start_log = (tmp_path / "start.log").read_text()
            assert killed_at is not None, f"the attempt ended before the kill point: {start_log[-2000:]}"
            assert sidecar.returncode == -signal.SIGKILL
            assert code == 0, start_log[-3000:]

            sidecar = await _sidecar(
                tmp_path / "greenloop.toml", port, config.server.database_url, tmp_path / "mcp.log"
            )
            restart = await zygote.spawn("settle", config_json, tmp_path / "settle.log")
            assert await restart.wait() == 0, (tmp_path / "settle.log").read_text()[-3000:]
            await forge.wait_idle(60)
        finally:
            if sidecar.returncode is None:
                sidecar.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(sidecar.wait(), 20)
                except TimeoutError:
                    sidecar.kill()
                    await sidecar.wait()
            await zygote.aclose()

        private_key = await asyncio.to_thread(Path(forge.private_key_path).read_text)
        snap = check_store(db, secrets=[forge.admin_token, private_key, SECRET, *forge.auth._tokens])
        assert not snap.problems, json.dumps(snap.problems, indent=1)
        assert [a["project"] for a in snap.attempts] == [CLEAN_RUN, PROJECT], snap.attempts
        attempt = snap.attempts[1]
        reasons = [t["reason"] for t in snap.transitions if t["attempt_id"] == attempt["id"]]
        assert attempt["status"] in (AttemptStatus.FAILED.value, AttemptStatus.SUCCEEDED.value), (attempt, reasons)
        if attempt["status"] == AttemptStatus.FAILED.value:
            assert attempt["stop_reason"], attempt
        assert len([c for c in snap.calls if c["attempt_id"] == attempt["id"]]) >= 3
        assert all(c["client"].startswith("http") or c["tool"].startswith("operator.") for c in snap.calls), {
            c["client"] for c in snap.calls
        }

        repo = forge.state.repo(*load_project(PROJECT).repo.split("/", 1))
        assert repo is not None
        per_head = Counter(p.head_ref for p in repo.pulls.values())
        assert all(n == 1 for n in per_head.values()), per_head
        after = await forge_refs(git_dir)
        moved = {r for r in set(before) | set(after) if before.get(r) != after.get(r)}
        merged = {p.merge_commit_sha for p in repo.pulls.values() if p.merged}
        unexpected = {
            r
            for r in moved
            if not (r == f"refs/heads/{attempt['branch']}" or r.startswith("refs/pull/"))
            and not (r == "refs/heads/main" and after.get(r) in merged)
        }
        assert not unexpected, (unexpected, attempt)
        print(
            f"\ncrash(sidecar): 1 clean attempt succeeded; 1 kill after {killed_at - clean_calls} audit rows, "
            f"attempt {attempt['status']}"
            f"({attempt['stop_reason'] or '-'}), {len(snap.calls)} audit rows, duplicates 0, lost 0; "
            f"transitions {reasons}"
        )
