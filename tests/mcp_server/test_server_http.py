"""The MCP server over streamable HTTP (uvicorn on a loopback port): bearer tokens bind the session, and
requests without a valid token, or for another host, never reach a tool."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx2
import jwt
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from server_support import Harness, harness, loopback_server, result_text
from starlette.applications import Starlette

from fixtures.forge import run_forge
from mcp_server.auth import AUDIENCE, ISSUER, mint_token
from mcp_server.cli import http_app
from mcp_server.server import READ_TOOLS, TOOL_NAMES
from mcp_server.session import Mode

pytestmark = pytest.mark.anyio

SECRET = "http-test-secret-" + "x" * 32
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Served:
    url: str
    port: int
    h: Harness


@pytest.fixture
def idle_seconds() -> float:
    return 3600.0


@pytest.fixture
async def served(tmp_path: Path, idle_seconds: float) -> AsyncIterator[Served]:
    async with run_forge(tmp_path / "forge", projects=["bug-lib", "stale-import"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "auto_merge", "stale-import": "propose"})

        def app(port: int) -> Starlette:
            return http_app(
                h.factory,
                mode=Mode.AGENT,
                secret=SECRET,
                projects=["bug-lib"],
                host="127.0.0.1",
                port=port,
                idle_seconds=idle_seconds,
            )

        async with loopback_server(app) as port:
            yield Served(url=f"http://127.0.0.1:{port}/mcp", port=port, h=h)


def _client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30, trust_env=False)
    return Client(streamable_http_client(url, http_client=http))


async def test_agent_token_opens_a_session_bound_to_its_attempt(served: Served) -> None:
    token = mint_token(SECRET, project="bug-lib", attempt_id="http0001", job="test", mode=Mode.AGENT, ttl_seconds=300)
    with anyio.fail_after(60):
        async with _client(served.url, token) as client:
            tools = await client.list_tools()
            assert sorted(t.name for t in tools.tools) == sorted(TOOL_NAMES)
            info = await client.call_tool("get_project_info", {})
            assert not info.is_error, result_text(info)
            assert info.structured_content is not None
            assert (info.structured_content["attempt_id"], info.structured_content["mode"]) == ("http0001", "agent")
            branch = await client.call_tool("create_branch", {})
            assert not branch.is_error and branch.structured_content["branch"] == "greenloop/fix/test-http0001"
    assert [e.tool for e in served.h.audit.events] == ["get_project_info", "create_branch"]
    assert all(e.attempt_id == "http0001" and e.client.startswith("http") for e in served.h.audit.events)


async def test_read_only_token_on_an_agent_server_gets_only_the_read_tools(served: Served) -> None:
    token = mint_token(SECRET, project="bug-lib", mode=Mode.READ_ONLY, ttl_seconds=300)
    with anyio.fail_after(60):
        async with _client(served.url, token) as client:
            tools = await client.list_tools()
            assert sorted(t.name for t in tools.tools) == sorted(READ_TOOLS)
            refused = await client.call_tool("create_branch", {})
            assert refused.is_error and "read-only" in result_text(refused)
            info = await client.call_tool("get_project_info", {})
            assert not info.is_error and info.structured_content is not None
            assert info.structured_content["mode"] == "read-only"


@pytest.mark.parametrize("idle_seconds", [0.0])
async def test_idle_sessions_are_closed_when_another_session_starts(served: Served) -> None:
    first = mint_token(SECRET, project="bug-lib", attempt_id="idle0001", job="test", mode=Mode.AGENT, ttl_seconds=60)
    second = mint_token(SECRET, project="bug-lib", mode=Mode.READ_ONLY, ttl_seconds=60)
    with anyio.fail_after(60):
        async with _client(served.url, first) as client:
            assert not (await client.call_tool("get_project_info", {})).is_error
        assert served.h.closed == []
        async with _client(served.url, second) as client:
            assert not (await client.call_tool("get_project_info", {})).is_error
    assert [g.attempt_id for g in served.h.closed] == ["idle0001"]


def _expired() -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": "bug-lib", "project": "bug-lib", "mode": "agent",
        "attempt_id": "http0002", "job": "test", "iat": now - 600, "nbf": now - 600, "exp": now - 300, "jti": "x",
    }  # fmt: skip
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-token"),
        pytest.param("Bearer not-a-token", id="garbage-token"),
        pytest.param(lambda: "Bearer " + mint_token("w" * 40, project="bug-lib", ttl_seconds=60), id="bad-signature"),
        pytest.param(lambda: "Bearer " + _expired(), id="expired"),
        pytest.param(
            lambda: "Bearer " + mint_token(SECRET, project="stale-import", ttl_seconds=60), id="other-project"
        ),
        pytest.param(lambda: "Basic " + mint_token(SECRET, project="bug-lib", ttl_seconds=60), id="not-bearer"),
    ],
)
async def test_requests_without_a_valid_token_get_401(served: Served, authorization: object) -> None:
    headers = dict(HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization() if callable(authorization) else str(authorization)
    async with httpx2.AsyncClient(timeout=10, trust_env=False) as http:
        response = await http.post(served.url, json=INITIALIZE, headers=headers)
    assert response.status_code == 401
    assert served.h.bindings == [] and served.h.audit.events == []


async def test_a_valid_token_with_a_foreign_host_header_is_refused(served: Served) -> None:
    token = mint_token(SECRET, project="bug-lib", ttl_seconds=60)
    headers = {**HEADERS, "Authorization": f"Bearer {token}", "Host": "evil.example:80"}
    async with httpx2.AsyncClient(timeout=10, trust_env=False) as http:
        response = await http.post(served.url, json=INITIALIZE, headers=headers)
        assert response.status_code == 421
        headers = {**HEADERS, "Authorization": f"Bearer {token}", "Origin": "http://evil.example"}
        response = await http.post(served.url, json=INITIALIZE, headers=headers)
        assert response.status_code == 403
        # The control: the same request from an allowed host and origin is served.
        headers = {**HEADERS, "Authorization": f"Bearer {token}", "Origin": f"http://127.0.0.1:{served.port}"}
        response = await http.post(served.url, json=INITIALIZE, headers=headers)
        assert response.status_code == 200


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_serve_http_command_needs_a_token_and_serves_with_one(tmp_path: Path) -> None:
    command = shutil.which("greenloop-mcp", path=str(Path(sys.executable).parent))
    assert command is not None, "the greenloop-mcp console script is not installed (pip install -e .)"
    config = tmp_path / "greenloop.toml"
    config.write_text('[[project]]\nname = "bug-lib"\nrepo = "acme/bug-lib"\n', encoding="utf-8")
    args = [command, "serve-http", "--config", str(config), "--port"]

    weak = await anyio.run_process([*args, "8765"], check=False, env={**os.environ, "GREENLOOP_MCP_TOKEN_SECRET": "x"})
    assert weak.returncode == 2 and b"at least 32 bytes" in weak.stderr

    port = _free_port()
    env = {**os.environ, "GREENLOOP_MCP_TOKEN_SECRET": SECRET}
    errlog = (tmp_path / "stderr.log").open("wb")
    process = await anyio.open_process([*args, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=errlog)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        async with httpx2.AsyncClient(timeout=5, trust_env=False) as http:
            with anyio.fail_after(60):
                while True:
                    try:
                        response = await http.post(url, json=INITIALIZE, headers=HEADERS)
                        break
                    except httpx2.TransportError:
                        await anyio.sleep(0.2)
        assert response.status_code == 401
        token = mint_token(SECRET, project="bug-lib", ttl_seconds=60)
        with anyio.fail_after(60):
            async with _client(url, token) as client:
                tools = await client.list_tools()
        assert sorted(t.name for t in tools.tools) == sorted(READ_TOOLS)  # --mode defaults to read-only
    finally:
        process.terminate()
        with anyio.fail_after(30):
            await process.wait()
        errlog.close()
    announced = (tmp_path / "stderr.log").read_text(encoding="utf-8")
    assert f"greenloop-mcp: serving MCP over streamable HTTP at {url}\n" in announced  # where to connect
