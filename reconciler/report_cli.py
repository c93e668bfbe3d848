"""`greenloop report --job NAME -- CMD ARGS…`: run a scheduled job that is not GitHub Actions, and report it.

The command runs with its output streamed through unchanged (stdout to stdout, stderr to stderr); a tail of
both (at most `--log-tail-bytes`, redacted) is kept. When it ends, the run is posted to the reconciler's
`POST /runs` (status `completed`, conclusion `success` for exit code 0 else `failure`, started time, the
commit of the git checkout it ran in, the log tail with a last line giving the exit code and the finish
time), which wakes the loop for that project at once.

The reporter exits with the command's exit code (128 + N when a signal N ended it, 127 when it could not be
started). Reporting never changes that: when the API is unreachable or refuses the run, it says so on stderr
and the job's own failure stays visible to whatever scheduler runs it. SIGTERM and SIGINT are passed on to
the command (a Kubernetes CronJob's deadline, a Ctrl-C).

The token is `$GREENLOOP_SERVER__API_TOKEN` (the reconciler's `server.api_token`); the API URL is `--url`,
else `$GREENLOOP_URL`, else `http://127.0.0.1:8080`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import sys
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Final

import httpx2

from policy.redaction import redact
from reconciler.api_models import LOG_TEXT_LIMIT_BYTES

__all__ = ["DEFAULT_URL", "TOKEN_ENV", "add_report_parser", "report_command"]

DEFAULT_URL: Final = "http://127.0.0.1:8080"
TOKEN_ENV: Final = "GREENLOOP_SERVER__API_TOKEN"
URL_ENV: Final = "GREENLOOP_URL"
DEFAULT_TAIL_BYTES: Final = 256 * 1024
_POST_TIMEOUT_S: Final = 15.0
_SHA_RE: Final = re.compile(r"^[0-9a-f]{7,64}$")
_CHUNK: Final = 64 * 1024


class _Tail:
    """The last `limit` bytes of the combined output."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.dropped = 0
        self.chunks: deque[bytes] = deque()

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        while self.size > self.limit and self.chunks:
            head = self.chunks.popleft()
            excess = self.size - self.limit
            if len(head) > excess:
                self.chunks.appendleft(head[excess:])
                self.size -= excess
                self.dropped += excess
            else:
                self.size -= len(head)
                self.dropped += len(head)

    def text(self) -> str:
        data = b"".join(self.chunks).decode("utf-8", "replace")
        if self.dropped:
            data = data.partition("\n")[2]  # the first line was cut: drop what is left of it
            data = f"[greenloop report: the first {self.dropped} bytes of output are not included]\n" + data
        return data


@dataclass(frozen=True)
class _Outcome:
    exit_code: int
    started_at: datetime
    finished_at: datetime
    log: str


async def _pump(stream: asyncio.StreamReader, out: IO[bytes], tail: _Tail) -> None:
    while chunk := await stream.read(_CHUNK):
        out.write(chunk)
        out.flush()
        tail.add(chunk)


async def _run(argv: list[str], tail: _Tail, stdout: IO[bytes], stderr: IO[bytes]) -> _Outcome:
    started = datetime.now(UTC)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=None, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:  # as a shell says it: 127 not found, 126 found but not runnable
        code = 127 if isinstance(exc, FileNotFoundError) else 126
        message = f"greenloop report: could not start {argv[0]!r}: {exc.strerror or exc}\n".encode()
        stderr.write(message)
        stderr.flush()
        tail.add(message)
        return _Outcome(code, started, datetime.now(UTC), tail.text())
    loop = asyncio.get_running_loop()
    forwarded: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, proc.send_signal, sig)
            forwarded.append(sig)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        await asyncio.gather(_pump(proc.stdout, stdout, tail), _pump(proc.stderr, stderr, tail))
        code = await proc.wait()
    finally:
        for sig in forwarded:
            loop.remove_signal_handler(sig)
    return _Outcome(128 - code if code < 0 else code, started, datetime.now(UTC), tail.text())


async def _git_commit() -> str | None:
    """HEAD of the git checkout the job runs in, or None (not a checkout, or no git)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        proc = await asyncio.create_subprocess_exec(
            git, "rev-parse", "HEAD", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        async with asyncio.timeout(10):
            out, _ = await proc.communicate()
    except (OSError, TimeoutError):
        return None
    sha = out.decode().strip()
    return sha if proc.returncode == 0 and _SHA_RE.match(sha) else None


def _run_body(args: argparse.Namespace, outcome: _Outcome, commit: str) -> dict[str, Any]:
    trailer = (
        f"\n[greenloop report: {args.job!r} exited with code {outcome.exit_code} at "
        f"{outcome.finished_at.isoformat()} after {(outcome.finished_at - outcome.started_at).total_seconds():.1f} s]"
    )
    return {
        "project": args.project,
        "job": args.job,
        "run_id": args.run_id or f"{outcome.started_at:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
        "status": "completed",
        "conclusion": "success" if outcome.exit_code == 0 else "failure",
        "head_sha": commit,
        "event": "schedule",
        "triggered_by": "greenloop report",
        "created_at": outcome.started_at.isoformat(),
        "log_text": redact(outcome.log.rstrip("\n") + trailer),
    }


async def _post(url: str, token: str | None, body: dict[str, Any]) -> str | None:
    """POST the run; None when recorded, else why not (one line)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx2.AsyncClient(timeout=_POST_TIMEOUT_S) as http:
            reply = await http.post(url.rstrip("/") + "/runs", json=body, headers=headers)
    except httpx2.HTTPError as exc:
        return f"the API did not answer ({exc.__class__.__name__}: {str(exc)[:200]})"
    if reply.status_code in (200, 201):
        return None
    try:
        detail = str(reply.json().get("detail", ""))[:300]
    except ValueError:
        detail = reply.text[:300]
    return f"the API refused it: HTTP {reply.status_code}: {detail}"


async def _report(args: argparse.Namespace, stdout: IO[bytes], stderr: IO[bytes]) -> int:
    outcome = await _run(args.command, _Tail(args.log_tail_bytes), stdout, stderr)
    commit = args.commit or await _git_commit()
    if commit is None:
        problem: str | None = "no commit: the job did not run in a git checkout; pass --commit SHA"
    else:
        problem = await _post(args.url, os.environ.get(TOKEN_ENV) or None, _run_body(args, outcome, commit))
    if problem is not None:
        stderr.write(
            f"greenloop report: run of {args.job!r} NOT reported to {args.url}: {problem}; "
            f"the command's exit code {outcome.exit_code} is kept\n".encode()
        )
        stderr.flush()
    return outcome.exit_code


def _tail_bytes(value: str) -> int:
    n = int(value)
    if not 1024 <= n <= LOG_TEXT_LIMIT_BYTES // 2:
        raise argparse.ArgumentTypeError(f"must be between 1024 and {LOG_TEXT_LIMIT_BYTES // 2}")
    return n


def _sha(value: str) -> str:
    if not _SHA_RE.match(value):
        raise argparse.ArgumentTypeError("must be a lowercase hex commit id (7 to 64 characters)")
    return value


def add_report_parser(sub: Any) -> argparse.ArgumentParser:
    """The `report` sub-command's parser (registered by `reconciler.cli`)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="run a job's command and report its run (status, commit, log tail) to the reconciler",
        description="Run CMD, stream its output, post the run to the reconciler's POST /runs, exit with CMD's code.",
    )
    p.add_argument("--job", required=True, help="the job's name (as in the project's `jobs`)")
    p.add_argument(
        "--project",
        default=os.environ.get("GREENLOOP_PROJECT"),
        required="GREENLOOP_PROJECT" not in os.environ,
        help="the project's name or owner/name (default: $GREENLOOP_PROJECT)",
    )
    p.add_argument("--url", default=os.environ.get(URL_ENV, DEFAULT_URL), help=f"the API (default: ${URL_ENV})")
    p.add_argument("--run-id", default=None, help="this run's id (default: start time plus a random suffix)")
    p.add_argument("--commit", type=_sha, default=None, help="the commit the job ran (default: git rev-parse HEAD)")
    p.add_argument(
        "--log-tail-bytes", type=_tail_bytes, default=DEFAULT_TAIL_BYTES, help="how much of the output to send"
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS…")
    return p


def report_command(args: argparse.Namespace) -> int:
    """`greenloop report`: returns the command's exit code."""
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("greenloop report: no command given (greenloop report --job NAME -- CMD ARGS…)", file=sys.stderr)
        return 2
    args.command = command
    return asyncio.run(_report(args, sys.stdout.buffer, sys.stderr.buffer))
