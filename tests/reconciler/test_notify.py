"""reconciler.notify: a Slack-compatible webhook post that never raises, against real loopback receivers."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from reconciler.notify import build_payload, notify

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Run `app` with uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 (uvicorn exposes a flag, not an event)
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def silent_server() -> AsyncIterator[str]:
    """A TCP server on loopback that reads the request and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await reader.read(65536)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


def _receiver(received: list[dict[str, Any]], status: int = 200) -> Starlette:
    async def hook(request: Request) -> Response:
        received.append({"body": json.loads(await request.body()), "content_type": request.headers["content-type"]})
        return PlainTextResponse("ok" if status == 200 else "no", status_code=status)

    return Starlette(routes=[Route("/services/T0/B0/secret", hook, methods=["POST"])])


def _events(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [
        (r.getMessage(), getattr(r, "greenloop_fields", {})) for r in caplog.records if r.name == "greenloop.notify"
    ]


async def test_succeeded_posts_text_and_blocks_to_the_webhook(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="greenloop.notify")
    received: list[dict[str, Any]] = []
    async with serve(_receiver(received)) as base:
        ok = await notify(
            f"{base}/services/T0/B0/secret",
            "succeeded",
            project="bug-lib",
            attempt_id="a1b2c3",
            pr_url="http://forge.local/acme/bug-lib/pull/7",
            summary_markdown="Fixed the *off-by-one* in `pager.pagination`.",
        )
    assert ok is True
    assert len(received) == 1
    body = received[0]["body"]
    assert received[0]["content_type"].startswith("application/json")
    assert "bug-lib" in body["text"] and "pull/7" in body["text"]
    kinds = [b["type"] for b in body["blocks"]]
    assert kinds == ["header", "section", "context"]
    assert "off-by-one" in body["blocks"][1]["text"]["text"]
    assert "a1b2c3" in body["blocks"][2]["elements"][0]["text"]
    events = _events(caplog)
    assert [e for e, _ in events] == ["notify_sent"]
    assert "secret" not in json.dumps(events[0][1])  # the webhook path is a credential


async def test_escalated_without_pr_says_a_human_is_needed() -> None:
    received: list[dict[str, Any]] = []
    async with serve(_receiver(received)) as base:
        ok = await notify(
            f"{base}/services/T0/B0/secret",
            "escalated",
            project="protected-workflow",
            attempt_id="dead01",
            pr_url=None,
            summary_markdown="The fix is in `.github/workflows/ci.yml`, which greenloop may not change.",
        )
    assert ok is True
    body = received[0]["body"]
    assert "needs a human" in body["text"]
    assert "pull request" not in body["blocks"][2]["elements"][0]["text"]


async def test_non_2xx_answer_returns_false_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="greenloop.notify")
    received: list[dict[str, Any]] = []
    async with serve(_receiver(received, status=500)) as base:
        ok = await notify(
            f"{base}/services/T0/B0/secret",
            "succeeded",
            project="p",
            attempt_id="x",
            pr_url=None,
            summary_markdown="s",
        )
    assert ok is False
    assert len(received) == 1
    event, fields = _events(caplog)[-1]
    assert event == "notify_failed"
    assert fields["status"] == 500


async def test_hanging_receiver_times_out_returns_false_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="greenloop.notify")
    async with silent_server() as base:
        t0 = time.perf_counter()
        ok = await notify(
            f"{base}/hook",
            "succeeded",
            project="p",
            attempt_id="x",
            pr_url=None,
            summary_markdown="s",
            timeout_seconds=0.5,
        )
        elapsed = time.perf_counter() - t0
    assert ok is False
    assert elapsed < 5
    event, fields = _events(caplog)[-1]
    assert event == "notify_failed"
    assert fields["reason"] == "timed out"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        pytest.param(None, "no webhook configured", id="not-configured"),
        pytest.param("", "no webhook configured", id="empty"),
        pytest.param("ftp://127.0.0.1/hook", "webhook URL is not http(s)", id="wrong-scheme"),
        pytest.param("file:///etc/passwd", "webhook URL is not http(s)", id="file-url"),
        pytest.param("http:///no-host", "webhook URL is not http(s)", id="no-host"),
        pytest.param("not a url", "webhook URL is not http(s)", id="garbage"),
        pytest.param("http://127.0.0.1:{port}/hook", "ConnectError", id="connection-refused"),
    ],
)
async def test_unusable_webhooks_return_false_without_raising(
    url: str | None, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="greenloop.notify")
    if url is not None:
        url = url.replace("{port}", str(_closed_port()))
    ok = await notify(url, "succeeded", project="p", attempt_id="x", pr_url=None, summary_markdown="s")
    assert ok is False
    event, fields = _events(caplog)[-1]
    assert event in ("notify_skipped", "notify_failed")
    assert fields["reason"] == reason


def test_payload_redacts_secrets_and_clips_long_summaries() -> None:
    token = "ghp_" + "A1b2C3d4" * 5
    payload = build_payload(
        "succeeded",
        project="p",
        attempt_id="x",
        pr_url="http://forge/pull/1",
        summary_markdown=f"log said token={token}\n" + "x" * 10_000,
    )
    section = payload["blocks"][1]["text"]["text"]
    assert token not in json.dumps(payload)
    assert len(section) <= 3000
    assert section.endswith("…")


async def test_receiver_sees_one_json_request_per_call() -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/h", hook, methods=["POST"])])
    async with serve(app) as base:
        results = [
            await notify(f"{base}/h", e, project="p", attempt_id=str(i), pr_url=None, summary_markdown="s")
            for i, e in enumerate(("succeeded", "escalated"))
        ]
    assert results == [True, True]
    assert [r["blocks"][2]["elements"][0]["text"].split("`")[1] for r in received] == ["0", "1"]
