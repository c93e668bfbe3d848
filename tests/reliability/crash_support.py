"""Helpers for the crash tests: a reconciler child process to SIGKILL, and the checks run after the restart.

Run as a script, this file is the child: what `greenloop reconcile` does (one pass, then wait for the started
attempts), or with `settle` passes until nothing moves, on the config in a JSON file, with the scripted model
replaying `fixtures/scripts/<project>.json` instead of a real one:

    python crash_support.py start|settle CONFIG.json
    python crash_support.py zygote      # forks such children on request (see `Zygote`)

The parent test owns the local forge (in its own event loop, so it must never block) and the SQLite file;
it watches `mcp_tool_call` grow and kills the child at a chosen point.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the child runs this file as a script
    sys.path.insert(0, str(REPO_ROOT))

from mcp_server.scopes import APP_PERMISSIONS as SCOPES_APP_PERMISSIONS  # noqa: E402
from policy.types import ACTIVE_STATUSES, TERMINAL_STATUSES, AttemptStatus  # noqa: E402

# What greenloop's one App needs (docs/operations.md): checks and statuses to merge only on green checks,
# issues to reach a human on escalation.
APP_PERMISSIONS = dict(SCOPES_APP_PERMISSIONS)

__all__ = [
    "REPO_ROOT",
    "SCRIPTS_DIR",
    "Child",
    "Kill",
    "Rebreaker",
    "Snapshot",
    "Zygote",
    "check_store",
    "count_rows",
    "forge_refs",
    "kill_when",
    "to_toml",
]

SCRIPTS_DIR = REPO_ROOT / "fixtures" / "scripts"
HEARTBEAT_SECONDS = 0.5
_TOKEN_RE = re.compile(r"gh[pso]_[A-Za-z0-9]{16,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


# The child --------------------------------------------------------------------------------------------------


async def _child(mode: str, config_path: str) -> int:
    import httpx2
    import sqlalchemy as sa

    from policy.config import GreenloopConfig
    from reconciler.runner import reconcile
    from reconciler.runtime import open_runtime, scripted_backends
    from reconciler.store.models import Attempt

    config = GreenloopConfig.model_validate_json(await asyncio.to_thread(Path(config_path).read_bytes))
    backend_for = scripted_backends(str(SCRIPTS_DIR))
    async with open_runtime(config, backend_for=backend_for, heartbeat_seconds=HEARTBEAT_SECONDS) as ctx:
        dispatcher = ctx.dispatcher
        if dispatcher is None:
            raise RuntimeError("the crash child needs a dispatcher")
        if mode == "start":  # what `greenloop reconcile` does
            summary = await reconcile(ctx, trigger="cli")
            await dispatcher.wait_idle(60)
            print(json.dumps({"passes": 1, "started": len(summary.attempts_started)}), flush=True)
            return 0
        admin = os.environ["CRASH_FORGE_ADMIN_TOKEN"]
        ends = time.monotonic() + 40
        passes = 0
        async with httpx2.AsyncClient(base_url=config.forge.api_url, timeout=60, trust_env=False) as http:
            while time.monotonic() < ends:
                await dispatcher.wait_idle(30)
                await http.post("/_forge/idle", json={"timeout": 30}, headers={"Authorization": f"token {admin}"})
                summary = await reconcile(ctx, trigger="cli")
                passes += 1
                async with ctx.sessions() as session:
                    live = await session.scalar(
                        sa.select(sa.func.count())
                        .select_from(Attempt)
                        .where(Attempt.status.in_([AttemptStatus.PENDING.value, AttemptStatus.RUNNING.value]))
                    )
                quiet = not (summary.attempts_started or summary.transitions or summary.reruns or summary.errors)
                if quiet and not live:
                    print(json.dumps({"passes": passes, "settled": True}), flush=True)
                    return 0
                await asyncio.sleep(0.25)
        print(json.dumps({"passes": passes, "settled": False}), flush=True)
        return 3


# The parent: children, kill points --------------------------------------------------------------------------


class Zygote:
    """A process that imports the reconciler once, then forks one fresh reconciler child per request.

    Importing the stack costs seconds of CPU; forking an already-imported process (before any event loop or
    thread exists in it) gives each child the same code at a fraction of the cost. Each child is a real,
    separate process: SIGKILL ends it with no chance to clean up. The zygote reaps it and reports its status.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self._last: Child | None = None

    @classmethod
    async def start(cls, *, admin_token: str, home: Path) -> Zygote:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "PYTHONPATH": str(REPO_ROOT),
            "CRASH_FORGE_ADMIN_TOKEN": admin_token,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "LC_ALL": "C",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__)),
            "zygote",
            cwd=REPO_ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        zygote = cls(proc)
        if await zygote._line(120) != "ready":
            raise RuntimeError("the crash zygote did not start")
        return zygote

    async def _line(self, timeout: float) -> str:
        if self._proc.stdout is None:
            raise RuntimeError("no zygote stdout")
        return (await asyncio.wait_for(self._proc.stdout.readline(), timeout)).decode().strip()

    async def spawn(self, mode: str, config_path: Path, log: Path) -> Child:
        """Fork a child running `mode` on `config_path` (output to `log`)."""
        if self._proc.stdin is None:
            raise RuntimeError("no zygote stdin")
        self._proc.stdin.write(f"{mode}\t{config_path}\t{log}\n".encode())
        await self._proc.stdin.drain()
        pid = int(await self._line(30))
        self._last = Child(pid=pid, log=log, zygote=self)
        return self._last

    async def aclose(self) -> None:
        """Stop the zygote; a child still running (a test failed mid-round) is killed first."""
        if self._last is not None and self._last.returncode is None:
            with contextlib.suppress(ProcessLookupError, TimeoutError, ValueError):
                self._last.kill()
                await self._last.wait(10)
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


@dataclass
class Child:
    """A forked reconciler child: `wait()` gives its wait status (negative: the signal that ended it)."""

    pid: int
    log: Path
    zygote: Zygote
    returncode: int | None = None

    async def wait(self, timeout: float = 120) -> int:
        if self.returncode is None:
            self.returncode = int(await self.zygote._line(timeout))
        return self.returncode

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)


def _zygote() -> int:
    import reconciler.runner
    import reconciler.runtime  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        mode, config_path, log = line.rstrip("\n").split("\t")
        pid = os.fork()
        if pid == 0:  # the child: a fresh reconciler process
            code = 1
            try:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.setsid()
                code = asyncio.run(_child(mode, config_path))
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    return 0


@dataclass(frozen=True)
class Kill:
    """When to SIGKILL the child: once `rows` audit rows exist (and an attempt row), or after `delay` seconds."""

    rows: int | None = None
    delay: float | None = None

    @property
    def label(self) -> str:
        return f"rows>={self.rows}" if self.rows is not None else f"delay={self.delay:.2f}s"


def count_rows(db: Path) -> tuple[int, int]:
    """(mcp_tool_call rows, attempt rows) in the SQLite file; (0, 0) before the tables exist."""
    if not db.exists():
        return 0, 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            calls = conn.execute("SELECT count(*) FROM mcp_tool_call").fetchone()[0]
            attempts = conn.execute("SELECT count(*) FROM reconciler_attempt").fetchone()[0]
        return int(calls), int(attempts)
    except sqlite3.Error:
        return 0, 0


async def kill_when(child: Child, kill: Kill, db: Path, *, timeout: float = 90) -> str:
    """Wait for the kill point and SIGKILL the child; returns "killed" or "exited" (it ended first)."""
    waiter = asyncio.ensure_future(child.wait(timeout + 60))
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout:
            if waiter.done():
                return "exited"
            if kill.delay is not None:
                due = time.monotonic() - started >= kill.delay
            else:
                calls, attempts = await asyncio.to_thread(count_rows, db)
                due = attempts > 0 and calls >= (kill.rows or 0)
            if due:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                code = await waiter
                return "killed" if code == -signal.SIGKILL else "exited"
            await asyncio.sleep(0.01)
        child.kill()
        await waiter
    finally:
        if not waiter.done():
            waiter.cancel()
    raise TimeoutError(f"kill point {kill.label} not reached in {timeout}s; child log:\n{child.log.read_text()}")


def to_toml(data: Mapping[str, Any]) -> str:
    """A TOML text for `greenloop.toml` data (tables, arrays of tables, scalars, arrays of scalars)."""
    lines: list[str] = []

    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return repr(value)
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        raise TypeError(f"no TOML for {value!r}")

    def table(prefix: str, body: Mapping[str, Any], header: str | None) -> None:
        if header is not None:
            lines.append(header)
        nested = []
        for key, value in body.items():
            if isinstance(value, Mapping) or (
                isinstance(value, (list, tuple)) and value and all(isinstance(v, Mapping) for v in value)
            ):
                nested.append((key, value))
            else:
                lines.append(f"{key} = {scalar(value)}")
        for key, value in nested:
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, Mapping):
                table(name, value, f"[{name}]")
            else:
                for item in value:
                    table(name, item, f"[[{name}]]")

    table("", data, None)
    return "\n".join(lines) + "\n"


# The forge -----------------------------------------------------------------------------------------------------


async def _git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        "git", *args, cwd=cwd, env=dict(env or {}), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args[:2])} failed: {err.decode(errors='replace')}")
    return out.decode()


async def forge_refs(git_dir: Path) -> dict[str, str]:
    """Every ref of a bare repository on the forge: name -> sha."""
    out = await _git("for-each-ref", "--format=%(refname) %(objectname)", cwd=git_dir, env={"PATH": os.environ["PATH"]})
    return dict(line.split(" ", 1) for line in out.splitlines() if line)


@dataclass
class Rebreaker:
    """Pushes a fixture's `break/` files back onto main as the admin (after a kill point let a fix merge)."""

    git_url: str
    admin_token: str
    workdir: Path

    async def rebreak(self, full_name: str, broken_sha: str) -> None:
        """Commit the tree of `broken_sha` on top of main (undoing a merged fix) and push it."""
        raw = base64.b64encode(f"x-access-token:{self.admin_token}".encode()).decode()
        home = self.workdir / "git-home"
        home.mkdir(parents=True, exist_ok=True)
        env = {"HOME": str(home), "PATH": os.environ["PATH"], "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
        auth = ["-c", f"http.extraHeader=Authorization: Basic {raw}", "-c", "user.name=Ana Lima"]
        auth += ["-c", "user.email=ana@acme.test"]
        clone = self.workdir / f"rebreak-{full_name.replace('/', '-')}-{time.monotonic_ns()}"
        await _git(*auth, "clone", "-q", f"{self.git_url}/{full_name}.git", str(clone), env=env)
        try:
            await _git("rm", "-r", "-q", ".", cwd=clone, env=env)
            await _git("checkout", broken_sha, "--", ".", cwd=clone, env=env)
            await _git(*auth, "commit", "-q", "-m", "break it again", cwd=clone, env=env)
            await _git(*auth, "push", "-q", "origin", "HEAD:refs/heads/main", cwd=clone, env=env)
        finally:
            shutil.rmtree(clone, ignore_errors=True)


# The checks ------------------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """What the store holds after the restart settled."""

    attempts: list[dict[str, Any]]
    transitions: list[dict[str, Any]]
    calls: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)


def _rows(conn: sqlite3.Connection, query: str) -> list[dict[str, Any]]:
    cursor = conn.execute(query)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def check_store(db: Path, *, secrets: Sequence[str]) -> Snapshot:
    """Read the store and list every broken invariant in `problems` (empty when all hold).

    Invariants: one attempt per (project, fingerprint), or one per generation after transient failures, and
    one active attempt per project; every
    attempt terminal, or active in a resting state (pr_open/verifying) with the reason it got there recorded;
    every status change recorded as a transition ending in the attempt's status; every audit row complete
    and parseable, naming an existing attempt of its project; no secret or token anywhere in the store.
    """
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
        snap = Snapshot(
            attempts=_rows(conn, "SELECT * FROM reconciler_attempt ORDER BY created_at, id"),
            transitions=_rows(conn, "SELECT * FROM reconciler_transition ORDER BY id"),
            calls=_rows(conn, "SELECT * FROM mcp_tool_call ORDER BY id"),
        )
        dump = "\n".join(
            "\t".join("" if v is None else str(v) for v in row)
            for table in ("reconciler_attempt", "reconciler_transition", "mcp_tool_call", "reconciler_pass")
            for row in conn.execute(f"SELECT * FROM {table}").fetchall()
        )
    problems = snap.problems
    # One attempt per failure, or one per generation where each earlier one failed transient (no resets here).
    per_fingerprint: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in snap.attempts:
        per_fingerprint.setdefault((a["project"], a["fingerprint"]), []).append(a)
    for key, rows in per_fingerprint.items():
        rows.sort(key=lambda a: a["generation"])
        if [a["generation"] for a in rows] != list(range(len(rows))):
            problems.append(f"attempt generations {[a['generation'] for a in rows]} for fingerprint {key}")
        problems += [
            f"attempt {a['id']} of fingerprint {key} was followed though it failed {a['status']}/{a['failure_class']}"
            for a in rows[:-1]
            if (a["status"], a["failure_class"]) != ("failed", "transient")
        ]
    active_values = {s.value for s in ACTIVE_STATUSES}
    per_project = Counter(a["project"] for a in snap.attempts if a["status"] in active_values)
    problems += [f"{n} active attempts in {p}" for p, n in per_project.items() if n > 1]
    by_attempt: dict[str, list[dict[str, Any]]] = {}
    for t in snap.transitions:
        by_attempt.setdefault(t["attempt_id"], []).append(t)
    resting = {AttemptStatus.PR_OPEN.value, AttemptStatus.VERIFYING.value}
    terminal = {s.value for s in TERMINAL_STATUSES}
    for a in snap.attempts:
        trail = by_attempt.get(a["id"], [])
        if a["status"] not in terminal | resting:
            problems.append(f"attempt {a['id']} left {a['status']} after settling")
        if not trail or trail[-1]["to_status"] != a["status"]:
            problems.append(f"attempt {a['id']} is {a['status']} but its transitions say {trail[-1:]}")
        elif a["status"] != AttemptStatus.PENDING.value and not trail[-1]["reason"]:
            problems.append(f"attempt {a['id']} reached {a['status']} without a reason")
        for before, after in itertools.pairwise(trail):
            if after["from_status"] != before["to_status"]:
                problems.append(f"attempt {a['id']}: transition chain broken at {before} -> {after}")
    attempts = {a["id"]: a for a in snap.attempts}
    for call in snap.calls:
        owner = attempts.get(call["attempt_id"] or "")
        if owner is None or owner["project"] != call["project"]:
            problems.append(f"audit row {call['id']} names attempt {call['attempt_id']!r} of {call['project']!r}")
        try:
            json.loads(call["arguments"])
        except (TypeError, ValueError):
            problems.append(f"audit row {call['id']} has unparseable arguments {call['arguments']!r:.80}")
        if not call["tool"] or not call["outcome"] or call["created_at"] is None:
            problems.append(f"audit row {call['id']} is incomplete: {call}")
    for secret in secrets:
        if secret and secret in dump:
            problems.append(f"a secret ({secret[:4]}...) is in the store")
    problems += [f"a token-like string is in the store: {m[:6]}..." for m in set(_TOKEN_RE.findall(dump))]
    return snap


if __name__ == "__main__":
    sys.exit(_zygote() if sys.argv[1] == "zygote" else asyncio.run(_child(sys.argv[1], sys.argv[2])))
