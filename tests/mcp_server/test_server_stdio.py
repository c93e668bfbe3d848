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
from server_support import result_text

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


def personal_config_text(forge_api: str, forge_git: str, projects: dict[str, str]) -> str:
    """A person's greenloop.toml: the forge and the projects, no GitHub App (no key path)."""
    lines = ["[forge]", f'api_url = "{forge_api}"', f'git_url = "{forge_git}"', "timeout_seconds = 30"]
    for name, repo in projects.items():
        lines += ["[[project]]", f'name = "{name}"', f'repo = "{repo}"', 'jobs = ["test"]']
    return "\n".join(lines) + "\n"


async def test_claude_desktop_path_reads_with_a_personal_token_and_refuses_writes(tmp_path: Path) -> None:
    async with run_forge(tmp_path / "forge", projects=["bug-lib", "stale-import"]) as forge:
        # A person's fine-grained, read-only token for bug-lib only (not the App's; no key on the laptop).
        record = forge.auth.issue_personal_token(
            forge.state.account("mona"),
            permissions={"contents": "read", "actions": "read", "pull_requests": "read"},
            repositories=frozenset({"acme/bug-lib"}),
        )
        config = tmp_path / "greenloop.toml"
        projects = {"bug-lib": "acme/bug-lib", "other": "acme/stale-import"}
        config.write_text(personal_config_text(forge.api_url, forge.git_url, projects), encoding="utf-8")
        # The documented Claude Desktop entry, with this machine's paths, the fixture project and the token.
        entry = claude_desktop_entry()
        args = [str(config) if a == "/Users/you/greenloop/greenloop.toml" else a for a in entry["args"]]
        args = ["bug-lib" if a == "billing" else a for a in args]
        env = {"PATH": "/usr/bin:/bin", **{k: record.token for k in entry["env"]}}
        params = StdioServerParameters(command=greenloop_mcp(), args=args, cwd=str(tmp_path), env=env)
        stderr_path = tmp_path / "stderr.log"
        with stderr_path.open("w", encoding="utf-8") as errlog, anyio.fail_after(90):
            async with Client(stdio_client(params, errlog=errlog)) as client:
                tools = await client.list_tools()
                assert sorted(t.name for t in tools.tools) == sorted(READ_TOOLS)
                page = await client.call_tool("read_repo_file", {"path": "pager/pagination.py", "max_lines": 2})
                assert not page.is_error, result_text(page)
                assert page.structured_content is not None and page.structured_content["end_line"] == 2
                runs = await client.call_tool("list_job_runs", {})
                assert not runs.is_error, result_text(runs)
                refused = await client.call_tool("read_repo_file", {"path": "../../greenloop.toml"})
                assert refused.is_error
                write = await client.call_tool("write_repo_file", {"path": "x", "content": "y"})
                assert write.is_error and "Unknown tool" in result_text(write)
            # The forge judged every request as the person, never as the App.
            logins = {r["login"] for r in forge.stats.log if not str(r["path"]).startswith("/_forge")}
            assert logins == {"mona"}, logins
            # A project the person's token does not cover: the forge answers as GitHub does, not found.
            other_args = ["other" if a == "bug-lib" else a for a in args]
            params = StdioServerParameters(command=greenloop_mcp(), args=other_args, cwd=str(tmp_path), env=env)
            async with Client(stdio_client(params, errlog=errlog)) as client:
                hidden = await client.call_tool("list_job_runs", {})
                assert hidden.is_error and "not found" in result_text(hidden).lower(), result_text(hidden)
    # One JSON audit line per call on stderr; stdout carried only MCP messages (or the client would have failed).
    text = stderr_path.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    audit = [line for line in lines if "mcp_tool_call" in line.get("event", "")]
    assert len(audit) == 5
    assert record.token not in text and "ghs_" not in text


async def test_a_personal_token_refuses_agent_mode_and_needs_its_variable(tmp_path: Path) -> None:
    config = tmp_path / "greenloop.toml"
    config.write_text(personal_config_text("http://127.0.0.1:9", "http://127.0.0.1:9", {"bug-lib": "acme/bug-lib"}))
    base = [greenloop_mcp(), "--config", str(config), "--project", "bug-lib"]
    agent = [*base, "--mode", "agent", "--attempt", "a1b2c3", "--job", "test", "--token-env", "MY_TOKEN"]
    with anyio.fail_after(60):
        refused = await anyio.run_process(agent, check=False, env={"PATH": "/usr/bin:/bin", "MY_TOKEN": "github_pat_x"})
        unset = await anyio.run_process(base, check=False, env={"PATH": "/usr/bin:/bin"})
    assert refused.returncode == 2 and "read-only sessions only" in refused.stderr.decode()
    assert unset.returncode == 2 and "GITHUB_TOKEN" in unset.stderr.decode()


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
    assert (args.mode, args.project, args.attempt, args.token_env) == ("read-only", "billing", None, "GITHUB_TOKEN")
    assert set(entry["env"]) == {"GITHUB_TOKEN"}
    assert Path(args.config).is_absolute()


def test_cli_and_auth_read_the_token_secret_from_the_same_variable() -> None:
    from mcp_server import auth, cli

    assert cli.TOKEN_SECRET_ENV == auth.TOKEN_SECRET_ENV
