"""The stdio server's lean loop (`mcp_server.stdio_lean`), seen on the wire: `greenloop-mcp` as a subprocess.

With stdin and stdout on pipes the lean loop answers `tools/call`, `tools/list` and `ping`; with stdout on a file
the SDK's own stdio transport serves everything. The same lines give the same answers, byte for byte, and the
same audit events, in both protocol eras; and the lean loop answers pipelined calls, drops a call the client
cancelled, and leaves the opening request, `initialize`, malformed lines and unknown methods to the SDK.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.to_thread
import pytest
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, PROTOCOL_VERSION_META_KEY
from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION
from server_support import config_text

from fixtures.forge import run_forge

WAIT_SECONDS = 90.0  # per answer; the first call clones the repository, and the machine may be loaded
ENVELOPE = {
    PROTOCOL_VERSION_META_KEY: LATEST_MODERN_VERSION,
    CLIENT_INFO_META_KEY: {"name": "wire-test", "version": "1"},
    CLIENT_CAPABILITIES_META_KEY: {},
}


def _greenloop_mcp() -> str:
    found = shutil.which("greenloop-mcp", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the greenloop-mcp console script is not installed (pip install -e .)")
    return found


def request(request_id: int, method: str, params: dict[str, Any] | None = None, *, modern: bool = True) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None or modern:
        body["params"] = {**(params or {}), **({"_meta": ENVELOPE} if modern else {})}
    return json.dumps(body).encode()


def call(request_id: int, tool: str, arguments: dict[str, Any], *, modern: bool = True) -> bytes:
    return request(request_id, "tools/call", {"name": tool, "arguments": arguments}, modern=modern)


def notification(method: str, params: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        body["params"] = params
    return json.dumps(body).encode()


class Server:
    """`greenloop-mcp` on stdin (a pipe) and stdout (a pipe: the lean loop; a file: the SDK's transport)."""

    def __init__(self, proc: subprocess.Popen[bytes], out_path: Path | None) -> None:
        self.proc = proc
        self._out_path = out_path
        self._lines: list[bytes] = []
        if proc.stdout is not None:
            threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stream: BinaryIO) -> None:
        for line in stream:
            self._lines.append(line)

    def lines(self) -> list[bytes]:
        """Every line written to stdout so far."""
        if self._out_path is not None:
            return self._out_path.read_bytes().splitlines(keepends=True)
        return list(self._lines)

    def send(self, *lines: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(line + b"\n" for line in lines))
        self.proc.stdin.flush()

    def answer(self, request_id: int) -> bytes:
        """The line answering `request_id`, waiting for it."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.endswith(b"\n") and json.loads(line).get("id") == request_id:
                    return line
            time.sleep(0.01)
        pytest.fail(f"no answer to request {request_id} within {WAIT_SECONDS:g} s")

    def answers(self, request_id: int) -> list[bytes]:
        return [line for line in self.lines() if line.endswith(b"\n") and json.loads(line).get("id") == request_id]


@contextmanager
def serving(config: Path, *, lean: bool) -> Iterator[Server]:
    out_path = None if lean else config.parent / "stdout-sdk.jsonl"
    err_path = config.parent / f"stderr-{'lean' if lean else 'sdk'}.log"
    with err_path.open("wb") as err, out_path.open("wb") if out_path is not None else err as out_file:
        proc = subprocess.Popen(
            [_greenloop_mcp(), "--config", str(config), "--project", "bug-lib"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if lean else out_file,
            stderr=err,
            cwd=config.parent,
        )
        try:
            yield Server(proc, out_path)
        finally:
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung server fails the test below
                proc.kill()
                proc.wait()


def exchange(config: Path, script: Sequence[bytes], *, lean: bool) -> tuple[list[bytes], list[dict[str, Any]]]:
    """Send `script` one line at a time (waiting for each request's answer); the answers, and the audit events
    on stderr without their times."""
    with serving(config, lean=lean) as server:
        answers: list[bytes] = []
        for line in script:
            server.send(line)
            request_id = json.loads(line).get("id") if line.startswith(b"{") else None
            if request_id is not None:
                answers.append(server.answer(request_id))
    err = (config.parent / f"stderr-{'lean' if lean else 'sdk'}.log").read_text(encoding="utf-8")
    events = [json.loads(line) for line in err.splitlines() if '"event":"mcp_tool_call"' in line]
    for event in events:
        for varying in ("ts", "duration_ms", "created_at"):
            event.pop(varying, None)
    return answers, events


MODERN_SCRIPT = [
    request(1, "server/discover"),  # the opening request: the SDK decides the era
    request(2, "tools/list"),
    request(3, "tools/list"),  # the SDK's first answer, given again
    call(4, "read_repo_file", {"path": "pager/__init__.py"}),
    call(5, "list_repo_files", {"under": "tests"}),
    call(6, "read_repo_file", {"path": "../greenloop.toml"}),  # refused by the path wall: an isError result
    call(7, "read_repo_file", {"path": 3}),  # outside the schema: the SDK's own answer
    call(8, "read_repo_file", {"path": "x", "repo": "acme/other"}),  # an undeclared argument: refused
    call(9, "no_such_tool", {}),
    call(10, "read_repo_file", {"path": "pager/pagination.py", "start_line": 2, "max_lines": 3}),
    request(11, "ping"),  # not a method at 2026-07-28: the SDK's error
    request(12, "no/such/method"),
    b"this is not json",  # dropped, as the SDK's transport does
    call(13, "read_repo_file", {"path": "missing.py"}),
    call(14, "list_repo_files", {"glob": "**/*.py", "limit": 2}),
    notification("notifications/cancelled", {"requestId": 999}),
    request(15, "initialize", {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {}}, modern=False),
    call(16, "read_repo_file", {"path": "pager/__init__.py"}, modern=False),  # no envelope on a modern connection
]

LEGACY_SCRIPT = [
    request(
        1,
        "initialize",
        {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "legacy-test", "version": "1"},
        },
        modern=False,
    ),
    notification("notifications/initialized"),
    request(2, "ping", modern=False),
    request(3, "ping", modern=False),
    request(4, "tools/list", modern=False),
    request(5, "tools/list", modern=False),
    call(6, "read_repo_file", {"path": "pager/__init__.py"}, modern=False),
    call(7, "list_repo_files", {"under": "pager"}, modern=False),
    call(8, "read_repo_file", {"path": ".git/config"}, modern=False),
    call(9, "read_repo_file", {"path": "x", "start_line": 0}, modern=False),
    call(10, "read_repo_file", {"path": "pager/__init__.py"}),  # an envelope on a legacy connection
    request(11, "no/such/method", modern=False),
]


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Path]:
    """A greenloop.toml for bug-lib on the local forge, which runs in a thread's event loop for as long as the
    test drives the server subprocesses (the test itself blocks on them)."""
    ready, stop = threading.Event(), threading.Event()

    async def run() -> None:
        async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
            path = tmp_path / "greenloop.toml"
            path.write_text(config_text(forge, tmp_path / "ws", {"bug-lib": "propose"}), encoding="utf-8")
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(run,), daemon=True)
    thread.start()
    assert ready.wait(60), "the local forge did not start"
    try:
        yield tmp_path / "greenloop.toml"
    finally:
        stop.set()
        thread.join(30)


@pytest.mark.parametrize("script", [MODERN_SCRIPT, LEGACY_SCRIPT], ids=["modern", "legacy"])
def test_the_lean_loop_answers_as_the_sdk_does_byte_for_byte(config: Path, script: list[bytes]) -> None:
    lean_answers, lean_events = exchange(config, script, lean=True)
    sdk_answers, sdk_events = exchange(config, script, lean=False)
    assert lean_answers == sdk_answers
    assert lean_events == sdk_events
    # What the script covers: results, isError results, the SDK's errors.
    by_id = {json.loads(a)["id"]: json.loads(a) for a in lean_answers}
    assert all("result" in by_id[i] or "error" in by_id[i] for i in by_id)
    assert len(lean_events) >= 4


def test_the_lean_loop_shows_the_path_wall_and_the_audit(config: Path) -> None:
    answers, events = exchange(config, MODERN_SCRIPT, lean=True)
    by_id = {json.loads(a)["id"]: json.loads(a) for a in answers}
    assert by_id[4]["result"]["isError"] is False
    assert by_id[4]["result"]["structuredContent"]["path"] == "pager/__init__.py"
    refused = by_id[6]["result"]
    assert refused["isError"] is True and "Access denied" in refused["content"][0]["text"]
    assert by_id[7]["result"]["isError"] is True  # the SDK's validation message
    assert "takes no argument 'repo'" in by_id[8]["result"]["content"][0]["text"]
    assert by_id[9]["result"]["content"][0]["text"] == "Unknown tool: no_such_tool"
    assert by_id[11]["error"]["code"] == -32601 and by_id[12]["error"]["code"] == -32601
    assert by_id[2]["result"] == by_id[3]["result"]
    outcomes = {(e["tool"], e["arguments"].get("path")): e["outcome"] for e in events}
    assert outcomes[("read_repo_file", "pager/__init__.py")] == "ok"
    assert outcomes[("read_repo_file", "../greenloop.toml")] == "refused"
    assert {"project", "client", "tool", "arguments", "outcome", "message", "result_bytes"} <= events[0].keys()
    assert events[0]["client"] == "stdio/wire-test"


def test_pipelined_calls_are_all_answered_and_a_cancelled_one_is_not(config: Path) -> None:
    with serving(config, lean=True) as server:
        server.send(request(1, "server/discover"))
        server.answer(1)
        server.send(call(2, "read_repo_file", {"path": "pager/__init__.py"}))  # clones the repository
        server.answer(2)
        # Several calls in one write: each runs in its own task and each is answered.
        server.send(*(call(10 + i, "read_repo_file", {"path": "pager/pagination.py"}) for i in range(5)))
        assert {json.loads(server.answer(10 + i))["id"] for i in range(5)} == {10, 11, 12, 13, 14}
        # A call cancelled in the same write as it is sent is stopped and never answered; the server goes on.
        server.send(
            call(20, "list_repo_files", {}),
            notification("notifications/cancelled", {"requestId": 20, "reason": "test"}),
            call(21, "list_repo_files", {"under": "pager"}),
        )
        assert json.loads(server.answer(21))["result"]["isError"] is False
        assert server.answers(20) == []
