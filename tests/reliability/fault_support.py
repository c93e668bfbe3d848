"""Helpers for the fault tests: the forge's admin controls, a severable TCP proxy, scripted backends with hooks.

The fault tests reuse the reconciler's end-to-end helpers (`tests/reconciler/e2e_support.py`): this module
puts that directory on `sys.path` once, so test modules here can `from e2e_support import ...` after
importing this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx2

_RECONCILER_TESTS = str(Path(__file__).resolve().parents[1] / "reconciler")
if _RECONCILER_TESTS not in sys.path:
    sys.path.insert(0, _RECONCILER_TESTS)

from e2e_support import attempts_of, e2e_config, sqlite_url  # noqa: E402

from agent.scripted import ScriptedBackend  # noqa: E402
from fixtures.forge import Forge  # noqa: E402
from policy.config import GreenloopConfig, ProjectConfig  # noqa: E402
from reconciler.context import ReconcilerContext  # noqa: E402
from reconciler.dispatch import BackendFactory  # noqa: E402
from reconciler.runner import reconcile  # noqa: E402
from reconciler.store.models import Attempt  # noqa: E402

__all__ = [
    "HookedBackend",
    "SeverableProxy",
    "arm_fault",
    "branch_commits",
    "config_for",
    "forge_control",
    "forge_requests",
    "one_attempt",
    "scripted",
    "severable_proxy",
    "twice",
    "write_script",
]


async def forge_control(forge: Forge, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    """Call one of the forge's `/_forge` test controls as the admin; returns the decoded JSON answer."""
    async with httpx2.AsyncClient(base_url=forge.api_url, timeout=30) as http:
        response = await http.request(method, path, headers={"Authorization": f"token {forge.admin_token}"}, json=body)
    if response.status_code >= 400:
        raise RuntimeError(f"forge control {method} {path} failed: {response.status_code} {response.text}")
    return response.json() if response.content else None


async def arm_fault(
    forge: Forge,
    path_regex: str,
    kind: str,
    *,
    count: int = 1,
    retry_after: int = 1,
    delay: float = 1.0,
    method: str | None = None,
) -> None:
    """Arm a fault through `POST /_forge/faults`: the next `count` requests matching `path_regex` fail."""
    body: dict[str, Any] = {
        "path_regex": path_regex,
        "kind": kind,
        "count": count,
        "retry_after": retry_after,
        "delay": delay,
    }
    if method is not None:
        body["method"] = method
    await forge_control(forge, "POST", "/_forge/faults", body)


async def forge_requests(forge: Forge, limit: int = 1000) -> list[dict[str, Any]]:
    """The forge's last requests (method, path, route, status, login, fault), oldest first."""
    rows: list[dict[str, Any]] = await forge_control(forge, "GET", f"/_forge/requests?limit={limit}")
    return rows


def write_script(source: Path, target_dir: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Copy the scripted-model script `source` into `target_dir` (same file name), changed by `edit`."""
    script = json.loads(source.read_text(encoding="utf-8"))
    edit(script)
    target_dir.mkdir(parents=True, exist_ok=True)
    out = target_dir / source.name
    out.write_text(json.dumps(script, indent=2), encoding="utf-8")
    return out


def config_for(forge: Forge, tmp_path: Path, names: list[str], autonomy: str = "propose") -> GreenloopConfig:
    """A config watching the fixture projects `names` on `forge` with `autonomy`, its store under `tmp_path`."""
    return e2e_config(
        forge,
        names,
        database_url=sqlite_url(tmp_path / "greenloop.db"),
        workspace_dir=tmp_path / "workspaces",
        projects={name: {"autonomy": autonomy} for name in names},
    )


def twice(tool: str) -> Callable[[dict[str, Any]], None]:
    """A script edit: call `tool` a second time right after the first (as a model does after an error)."""

    def edit(script: dict[str, Any]) -> None:
        steps = script["steps"]
        i = next(i for i, s in enumerate(steps) if s["tool"] == tool)
        steps.insert(i + 1, dict(steps[i]))

    return edit


def scripted(script: Path, hook: Callable[[int], Awaitable[None]] | None = None) -> BackendFactory:
    """A back-end factory replaying `script` (hooked by `hook` before each model turn, when given)."""

    def make(attempt: Attempt, _project: ProjectConfig) -> Any:
        backend = ScriptedBackend(script, substitutions={"FAILING_RUN_ID": attempt.run_id})
        return backend if hook is None else HookedBackend(backend, hook)

    return make


async def one_attempt(ctx: ReconcilerContext, project: str) -> Attempt:
    """Start `project`'s attempt with one pass and wait for its agent to finish; returns the attempt."""
    summary = await reconcile(ctx, trigger="cli")
    assert summary.errors == {}
    assert [a.project for a in summary.attempts_started] == [project]
    assert ctx.dispatcher is not None
    await ctx.dispatcher.wait_idle(120)
    (attempt,) = await attempts_of(ctx.sessions, project)
    return attempt


async def branch_commits(forge: Forge, repo: str, branch: str, base: str = "main") -> list[str]:
    """The commits on `branch` that are not on `base`, in the forge's bare repository of `repo`."""
    owner, name = repo.split("/")
    bare = forge.state.repo(owner, name)
    assert bare is not None
    proc = await asyncio.create_subprocess_exec(
        "git", "--git-dir", str(bare.git_dir), "rev-list", f"{base}..{branch}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return out.decode().split()


class HookedBackend:
    """A model back-end that runs `hook(n)` before answering its n-th request (from 0), then delegates."""

    def __init__(self, inner: Any, hook: Callable[[int], Awaitable[None]]) -> None:
        self._inner = inner
        self._hook = hook
        self._calls = 0

    async def create(self, request: Any) -> Any:
        n = self._calls
        self._calls += 1
        await self._hook(n)
        return await self._inner.create(request)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class SeverableProxy:
    """A TCP proxy on 127.0.0.1 in front of `target`; `sever()` cuts every connection, `down` refuses new ones.

    Only this proxy's connections are affected: the server behind it never restarts.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.down = False
        self.port = 0
        self.connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def sever(self) -> int:
        """Close every proxied connection now (both sides); returns how many sockets were closed."""
        writers = list(self._writers)
        for writer in writers:
            transport = writer.transport
            transport.abort()
        self._writers.clear()
        return len(writers)

    async def aclose(self) -> None:
        self.down = True
        self.sever()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.down:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update({writer, up_writer})
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@contextlib.asynccontextmanager
async def severable_proxy(target_host: str, target_port: int) -> AsyncIterator[SeverableProxy]:
    """A started `SeverableProxy`, closed on exit."""
    proxy = SeverableProxy(target_host, target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
