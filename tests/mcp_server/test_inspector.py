"""The official MCP Inspector CLI drives `greenloop-mcp` over stdio: tools/list and a tools/call.

Needs node and npx; the Inspector is installed once into an npm cache (`$GREENLOOP_NPM_CACHE`, default
`~/.cache/greenloop/npm`). Skipped, with the reason, when node/npx is missing or the package can't be
installed.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from server_support import config_text

from fixtures.forge import run_forge
from mcp_server.server import READ_TOOLS

pytestmark = pytest.mark.anyio

INSPECTOR = "@modelcontextprotocol/inspector@0.15.0"
INSTALL_TIMEOUT = 240


def _npm_cache() -> Path:
    return Path(os.environ.get("GREENLOOP_NPM_CACHE") or Path.home() / ".cache" / "greenloop" / "npm")


async def _inspector(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    npx = shutil.which("npx")
    if npx is None or shutil.which("node") is None:
        pytest.skip("node/npx is not installed: the MCP Inspector CLI can't run")
    command = [npx, "-y", "--prefer-offline", "--cache", str(_npm_cache()), INSPECTOR, *args]
    with anyio.fail_after(timeout):
        done = await anyio.run_process(command, check=False, env={**os.environ, "NO_UPDATE_NOTIFIER": "1"})
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


@pytest.fixture
async def inspector_installed() -> None:
    try:
        code, _, err = await _inspector("--help", timeout=INSTALL_TIMEOUT)
    except TimeoutError:
        pytest.skip(f"installing {INSPECTOR} with npx took more than {INSTALL_TIMEOUT}s")
    if code != 0:
        pytest.skip(f"{INSPECTOR} could not be installed or started: {err.strip()[-300:]}")


def _json(stdout: str) -> Any:
    return json.loads(stdout[stdout.index("{") :])


async def test_inspector_cli_lists_and_calls_the_read_tools(tmp_path: Path, inspector_installed: None) -> None:
    server = shutil.which("greenloop-mcp", path=str(Path(sys.executable).parent))
    assert server is not None, "the greenloop-mcp console script is not installed (pip install -e .)"
    async with run_forge(tmp_path / "forge", projects=["bug-lib"]) as forge:
        config = tmp_path / "greenloop.toml"
        config.write_text(config_text(forge, tmp_path / "workspaces", {"bug-lib": "auto_merge"}), encoding="utf-8")
        # The Inspector has a --config option of its own: the server's arguments go after `--`.
        command = ["--", server, "--config", str(config), "--project", "bug-lib"]

        code, out, err = await _inspector("--cli", "--method", "tools/list", *command)
        assert code == 0, err
        tools = _json(out)["tools"]
        assert sorted(t["name"] for t in tools) == sorted(READ_TOOLS)
        assert all(t["annotations"]["readOnlyHint"] is True for t in tools)

        # --tool-arg takes every value up to the next option, so it goes first.
        code, out, err = await _inspector(
            "--cli", "--tool-arg", "path=pager/pagination.py", "max_lines=2",
            "--method", "tools/call", "--tool-name", "read_repo_file", *command,
        )  # fmt: skip
        assert code == 0, err
        result = _json(out)
        assert result.get("isError") in (None, False), out
        assert result["structuredContent"]["path"] == "pager/pagination.py"
        assert result["structuredContent"]["end_line"] == 2

        code, out, err = await _inspector(
            "--cli", "--tool-arg", "path=../../etc/passwd",
            "--method", "tools/call", "--tool-name", "read_repo_file", *command,
        )  # fmt: skip
        assert "root:x:0" not in out
        assert code != 0 or _json(out).get("isError") is True
