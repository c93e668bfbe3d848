"""The lean GET client (`mcp_server.conditional_get`) under `ForgeClient`: against the real local forge (304s,
keep-alive reuse, timeouts, 401 refresh, rate-limit headers, lost replies), and against raw asyncio servers for
the HTTP framing the forge does not produce (chunked and gzip bodies, servers closing idle connections)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from mcp_server.conditional_get import ConditionalGetClient, LeanHTTPError
from mcp_server.errors import ForgeUnavailable
from mcp_server.forge import ForgeClient
from policy.config import ForgeSettings


@pytest.fixture
async def local_forge(tmp_path: Any) -> AsyncIterator[tuple[Any, Any, ForgeClient, list[float]]]:
    from fixtures.forge.server import run_forge
    from mcp_server.github_app import GitHubApp

    async with (
        run_forge(tmp_path / "forge", projects=["clean"], actions_enabled=False) as forge,
        GitHubApp.from_settings(forge.forge_settings()) as app,
    ):
        sleeps: list[float] = []

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)

        settings = ForgeSettings(api_url=forge.api_url, timeout_seconds=1.0)
        async with ForgeClient(settings, app, sleep=sleep) as client:
            yield forge, app, client, sleeps


def lean(client: ForgeClient) -> ConditionalGetClient:
    gets = client._gets
    assert gets is not None, "without an injected transport, API GETs go over the lean client"
    return gets


@pytest.mark.anyio
async def test_repeated_listing_is_one_304_a_time_over_one_kept_alive_connection(local_forge: Any) -> None:
    _, _, client, _ = local_forge
    first = await client.list_workflow_runs("acme/clean", branch="main")
    later = [await client.list_workflow_runs("acme/clean", branch="main") for _ in range(4)]
    assert not first.not_modified and all(page.not_modified for page in later)
    assert all(page.runs == first.runs for page in later)
    assert client.stats.requests == 5 and client.stats.not_modified == 4
    assert lean(client).connections_opened == 1 and lean(client).idle_connections == 1


@pytest.mark.anyio
async def test_rate_limit_headers_of_each_answer_are_tracked(local_forge: Any) -> None:
    _, _, client, _ = local_forge
    await client.get_repo("acme/clean")
    first = client.stats.rate_remaining
    await client.list_workflow_runs("acme/clean", branch="main")  # a 200: it costs one request
    spent = client.stats.rate_remaining
    await client.get_repo("acme/clean")  # a 304: GitHub does not charge it
    assert first is not None and spent == first - 1 and client.stats.rate_remaining == spent
    assert client.stats.rate_reset is not None and client.stats.rate_reset > 0


@pytest.mark.anyio
async def test_a_token_the_forge_expired_is_refreshed_once_and_the_get_succeeds(local_forge: Any) -> None:
    forge, app, client, _ = local_forge
    await client.get_repo("acme/clean")
    old = await app.token()
    assert forge.expire_token(old)
    repo = await client.get_repo("acme/clean")
    assert repo.full_name == "acme/clean"
    assert await app.token() != old
    assert old in app.secrets(), "the replaced token is still redacted"


@pytest.mark.anyio
async def test_an_answer_slower_than_the_timeout_is_retried_then_reported_as_timed_out(local_forge: Any) -> None:
    forge, _, client, sleeps = local_forge
    await client.get_repo("acme/clean")
    forge.faults.add(path_regex=r"^/repos/acme/clean$", kind="slow", delay=3.0, count=10)
    with pytest.raises(ForgeUnavailable, match="timed out"):
        await client.get_repo("acme/clean")
    assert client.stats.retries == 3 and len(sleeps) == 3
    forge.faults.clear()
    opened = lean(client).connections_opened
    assert (await client.get_repo("acme/clean")).full_name == "acme/clean"
    assert lean(client).connections_opened == opened + 1, "a timed-out connection is never reused"


@pytest.mark.parametrize("kind", ["drop", "reply_lost", "reply_cut"])
@pytest.mark.anyio
async def test_a_get_whose_connection_drops_is_retried_on_a_new_connection(local_forge: Any, kind: str) -> None:
    forge, _, client, _ = local_forge
    await client.get_repo("acme/clean")  # the connection is open and idle
    forge.faults.add(path_regex=r"^/repos/acme/clean/actions/runs$", kind=kind)
    page = await client.list_workflow_runs("acme/clean", branch="main")  # a 200, whose body is lost
    assert not page.not_modified and client.stats.requests == 2
    assert client.stats.retries <= 1  # a drop before any answer byte may be resent by the lean client itself
    assert lean(client).connections_opened == 2


# ---------------------------------------------------------------------------------------------- raw servers

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> str:
    return (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")


async def serve(handler: Handler) -> tuple[asyncio.Server, str, list[str]]:
    """A raw HTTP server on 127.0.0.1; returns it, its base URL and the list of requests it received."""
    seen: list[str] = []

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def recording(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        original = reader.readuntil

        async def readuntil(separator: bytes = b"\n") -> bytes:
            data = await original(separator)
            if separator == b"\r\n\r\n":
                seen.append(data.decode("latin-1"))
            return data

        reader.readuntil = readuntil  # type: ignore[method-assign,assignment]
        await on_connection(reader, writer)

    server = await asyncio.start_server(recording, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/api/v3", seen


def gets(base: str, timeout: float = 2.0) -> ConditionalGetClient:
    return ConditionalGetClient(base, headers={"Accept": "application/json"}, timeout=timeout)


@pytest.mark.anyio
async def test_chunked_and_gzip_bodies_are_decoded_and_the_request_carries_path_query_and_headers() -> None:
    body = gzip.compress(json.dumps({"ok": True, "n": list(range(50))}).encode())

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(0, len(body), 40):
                part = body[i : i + 40]
                writer.write(f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\nX-Trailer: t\r\n\r\n")

    server, base, seen = await serve(handler)
    client = gets(base)
    try:
        query: dict[str, str | int] = {"per_page": 30, "head": "a:x y"}
        first = await client.get("repos/a/b", params=query, headers={"If-None-Match": '"e"'})
        second = await client.get("repos/a/b")
    finally:
        await client.aclose()
        server.close()
    assert first.status_code == 200 and first.json() == {"ok": True, "n": list(range(50))}
    assert second.json() == first.json()
    assert seen[0].startswith("GET /api/v3/repos/a/b?per_page=30&head=a%3Ax+y HTTP/1.1\r\n")
    assert 'If-None-Match: "e"\r\n' in seen[0] and "Host: 127.0.0.1:" in seen[0] and "Accept-Encoding: gzip" in seen[0]
    assert client.connections_opened == 1, "the chunked answer was read to its end, so the connection was reused"


@pytest.mark.anyio
async def test_a_connection_the_server_closed_while_idle_is_replaced_without_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n')  # keep-alive, then closes anyway
        await writer.drain()

    server, base, seen = await serve(handler)
    client = gets(base)
    try:
        for _ in range(3):
            assert (await client.get("x")).status_code == 304
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
    finally:
        await client.aclose()
        server.close()
    assert len(seen) == 3 and client.connections_opened == 3


@pytest.mark.anyio
async def test_a_reused_connection_closed_as_the_request_leaves_is_sent_once_more_on_a_new_one() -> None:
    answered = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await read_request(reader)
        answered += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await read_request(reader)  # the next request on this connection is read, then dropped unanswered

    server, base, _ = await serve(handler)
    client = gets(base)
    try:
        assert (await client.get("x")).json() == {}
        assert (await client.get("x")).json() == {}
    finally:
        await client.aclose()
        server.close()
    assert answered == 2 and client.connections_opened == 2


@pytest.mark.anyio
async def test_connection_close_and_bytes_after_the_answer_keep_the_connection_out_of_the_pool() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if "/close" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n[1, 2]")  # body runs to the end
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 200 OK\r\n")  # out of step

    server, base, _ = await serve(handler)
    client = gets(base)
    try:
        assert (await client.get("close")).json() == [1, 2]
        assert client.idle_connections == 0
        assert (await client.get("stray")).json() == {}
        await asyncio.sleep(0.05)
        assert client.idle_connections == 0
    finally:
        await client.aclose()
        server.close()


@pytest.mark.anyio
async def test_timeouts_malformed_answers_and_header_injection_are_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if "/slow" in request:
            await asyncio.sleep(5)
        elif "/garbage" in request:
            writer.write(b"SMTP ready\r\n\r\n")
        elif "/short" in request:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")
            await writer.drain()

    server, base, _ = await serve(handler)
    client = gets(base, timeout=0.3)
    try:
        with pytest.raises(LeanHTTPError) as slow:
            await client.get("slow")
        assert slow.value.timeout
        with pytest.raises(LeanHTTPError, match="status line"):
            await client.get("garbage")
        with pytest.raises(LeanHTTPError, match="closed in the answer"):
            await client.get("short")
        with pytest.raises(ValueError, match="CR or LF"):
            await client.get("x", headers={"If-None-Match": '"e"\r\nAuthorization: Bearer stolen'})
        assert client.idle_connections == 0
    finally:
        await client.aclose()
        server.close()
    with pytest.raises(LeanHTTPError) as closed:
        await client.get("x")
    assert not closed.value.sent


@pytest.mark.anyio
async def test_nothing_listens_is_a_connect_error_that_was_never_sent() -> None:
    server, base, _ = await serve(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    client = gets(base)
    with pytest.raises(LeanHTTPError) as info:
        await client.get("x")
    assert not info.value.sent and not info.value.timeout


@pytest.mark.anyio
async def test_requests_beyond_max_connections_wait_for_a_slot() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            if "/slow" in request:
                await asyncio.sleep(0.6)
            writer.write(b'HTTP/1.1 304 Not Modified\r\nETag: "e"\r\n\r\n')
            await writer.drain()

    server, base, _ = await serve(handler)
    client = ConditionalGetClient(base, headers={}, timeout=0.4, max_connections=1)
    try:
        answers = await asyncio.gather(*(client.get(f"x{i}") for i in range(5)))
        assert [a.status_code for a in answers] == [304] * 5
        assert client.connections_opened == 1, "one slot: the requests took turns on one connection"
        slow = asyncio.create_task(client.get("slow"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(client.get("x"))  # waits for the only slot, which `slow` holds
        with pytest.raises(LeanHTTPError) as timed_out:
            await slow
        assert timed_out.value.timeout and timed_out.value.sent
        assert (await waiting).status_code == 304, "the slot passed on when the slow request timed out"
        assert (await client.get("x")).status_code == 304, "the slot of the timed-out request was freed"
    finally:
        await client.aclose()
        server.close()
