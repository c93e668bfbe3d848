"""One session can't stall another (issue 12): over streamable HTTP, with two projects on one server, the
worst-case call of session A runs while session B's `get_project_info` answers; a call past its deadline is
stopped with a clear refusal and the server goes on serving."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from server_support import Harness, harness, loopback_server, result_text
from starlette.applications import Starlette

from fixtures.forge import run_forge
from mcp_server import workspace
from mcp_server.auth import mint_token
from mcp_server.cli import http_app
from mcp_server.session import Mode

pytestmark = pytest.mark.anyio

SECRET = "responsive-test-secret-" + "x" * 32
DEADLINE_S = 3.0


@dataclass
class Served:
    url: str
    h: Harness


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with run_forge(tmp_path / "forge", projects=["bug-lib", "stale-import"]) as forge:
        h = harness(forge, tmp_path, {"bug-lib": "propose", "stale-import": "propose"})

        def app(port: int) -> Starlette:
            return http_app(
                h.factory,
                mode=Mode.AGENT,
                secret=SECRET,
                projects=["bug-lib", "stale-import"],
                host="127.0.0.1",
                port=port,
                call_deadline_seconds=DEADLINE_S,
            )

        async with loopback_server(app) as port:
            yield Served(url=f"http://127.0.0.1:{port}/mcp", h=h)


def _client(url: str, token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60, trust_env=False)
    return Client(streamable_http_client(url, http_client=http))


def _agent_a(served: Served) -> Client:
    token = mint_token(SECRET, project="bug-lib", attempt_id="slow0001", job="test", mode=Mode.AGENT, ttl_seconds=300)
    return _client(served.url, token)


def _reader_b(served: Served) -> Client:
    return _client(served.url, mint_token(SECRET, project="stale-import", mode=Mode.READ_ONLY, ttl_seconds=300))


async def _project_info(client: Client) -> dict[str, Any]:
    got = await client.call_tool("get_project_info", {})
    assert not got.is_error, result_text(got)
    assert got.structured_content is not None
    return got.structured_content


async def test_the_worst_case_glob_answers_and_another_project_is_served_meanwhile(served: Served) -> None:
    # The attack: a long repetitive name on the fix branch, then a backtracking-hostile glob. The old
    # matcher spent minutes on the event loop here, and every other session waited.
    with anyio.fail_after(120):
        async with _agent_a(served) as a, _reader_b(served) as b:
            assert (await _project_info(b))["name"] == "stale-import"  # B's session is ready (cloned)
            assert not (await a.call_tool("create_branch", {})).is_error
            wrote = await a.call_tool("write_repo_file", {"path": "a" * 40, "content": "x\n"})
            assert not wrote.is_error, result_text(wrote)
            done: list[str] = []

            async def worst() -> None:
                got = await a.call_tool("list_repo_files", {"glob": "*a" * 14 + "*b"})
                assert not got.is_error, result_text(got)
                assert got.structured_content is not None and got.structured_content["files"] == []
                done.append("A")

            async def other() -> None:
                assert (await _project_info(b))["name"] == "stale-import"
                done.append("B")

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(worst)
                    tg.start_soon(other)
            assert sorted(done) == ["A", "B"]
            matched = await a.call_tool("list_repo_files", {"glob": "*a" * 14 + "*"})
            assert matched.structured_content is not None and "a" * 40 in matched.structured_content["files"]


async def test_a_call_past_its_deadline_is_refused_and_other_sessions_answer_meanwhile(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Heavy work of A's listing (here: held until B has been answered, at most a few deadlines) must run off
    # the event loop: B's call answers while it runs, and A gets a clear refusal at its deadline.
    released = threading.Event()
    real: Callable[..., list[str]] = workspace._select_listed

    def held(*args: Any) -> list[str]:
        released.wait(timeout=4 * DEADLINE_S)
        return real(*args)

    with anyio.fail_after(120):
        async with _agent_a(served) as a, _reader_b(served) as b:
            await _project_info(a)
            await _project_info(b)
            monkeypatch.setattr(workspace, "_select_listed", held)
            order: list[str] = []

            async def slow() -> None:
                got = await a.call_tool("list_repo_files", {})
                order.append("A")
                assert got.is_error
                text = result_text(got)
                assert "Took too long: list_repo_files was stopped after its 3 s limit" in text, text

            async def fast() -> None:
                await anyio.sleep(0.2)  # A's call is under way
                assert (await _project_info(b))["name"] == "stale-import"
                order.append("B")

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                tg.start_soon(fast)
            released.set()
            assert order == ["B", "A"]
            monkeypatch.undo()
            # The server, and A's own session, go on serving after the refusal.
            assert (await _project_info(a))["name"] == "bug-lib"
            listed = await a.call_tool("list_repo_files", {})
            assert not listed.is_error, result_text(listed)
    events = [(e.tool, e.outcome) for e in served.h.audit.events if e.attempt_id == "slow0001"]
    assert ("list_repo_files", "refused") in events
