"""Figure 3: MCP tool latency of `read_repo_file` and `list_repo_files`, per transport, beside a reference server.

    python -m bench.mcp_latency [--quick] [--calls N] [--reps R]

A local forge (`fixtures.forge.run_forge`) serves the fixture project `bug-lib`; greenloop's MCP server is
bound to it read-only and driven by the SDK's `mcp.Client` over three transports:

- in memory: `Client(build_server(...))` in this process;
- stdio: the `greenloop-mcp --config FILE --project bug-lib` console script as a subprocess;
- streamable HTTP: `mcp_server.cli.http_app` under uvicorn on a free 127.0.0.1 port in this process (the client
  and the server share one event loop), with a bearer token from `mcp_server.auth.mint_token`.

Side by side, in the same run, the reference filesystem server `@modelcontextprotocol/server-filesystem`
(pinned below, run by Node through `npx` over stdio, installed once into `$GREENLOOP_NPM_CACHE`, default
`~/.cache/greenloop/npm`) reads the same files from a git clone of the same repository: its `read_text_file`
(or `read_file` in older versions) against our `read_repo_file`, its `list_directory` against our
`list_repo_files` on the same leaf directories (where both answer the same file names). A baseline row runs
the same Python MCP SDK over stdio with two bare tools (plain `open().read()` and `os.listdir`, no path
confinement, secret masking or audit) on the same clone, so the SDK's own cost shows apart from greenloop's.

Every session is warmed up first (greenloop's first call clones the repository). Then each repetition (batch)
makes N calls of every (transport, tool) series - reads over a fixed file list, listings over a fixed directory
list - one call at a time, interleaved round by round so that every series sees the same load on a shared
machine, each timed on the client with `perf_counter_ns` from the request to the parsed result. A call that
answers an error fails the benchmark. The report gives p50/p99 (nearest rank) per batch, the median over the
repetitions, and the ratio ours/reference over stdio. Figures are measured on the machine it runs on; none is
typed in. Without node/npx, or when the package can't be installed, the
reference rows say why instead of a number.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx2
import uvicorn
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from bench import bench_line
from fixtures.forge import Forge, run_forge
from mcp_server.audit import JsonLogAuditSink
from mcp_server.auth import mint_token
from mcp_server.cli import http_app
from mcp_server.server import build_server
from mcp_server.session import Mode, SessionGrant, config_binding_factory
from policy.config import load_config_text

__all__ = [
    "REFERENCE_PACKAGE",
    "LatencyResult",
    "Report",
    "main",
    "render_table",
    "run",
    "section",
]

PROJECT = "bug-lib"
REPO = f"acme/{PROJECT}"
# Fixed inputs: every file of the fixture's default branch, and its leaf directories (where greenloop's
# recursive listing and the reference's one-level listing name the same files).
FILES = ("pager/pagination.py", "pager/__init__.py", "tests/test_pagination.py", ".github/workflows/ci.yml")
DIRS = ("pager", "tests", ".github/workflows")
REFERENCE_PACKAGE = "@modelcontextprotocol/server-filesystem@2026.8.31"
INSTALL_TIMEOUT = 240.0
CALL_TIMEOUT = 30.0
WARMUP_CALLS = 20
TOKEN_SECRET = "bench-mcp-latency-" + "s" * 32
GIT = shutil.which("git") or "git"
# A baseline: the same Python MCP SDK over stdio with two bare tools (no confinement, masking or audit) reading
# the same clone, to tell the SDK's own cost from greenloop's checks. Run as `python -c BARE_SERVER ROOT`.
BARE_SERVER = """
import os, sys
from mcp.server.mcpserver import MCPServer
root = sys.argv[1]
server = MCPServer("bare", log_level="WARNING")
def read_file(path: str) -> str:
    with open(os.path.join(root, path), encoding="utf-8") as handle:
        return handle.read()
def list_directory(path: str) -> str:
    return "\\n".join(sorted(os.listdir(os.path.join(root, path))))
server.add_tool(read_file)
server.add_tool(list_directory)
server.run("stdio")
"""
BARE = "bare Python SDK (stdio)"
# Issue 20's goals, as ratios of p50 over stdio to the reference server's in the same run.
READ_GOAL_RATIO = 1.5
LIST_GOAL_RATIO = 2.0
REFERENCE = "reference (Node, stdio)"

Call = Callable[[int], Awaitable[None]]


@dataclass
class LatencyResult:
    """One (transport, operation): p50/p99 in ms of each repetition's batch."""

    transport: str
    operation: str
    tool: str
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.p50_ms)

    @property
    def p99(self) -> float:
        return statistics.median(self.p99_ms)


@dataclass
class Report:
    """Every row, and why the reference rows are missing (if they are)."""

    calls: int
    reps: int
    results: list[LatencyResult]
    reference_skipped: str | None = None
    wall_seconds: float = 0.0
    load_average: tuple[float, float] = (0.0, 0.0)  # the 1-minute load average before and after
    # CPU (user + system) each stdio server process spent per call during the batches, in ms (Linux /proc).
    cpu_ms_per_call: dict[str, float] = field(default_factory=dict)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> Any:
    result = await client.call_tool(tool, arguments, read_timeout_seconds=CALL_TIMEOUT)
    if result.is_error:
        raise RuntimeError(f"MCP call failed: {tool}({arguments!r}): {_text(result)[:300]!r}.")
    return result


def _caller(client: Client, tool: str, arguments: Sequence[dict[str, Any]]) -> Call:
    async def call(i: int) -> None:
        await _call(client, tool, arguments[i % len(arguments)])

    return call


async def _batch(calls: Sequence[Call], n: int) -> list[tuple[float, float]]:
    """`n` rounds, each making one call of every `calls` in turn (one at a time, the starting one rotating):
    the (p50, p99) in ms of each. Interleaved so that every series sees the same load on a shared machine."""
    samples: list[list[float]] = [[] for _ in calls]
    for i in range(n):
        for k in range(len(calls)):
            j = (i + k) % len(calls)
            t0 = time.perf_counter_ns()
            await calls[j](i)
            samples[j].append((time.perf_counter_ns() - t0) / 1e6)
    out: list[tuple[float, float]] = []
    for series in samples:
        series.sort()
        out.append((_percentile(series, 50), _percentile(series, 99)))
    return out


# --- the project: forge, config, a clone for the reference server ---------------------------------------------


def _config_text(forge: Forge, workspace_dir: Path) -> str:
    """A greenloop.toml for `forge` watching bug-lib (as tests/mcp_server/server_support.py writes it)."""
    return (
        "\n".join(
            [
                "[server]",
                f'workspace_dir = "{workspace_dir}"',
                "[forge]",
                f'api_url = "{forge.api_url}"',
                f'git_url = "{forge.git_url}"',
                f'app_id = "{forge.app_id}"',
                f'installation_id = "{forge.installation_id}"',
                f'private_key_path = "{forge.private_key_path}"',
                "timeout_seconds = 30",
                "[[project]]",
                f'name = "{PROJECT}"',
                f'repo = "{REPO}"',
                'autonomy = "propose"',
                'jobs = ["test"]',
            ]
        )
        + "\n"
    )


def _clone(forge: Forge, target: Path) -> None:
    """A plain git clone of the project's default branch, made as the forge's admin."""
    credential = base64.b64encode(f"x-access-token:{forge.admin_token}".encode()).decode()
    env = {
        **os.environ,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {credential}",
    }
    done = subprocess.run(
        [GIT, "clone", "--quiet", f"{forge.git_url}/{REPO}.git", str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"Clone failed: {REPO!r}: {done.stderr.strip()[-300:]!r}.")


def _greenloop_mcp() -> str:
    found = shutil.which("greenloop-mcp", path=str(Path(sys.executable).parent)) or shutil.which("greenloop-mcp")
    if found is None:
        raise RuntimeError("Missing console script: 'greenloop-mcp' is not installed (pip install -e .).")
    return found


# --- the four sessions ----------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _memory_client(config_text: str) -> AsyncIterator[Client]:
    config = load_config_text(config_text)
    server = build_server(
        config_binding_factory(config, audit=JsonLogAuditSink()),
        mode=Mode.READ_ONLY,
        grant=SessionGrant(project=PROJECT, client="bench"),
    )
    async with Client(server, cache=None) as client:
        yield client


@contextlib.asynccontextmanager
async def _stdio_client(config_path: Path, errlog: TextIO) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=_greenloop_mcp(),
        args=["--config", str(config_path), "--project", PROJECT],
        cwd=str(config_path.parent),
    )
    async with Client(stdio_client(params, errlog=errlog), cache=None) as client:
        yield client


@contextlib.asynccontextmanager
async def _http_client(config_text: str) -> AsyncIterator[Client]:
    config = load_config_text(config_text)
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose proto says TCP, and without
    # it Nagle meets the client's delayed ACK (~40 ms a response) - as uvicorn's own bind (getaddrinfo) does.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.setblocking(False)
    port: int = sock.getsockname()[1]
    app = http_app(
        config_binding_factory(config, audit=JsonLogAuditSink()),
        mode=Mode.READ_ONLY,
        secret=TOKEN_SECRET,
        projects=[PROJECT],
        host="127.0.0.1",
        port=port,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(30):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        token = mint_token(TOKEN_SECRET, project=PROJECT, mode=Mode.READ_ONLY, ttl_seconds=3600)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=CALL_TIMEOUT, trust_env=False) as http:
            url = f"http://127.0.0.1:{port}/mcp"
            async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
                yield client
    finally:
        server.should_exit = True
        with anyio.fail_after(30):
            await task
        sock.close()


def _npm_cache() -> Path:
    return Path(os.environ.get("GREENLOOP_NPM_CACHE") or Path.home() / ".cache" / "greenloop" / "npm")


def _npx_command(root: Path) -> list[str] | str:
    """The reference server's command line, or why it can't run."""
    npx, node = shutil.which("npx"), shutil.which("node")
    if npx is None or node is None:
        return "node/npx is not installed"
    return [npx, "-y", "--prefer-offline", "--cache", str(_npm_cache()), REFERENCE_PACKAGE, str(root)]


async def _install_reference(command: list[str]) -> str | None:
    """Install (once) and start the reference server with stdin closed; None if it ran, else why not."""
    env = {**os.environ, "NO_UPDATE_NOTIFIER": "1"}
    try:
        with anyio.fail_after(INSTALL_TIMEOUT):
            done = await anyio.run_process(command, check=False, env=env, stdin=subprocess.DEVNULL)
    except TimeoutError:
        return f"installing or starting {REFERENCE_PACKAGE} with npx took more than {INSTALL_TIMEOUT:.0f} s"
    except OSError as exc:
        return f"{REFERENCE_PACKAGE} could not be started: {exc}"
    err = done.stderr.decode(errors="replace").strip()
    if done.returncode != 0 and "running on stdio" not in err:
        return f"{REFERENCE_PACKAGE} could not be installed or started (exit {done.returncode}): {err[-300:]}"
    return None


@contextlib.asynccontextmanager
async def _reference_client(command: list[str], errlog: TextIO) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=command[0], args=command[1:], env={**os.environ, "NO_UPDATE_NOTIFIER": "1"})
    async with Client(stdio_client(params, errlog=errlog), cache=None) as client:
        yield client


@contextlib.asynccontextmanager
async def _bare_client(root: Path, errlog: TextIO) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=["-c", BARE_SERVER, str(root)])
    async with Client(stdio_client(params, errlog=errlog), cache=None) as client:
        yield client


def _bare(client: Client) -> _Target:
    return _Target(
        BARE,
        [
            ("read", "read_file", _caller(client, "read_file", [{"path": p} for p in FILES])),
            ("list", "list_directory", _caller(client, "list_directory", [{"path": d} for d in DIRS])),
        ],
    )


# --- CPU of the stdio server processes -----------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc; empty elsewhere)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            children = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
        except OSError:
            continue
        for child in children:
            found.append(int(child))
            found += _descendants(int(child))
    return found


def _server_of(pid: int) -> str | None:
    """Which stdio server a process of this benchmark belongs to: ours, the bare SDK's or the reference's."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if "greenloop-mcp" in cmdline:
        return "stdio"
    if 'MCPServer("bare"' in cmdline:
        return BARE
    if "server-filesystem" in cmdline:  # npx, its shell and the node server it starts (only the server works)
        return REFERENCE
    return None


def _server_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) spent so far by each stdio server's processes."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    spent: dict[str, float] = {}
    for pid in _descendants(os.getpid()):
        server = _server_of(pid)
        if server is None:
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        spent[server] = spent.get(server, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return spent


# --- the run ----------------------------------------------------------------------------------------------------


@dataclass
class _Target:
    transport: str
    operations: list[tuple[str, str, Call]]  # (operation, tool, call)


async def _ours(transport: str, client: Client) -> _Target:
    read = [{"path": p} for p in FILES]
    listing = [{"under": d} for d in DIRS]
    return _Target(
        transport,
        [
            ("read", "read_repo_file", _caller(client, "read_repo_file", read)),
            ("list", "list_repo_files", _caller(client, "list_repo_files", listing)),
        ],
    )


async def _reference(client: Client, root: Path, ours: Client) -> _Target:
    """The reference's tools over the clone, checked against greenloop's answers for the same inputs."""
    names = {t.name for t in (await client.list_tools()).tools}
    read_tool = next((t for t in ("read_text_file", "read_file") if t in names), None)
    if read_tool is None or "list_directory" not in names:
        raise RuntimeError(f"Reference tools missing: it lists {sorted(names)!r}.")
    read = [{"path": str(root / p)} for p in FILES]
    listing = [{"path": str(root / d)} for d in DIRS]
    # The same files: every line greenloop returns appears in the reference's answer; the same names listed.
    for path, args in zip(FILES, read, strict=True):
        theirs = _text(await _call(client, read_tool, args))
        mine = (await _call(ours, "read_repo_file", {"path": path})).structured_content or {}
        missing = [line for line in str(mine.get("content", "")).splitlines() if line and line not in theirs]
        if missing:
            raise RuntimeError(f"Reference read differs: {path!r}: {missing[:2]!r}.")
    for directory, args in zip(DIRS, listing, strict=True):
        theirs = _text(await _call(client, "list_directory", args))
        mine = (await _call(ours, "list_repo_files", {"under": directory})).structured_content or {}
        for rel in mine.get("files", []):
            if Path(rel).name not in theirs:
                raise RuntimeError(f"Reference listing differs: {directory!r} lacks {rel!r}.")
    return _Target(
        REFERENCE,
        [
            ("read", read_tool, _caller(client, read_tool, read)),
            ("list", "list_directory", _caller(client, "list_directory", listing)),
        ],
    )


async def _run(calls: int, reps: int) -> Report:
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-mcp-latency-") as tmp_name:
        tmp = Path(tmp_name)
        async with run_forge(tmp / "forge", projects=[PROJECT]) as forge, contextlib.AsyncExitStack() as stack:
            text = _config_text(forge, tmp / "workspaces")
            config_path = tmp / "greenloop.toml"
            config_path.write_text(text, encoding="utf-8")
            clone = tmp / "reference-root" / PROJECT
            clone.parent.mkdir()
            await asyncio.to_thread(_clone, forge, clone)
            root = clone.resolve()
            ours_log = stack.enter_context((tmp / "greenloop-mcp.stderr.log").open("w", encoding="utf-8"))
            ref_log = stack.enter_context((tmp / "reference.stderr.log").open("w", encoding="utf-8"))

            memory = await stack.enter_async_context(_memory_client(text))
            stdio = await stack.enter_async_context(_stdio_client(config_path, ours_log))
            http = await stack.enter_async_context(_http_client(text))
            targets = [
                await _ours("in memory", memory),
                await _ours("stdio", stdio),
                await _ours("streamable HTTP", http),
            ]
            bare_log = stack.enter_context((tmp / "bare.stderr.log").open("w", encoding="utf-8"))
            targets.append(_bare(await stack.enter_async_context(_bare_client(root, bare_log))))
            skipped: str | None = None
            command = _npx_command(root)
            if isinstance(command, str):
                skipped = command
            else:
                skipped = await _install_reference(command)
            if skipped is None and not isinstance(command, str):
                try:
                    ref = await stack.enter_async_context(_reference_client(command, ref_log))
                    with anyio.fail_after(CALL_TIMEOUT):
                        targets.append(await _reference(ref, root, stdio))
                except Exception as exc:  # the reference's failure is reported, ours are not caught
                    skipped = f"{REFERENCE_PACKAGE} did not answer: {exc.__class__.__name__}: {exc}"

            # Warm-up: the first greenloop call clones; every session reaches steady state.
            for target in targets:
                for _op, _tool, call in target.operations:
                    for i in range(WARMUP_CALLS):
                        await call(i)

            results = {
                (t.transport, op): LatencyResult(t.transport, op, tool)
                for t in targets
                for op, tool, _call_fn in t.operations
            }
            series = [((t.transport, op), call) for t in targets for op, _tool, call in t.operations]
            cpu_before = _server_cpu_seconds()
            for _rep in range(reps):
                figures = await _batch([call for _key, call in series], calls)
                for (key, _call_fn), (p50, p99) in zip(series, figures, strict=True):
                    results[key].p50_ms.append(p50)
                    results[key].p99_ms.append(p99)
            cpu_after = _server_cpu_seconds()
    per_server_calls = calls * reps * 2  # a read and a listing per round
    cpu_ms = {k: (v - cpu_before.get(k, 0.0)) * 1000.0 / per_server_calls for k, v in cpu_after.items()}
    return Report(
        calls=calls,
        reps=reps,
        results=list(results.values()),
        reference_skipped=skipped,
        wall_seconds=time.perf_counter() - t_start,
        load_average=(load_before, os.getloadavg()[0]),
        cpu_ms_per_call=cpu_ms,
    )


def run(*, calls: int = 1000, reps: int = 3) -> Report:
    """Measure every transport (and the reference server) with `calls` calls per batch, `reps` batches."""
    if calls < 1 or reps < 1:
        raise ValueError(f"Invalid batch: calls and reps must be >= 1: {(calls, reps)!r}.")
    return anyio.run(_run, calls, reps)


# --- the report -------------------------------------------------------------------------------------------------


def _ratio(ours: LatencyResult | None, theirs: LatencyResult | None) -> str:
    if ours is None or theirs is None or theirs.p50 <= 0 or theirs.p99 <= 0:
        return "-"
    return f"{ours.p50 / theirs.p50:.2f} (p50), {ours.p99 / theirs.p99:.2f} (p99)"


def render_table(report: Report) -> str:
    """Figure 3 as Markdown."""
    by_key: Mapping[tuple[str, str], LatencyResult] = {(r.transport, r.operation): r for r in report.results}
    reps = "1 batch" if report.reps == 1 else f"median of {report.reps} batches"
    lines = [
        f"{report.calls:,} calls per tool and transport per batch (one at a time, interleaved across series), "
        f"{reps}, after {WARMUP_CALLS} warm-up calls per tool; "
        f"latency measured on the client (request to parsed result), in ms. Project `{PROJECT}` on the local "
        f"forge; reads cycle over {len(FILES)} files ({', '.join(f'`{f}`' for f in FILES)}), listings over "
        f"{len(DIRS)} leaf directories ({', '.join(f'`{d}`' for d in DIRS)}).",
        "",
        "| transport | operation | tool | p50 ms | p99 ms |",
        "|---|---|---|---:|---:|",
    ]
    for r in report.results:
        lines.append(f"| {r.transport} | {r.operation} | `{r.tool}` | {r.p50:.2f} | {r.p99:.2f} |")
    if report.reference_skipped is not None:
        lines.append(f"| {REFERENCE} | read, list | - | not measured | not measured |")
    lines.append("")
    if report.reference_skipped is not None:
        lines.append(f"Reference server `{REFERENCE_PACKAGE}` not measured: {report.reference_skipped}.")
    else:
        ref = REFERENCE
        read_ratio = _ratio(by_key.get(("stdio", "read")), by_key.get((ref, "read")))
        list_ratio = _ratio(by_key.get(("stdio", "list")), by_key.get((ref, "list")))
        read_p50 = _p50_ratio(by_key.get(("stdio", "read")), by_key.get((ref, "read")))
        list_p50 = _p50_ratio(by_key.get(("stdio", "list")), by_key.get((ref, "list")))
        verdict = (
            "met"
            if read_p50 is not None
            and list_p50 is not None
            and read_p50 <= READ_GOAL_RATIO
            and list_p50 <= LIST_GOAL_RATIO
            else "not met"
        )
        lines += [
            f"Ours / reference over stdio (`{REFERENCE_PACKAGE}`, same files from a clone of the same repository): "
            f"read {read_ratio}; list {list_ratio}. Goal (issue 20: stdio p50 at most {READ_GOAL_RATIO:g}x the "
            f"reference's for reads and {LIST_GOAL_RATIO:g}x for listings, despite the path confinement checks, "
            f"secret masking and audit): {verdict}.",
        ]
    bare_read = _ratio(by_key.get(("stdio", "read")), by_key.get((BARE, "read")))
    bare_list = _ratio(by_key.get(("stdio", "list")), by_key.get((BARE, "list")))
    lines += [
        "",
        f"Ours / {BARE} (the same SDK and transport without greenloop's checks): read {bare_read}; list {bare_list}.",
    ]
    if report.cpu_ms_per_call:
        shown = ", ".join(
            f"{name} {report.cpu_ms_per_call[key]:.2f}"
            for name, key in (("ours", "stdio"), (BARE, BARE), (REFERENCE, REFERENCE))
            if key in report.cpu_ms_per_call
        )
        lines += [
            "",
            f"CPU per call of each stdio server process (user + system, reads and listings alike, in ms): {shown}. "
            "It depends less on how busy the machine is than latency does.",
        ]
    lines += [
        "",
        "Notes: greenloop's session is read-only and writes one JSON audit line per call (to stderr over stdio). "
        "The HTTP server runs in the benchmark's process, so client and server share one event loop; the stdio "
        "servers are separate processes. `list_repo_files` lists recursively (from the workspace's file index, "
        "one `git ls-files` until the tree changes, to honour .gitignore), the reference's `list_directory` reads "
        "one level; the leaf directories make the answers the same. "
        f"The {BARE} row is the same Python MCP SDK serving bare tools (no confinement, masking or audit) "
        "on the same clone: the part of greenloop's latency that is the SDK's, not greenloop's checks. "
        f"Wall time of the whole measurement: {report.wall_seconds:.1f} s; 1-minute load average "
        f"{report.load_average[0]:.1f} before, {report.load_average[1]:.1f} after (on {os.cpu_count()} CPU(s)).",
        "",
        _bench_line(report, by_key),
    ]
    return "\n".join(lines)


def _p50_ratio(ours: LatencyResult | None, theirs: LatencyResult | None) -> float | None:
    if ours is None or theirs is None or theirs.p50 <= 0:
        return None
    return ours.p50 / theirs.p50


def _bench_line(report: Report, by_key: Mapping[tuple[str, str], LatencyResult]) -> str:
    """`BENCH mcp ...`: the stdio ratios to the reference (and to the bare SDK), greenloop's stdio p50s, the load."""
    figures: dict[str, object] = {}
    for op in ("read", "list"):
        ratio = _p50_ratio(by_key.get(("stdio", op)), by_key.get((REFERENCE, op)))
        figures[f"{op}_p50_ratio"] = "na" if ratio is None else round(ratio, 2)
    for op in ("read", "list"):
        bare = _p50_ratio(by_key.get(("stdio", op)), by_key.get((BARE, op)))
        figures[f"{op}_p50_ratio_bare_sdk"] = "na" if bare is None else round(bare, 2)
    for op in ("read", "list"):
        ours = by_key.get(("stdio", op))
        figures[f"stdio_{op}_p50_ms"] = "na" if ours is None else round(ours.p50, 2)
    for name, key in (("stdio", "stdio"), ("bare_sdk", BARE), ("ref", REFERENCE)):
        if key in report.cpu_ms_per_call:
            figures[f"{name}_cpu_ms_per_call"] = round(report.cpu_ms_per_call[key], 2)
    figures["load_1m"] = round(max(report.load_average), 1)
    return bench_line("mcp", figures)


def section(*, quick: bool) -> str:
    """Figure 3 for `python -m bench`."""
    return render_table(run(calls=200 if quick else 1000, reps=1 if quick else 3))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the Markdown table."""
    parser = argparse.ArgumentParser(prog="python -m bench.mcp_latency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 calls per batch, 1 batch")
    parser.add_argument("--calls", type=int, default=None, help="calls per batch (default 1000; --quick 200)")
    parser.add_argument("--reps", type=int, default=None, help="batches per tool and transport (median; default 3)")
    args = parser.parse_args(argv)
    calls = args.calls or (200 if args.quick else 1000)
    reps = args.reps or (1 if args.quick else 3)
    print(render_table(run(calls=calls, reps=reps)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
