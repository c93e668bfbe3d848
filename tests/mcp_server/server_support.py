"""Helpers shared by the MCP server tests: a greenloop.toml for a local forge, a recording audit sink,
binding factories that remember their bindings, and pushes made by a human (the forge's admin)."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from starlette.types import ASGIApp

from fixtures.forge import Forge
from mcp_server.audit import AuditEvent
from mcp_server.session import BindingFactory, SessionBinding, SessionGrant, config_binding_factory
from policy.config import GreenloopConfig, load_config_text

__all__ = [
    "GIT",
    "Harness",
    "RecordingAuditSink",
    "Symlink",
    "config_text",
    "harness",
    "human_push",
    "result_text",
]

GIT = shutil.which("git") or "git"


class RecordingAuditSink:
    """An AuditSink that keeps every event."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def record(self, event: AuditEvent) -> None:
        self.events.append(event)


def config_text(
    forge: Forge,
    workspace_dir: Path,
    projects: Mapping[str, str],
    *,
    budgets: Mapping[str, int] | None = None,
) -> str:
    """A greenloop.toml for `forge` watching `projects` (name -> autonomy), job `test` only."""
    lines = [
        "[server]",
        f'workspace_dir = "{workspace_dir}"',
        "[forge]",
        f'api_url = "{forge.api_url}"',
        f'git_url = "{forge.git_url}"',
        f'app_id = "{forge.app_id}"',
        f'installation_id = "{forge.installation_id}"',
        f'private_key_path = "{forge.private_key_path}"',
        "timeout_seconds = 30",
    ]
    for name, autonomy in projects.items():
        lines += [
            "[[project]]",
            f'name = "{name}"',
            f'repo = "acme/{name}"',
            f'autonomy = "{autonomy}"',
            'jobs = ["test"]',
        ]
        if budgets:
            lines.append("[project.budgets]")
            lines += [f"{k} = {v}" for k, v in budgets.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Harness:
    """A config for the forge plus a binding factory that records what it built."""

    forge: Forge
    config: GreenloopConfig
    audit: RecordingAuditSink = field(default_factory=RecordingAuditSink)
    bindings: list[SessionBinding] = field(default_factory=list)
    closed: list[SessionGrant] = field(default_factory=list)

    @property
    def factory(self) -> BindingFactory:
        inner = config_binding_factory(self.config, audit=self.audit)

        async def factory(grant: SessionGrant) -> SessionBinding:
            binding = await inner(grant)
            self.bindings.append(binding)

            async def closing() -> None:
                self.closed.append(grant)

            binding.resources.push_async_callback(closing)
            return binding

        return factory

    def live_secrets(self) -> tuple[str, ...]:
        """Every installation token the sessions' GitHub Apps hold."""
        return tuple(s for b in self.bindings for s in b.live_secrets())


def harness(
    forge: Forge, tmp_path: Path, projects: Mapping[str, str], *, budgets: Mapping[str, int] | None = None
) -> Harness:
    text = config_text(forge, tmp_path / "workspaces", projects, budgets=budgets)
    return Harness(forge=forge, config=load_config_text(text))


@dataclass(frozen=True)
class Symlink:
    """A symlink to commit, pointing at `target`."""

    target: str


def _git(args: list[str], cwd: Path, env: Mapping[str, str]) -> str:
    done = subprocess.run(
        [GIT, *args], cwd=cwd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {args[0]} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def _human_push_sync(
    forge: Forge, repo: str, branch: str, files: Mapping[str, str | Symlink], message: str, work: Path
) -> str:
    credential = base64.b64encode(f"x-access-token:{forge.admin_token}".encode()).decode()
    env = {
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {credential}",
        "GIT_AUTHOR_NAME": "Octo Cat",
        "GIT_AUTHOR_EMAIL": "octocat@acme.test",
        "GIT_COMMITTER_NAME": "Octo Cat",
        "GIT_COMMITTER_EMAIL": "octocat@acme.test",
    }
    if work.exists():
        shutil.rmtree(work)
    _git(["clone", "--quiet", "--branch", branch, f"{forge.git_url}/{repo}.git", str(work)], work.parent, env)
    for rel, content in files.items():
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if isinstance(content, Symlink):
            os.symlink(content.target, target)
        else:
            target.write_text(content, encoding="utf-8")
    _git(["add", "-A"], work, env)
    _git(["commit", "--quiet", "-m", message], work, env)
    _git(["push", "--quiet", "origin", f"HEAD:refs/heads/{branch}"], work, env)
    return _git(["rev-parse", "HEAD"], work, env)


async def human_push(
    forge: Forge, repo: str, branch: str, files: Mapping[str, str | Symlink], message: str, work: Path
) -> str:
    """Commit `files` on `branch` as the forge's admin (a human) and push; returns the new head sha."""
    return await asyncio.to_thread(_human_push_sync, forge, repo, branch, files, message, work)


def result_text(result: Any) -> str:
    """All text a tool result carries (content blocks and structured content)."""
    parts = [getattr(block, "text", "") for block in result.content]
    parts.append(repr(result.structured_content))
    return "\n".join(parts)


@asynccontextmanager
async def loopback_server(make_app: Callable[[int], ASGIApp]) -> AsyncIterator[int]:
    """Serve `make_app(port)` with uvicorn on a free 127.0.0.1 port in this event loop; yields the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(make_app(port), log_level="warning", access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        with anyio.fail_after(20):
            await task
        sock.close()
