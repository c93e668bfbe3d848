"""What the MCP server says about itself: its version at initialize, and its audit lines on stderr."""

from __future__ import annotations

import io
import json
import logging
from importlib.metadata import version
from typing import Any

import pytest
from mcp.client import Client

from infra.jsonlog import JsonFormatter, bind_context
from mcp_server.audit import AuditEvent, JsonLogAuditSink
from mcp_server.server import build_server
from mcp_server.session import Mode, SessionGrant

pytestmark = pytest.mark.anyio


def _no_binding(grant: SessionGrant) -> Any:
    raise AssertionError("initialize needs no binding")


async def test_server_info_carries_the_package_version() -> None:
    server = build_server(_no_binding, mode=Mode.READ_ONLY, grant=SessionGrant(project="p", mode=Mode.READ_ONLY))
    async with Client(server) as client:
        info = client.server_info
    assert info.version == version("greenloop") != ""


async def _audit_lines(event: AuditEvent) -> list[str]:
    """The lines JsonLogAuditSink writes for `event` through the JSON formatter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.mcp.audit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        await JsonLogAuditSink(logger).record(event)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue().splitlines()


async def test_the_audit_line_is_one_json_object_not_json_in_a_string() -> None:
    event = AuditEvent(
        project="p",
        client="cli",
        tool="read_repo_file",
        arguments={"path": "src/a.py"},
        outcome="ok",
        message=None,
        result_bytes=12,
        duration_ms=1.5,
        attempt_id="abc",
    )
    lines = await _audit_lines(event)
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["event"] == "mcp_tool_call"
    assert (line["tool"], line["outcome"], line["arguments"], line["attempt_id"]) == (
        "read_repo_file",
        "ok",
        {"path": "src/a.py"},
        "abc",
    )
    assert '\\"' not in lines[0]  # nothing was escaped twice


async def test_the_audit_line_keeps_its_redacted_fields_and_masks_the_rest() -> None:
    # Issue 20: the event's fields are redacted once, as it is built; the formatter masks only the rest.
    token = "ghp_" + "R" * 36
    event = AuditEvent(
        project="p",
        client="cli",
        tool="read_repo_file",
        arguments={"path": "a/[REDACTED:github_token]"},
        outcome="refused",
        message="Not found: 'password=[REDACTED:secret]'",
        result_bytes=3,
        duration_ms=1.0,
    )
    with bind_context(trace=f"Bearer {token}"):
        lines = await _audit_lines(event)
    assert token not in lines[0]  # the context, not built by the event, is masked here
    line = json.loads(lines[0])
    assert line["message"] == event.message and line["arguments"] == dict(event.arguments)
