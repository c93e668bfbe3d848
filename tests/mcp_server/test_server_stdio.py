"""`greenloop-mcp` as a subprocess over stdio, driven by the SDK's stdio client, against the local forge."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from server_support import config_text, result_text

from fixtures.forge import run_forge
from mcp_server.server import READ_TOOLS

pytestmark = pytest.mark.anyio


DOC = Path(__file__).resolve().parents[2] / "docs" / "claude-desktop.md"


def claude_desktop_entry() -> dict[str, Any]:
    """The server entry of the `claude_desktop_config.json` snippet in docs/claude-desktop.md."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("```json", 1)[1].split("```", 1)[0]
    servers: dict[str, dict[str, Any]] = json.loads(block)["mcpServers"]
    (entry,) = servers.values()
    return entry


def greenloop_mcp() -> str:
    """The installed console script next to this interpreter."""
    found = shutil.which("greenloop-mcp", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("the greenloop-mcp console script is not installed (pip install -e .)")
    return found


async def test_stdio_server_serves_the_read_tools_of_one_project(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        config = tmp_path / "greenloop.toml"
        config.write_text(config_text(forge, tmp_path / "workspaces", {"bug-lib": "auto_merge"}), encoding="utf-8")
        # The documented Claude Desktop entry, with this machine's paths and the fixture project.
        entry = claude_desktop_entry()
        args = [str(config) if a == "/etc/greenloop/greenloop.toml" else a for a in entry["args"]]
        args = ["bug-lib" if a == "billing" else a for a in args]
        params = StdioServerParameters(command=greenloop_mcp(), args=args, cwd=str(tmp_path))
        stderr_path = tmp_path / "stderr.log"
        with stderr_path.open("w", encoding="utf-8") as errlog, anyio.fail_after(90):
            async with Client(stdio_client(params, errlog=errlog)) as client:
                tools = await client.list_tools()
                assert sorted(t.name for t in tools.tools) == sorted(READ_TOOLS)
                page = await client.call_tool("read_repo_file", {"path": "pager/pagination.py", "max_lines": 2})
                assert not page.is_error, result_text(page)
                assert page.structured_content is not None and page.structured_content["end_line"] == 2
                refused = await client.call_tool("read_repo_file", {"path": "../../greenloop.toml"})
                assert refused.is_error and "private_key_path" not in result_text(refused)
                write = await client.call_tool("write_repo_file", {"path": "x", "content": "y"})
                assert write.is_error and "Unknown tool" in result_text(write)
    # One JSON audit line per call on stderr; stdout carried only MCP messages (or the client would have failed).
    lines = [json.loads(line) for line in stderr_path.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
    audit = [line for line in lines if "mcp_tool_call" in line.get("event", "")]
    assert len(audit) == 3
    assert "ghs_" not in stderr_path.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--project", "nope"], "unknown project", id="unknown-project"),
        pytest.param(["--project", "bug-lib", "--mode", "agent"], "agent mode", id="agent-without-attempt"),
        pytest.param(
            ["--project", "bug-lib", "--mode", "agent", "--attempt", "X;rm", "--job", "test"], "attempt id", id="bad-id"
        ),
    ],
)
async def test_cli_refuses_a_bad_binding_before_serving(tmp_path: Path, args: list[str], message: str) -> None:
    config = tmp_path / "greenloop.toml"
    config.write_text('[[project]]\nname = "bug-lib"\nrepo = "acme/bug-lib"\n', encoding="utf-8")
    with anyio.fail_after(60):
        done = await anyio.run_process([greenloop_mcp(), "--config", str(config), *args], check=False)
    assert done.returncode == 2
    assert message in done.stderr.decode()
    assert done.stdout == b""


def test_claude_desktop_snippet_is_a_read_only_stdio_server() -> None:
    from mcp_server.cli import build_parser

    entry = claude_desktop_entry()
    assert Path(entry["command"]).name == "greenloop-mcp" and Path(entry["command"]).is_absolute()
    args = build_parser()[0].parse_args(entry["args"])
    assert (args.mode, args.project, args.attempt) == ("read-only", "billing", None)
    assert Path(args.config).is_absolute()


def test_cli_and_auth_read_the_token_secret_from_the_same_variable() -> None:
    from mcp_server import auth, cli

    assert cli.TOKEN_SECRET_ENV == auth.TOKEN_SECRET_ENV
