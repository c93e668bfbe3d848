"""`greenloop agent run`: one remediation attempt from the command line, with the MCP server in-process.

    greenloop agent run --project NAME --job JOB [--model scripted:FILE | replay:FILE | record:FILE |
                        anthropic[:MODEL]] [--run-id N] [--transcript FILE] [--report FILE]

The command finds the job's latest failed run through the server's own `list_job_runs` tool (unless
`--run-id` is given), runs the loop, and prints the outcome, stop reason, tokens, cost and PR URL.
Exit codes: 0 a pull request was opened (or there was nothing to fix), 1 the run stopped without a
fix, 2 the command could not run (unknown project, missing key, bad model spec, no tools).
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path
from typing import Any, Protocol, TextIO

import anyio
from pydantic import ValidationError

from agent.errors import AgentError, ToolSessionError
from agent.loop import AttemptOutcome, ToolSession, run_attempt
from agent.models import AnthropicBackend, ModelBackend
from agent.recording import RecordingBackend, ReplayBackend
from agent.scripted import ScriptedBackend
from agent.types import AttemptTask
from mcp_server.in_process import open_in_process_session
from mcp_server.models import JobRun, JobRuns, ToolName
from policy.config import AgentSettings, GreenloopConfig

__all__ = ["RunRecorder", "SessionOpener", "agent_run_command", "make_backend"]

API_KEY_ENV = "ANTHROPIC_API_KEY"

SessionOpener = Callable[[str, str, str], AbstractAsyncContextManager[ToolSession]]
"""Opens an MCP client session for (project, job, attempt id)."""


class RunRecorder(Protocol):
    """Records a manual run as an attempt (the reconciler's store), so a reconciler does not start a second one.

    `started` is called once the failing run is known and before any model call; it raises `AgentError` to
    refuse the run. `finished` is called exactly once after a `started` that returned: with the outcome, or
    with None when the run did not end normally (an error, Ctrl-C).
    """

    async def started(self, task: AttemptTask) -> None:
        """The run is about to start on `task`."""
        ...

    async def finished(self, outcome: AttemptOutcome | None) -> None:
        """The run is over."""
        ...


class _UsageError(AgentError):
    """The command was asked for something it cannot do; the message is one line for the terminal."""


def make_backend(
    spec: str,
    settings: AgentSettings,
    stack: AsyncExitStack,
    *,
    substitutions: Mapping[str, object],
    api_key: str | None,
) -> tuple[ModelBackend, AgentSettings]:
    """The back-end named by `spec` and the settings to run it with.

    `scripted:FILE`, `replay:FILE`, `record:FILE` (the real API, recorded to FILE), `anthropic` or
    `anthropic:MODEL`. Real back-ends are closed by `stack`.

    Raises:
        AgentError: unknown spec, or a real back-end without an API key.
    """
    kind, _, arg = spec.partition(":")
    if kind == "scripted" and arg:
        return ScriptedBackend(Path(arg), substitutions), settings
    if kind == "replay" and arg:
        return ReplayBackend(Path(arg)), settings
    if kind in ("anthropic", "record"):
        if not api_key:
            raise _UsageError(f"Model error: {kind!r} needs an API key in ${API_KEY_ENV}.")
        if kind == "anthropic" and arg:
            settings = settings.model_copy(update={"model": arg})
        real = AnthropicBackend(settings, api_key=api_key)
        stack.push_async_callback(real.aclose)
        if kind == "record":
            if not arg:
                raise _UsageError("Model error: 'record' needs a file: 'record:FILE'.")
            return RecordingBackend(real, Path(arg), secrets=[api_key]), settings
        return real, settings
    raise _UsageError(
        f"Model error: unknown model spec: {spec!r} (use scripted:FILE, replay:FILE, record:FILE or anthropic[:MODEL])."
    )


async def _failing_run(session: ToolSession, job: str) -> JobRun | None:
    """The newest failed run of `job`, through the server's list_job_runs tool; None when it is not red."""
    result = await session.call_tool(ToolName.LIST_JOB_RUNS, {"job": job, "limit": 20})
    if result.is_error:
        text = " ".join(getattr(b, "text", "") for b in result.content)
        raise ToolSessionError(f"Tool session error: list_job_runs failed: {text}")
    data: Any = result.structured_content or {}
    if isinstance(data, dict) and set(data) == {"result"}:
        data = data["result"]
    try:
        runs = JobRuns.model_validate(data).runs
    except ValidationError as exc:
        raise ToolSessionError(f"Tool session error: list_job_runs answered an unexpected shape: {exc}") from None
    for run in runs:
        if run.job != job:
            continue
        if run.conclusion == "failure":
            return run
        if run.conclusion == "success":
            return None  # the newest finished run is green: nothing to fix
    return None


async def _check_run(session: ToolSession, job: str, run_id: str) -> None:
    """Refuse a `--run-id` the forge does not know (for this job) before a single model token is spent."""
    result = await session.call_tool(ToolName.GET_JOB_LOGS, {"run_id": run_id})
    if result.is_error:
        text = " ".join(getattr(b, "text", "") for b in result.content).strip()
        raise ToolSessionError(f"run {run_id} of job {job!r} cannot be read ({text}); no model call was made")


def _print_outcome(outcome: AttemptOutcome, out: TextIO) -> None:
    u = outcome.usage
    lines = [
        f"outcome:     {'pull request opened' if outcome.succeeded else 'no fix'}",
        f"stop reason: {outcome.stop_reason.value} ({outcome.stop_detail})",
        f"turns:       {outcome.turns} (tool calls {outcome.tool_calls}, tool errors {outcome.tool_errors})",
        f"tokens:      input {u.input_tokens}, output {u.output_tokens}, cache write "
        f"{u.cache_creation_input_tokens}, cache read {u.cache_read_input_tokens}",
        f"cost:        ${outcome.cost_usd:.4f}",
        f"pr url:      {outcome.pr_url or '-'}" + (" (merged)" if outcome.merged else ""),
    ]
    print("\n".join(lines), file=out)


async def _attempt(
    session: ToolSession,
    stack: AsyncExitStack,
    config: GreenloopConfig,
    project: str,
    job: str,
    run_id: str | None,
    model_spec: str,
    api_key: str | None,
    out: TextIO,
    recorder: RunRecorder | None = None,
) -> AttemptOutcome | None:
    """Find the failed run (unless given), build the back-end and run the loop; None when nothing is red."""
    head_sha = "unknown"
    if run_id is None:
        run = await _failing_run(session, job)
        if run is None:
            print(f"nothing to fix: job {job!r} of {project!r} has no failed run newer than a green one", file=out)
            return None
        run_id, head_sha = run.run_id, run.head_sha or "unknown"
    else:
        await _check_run(session, job, run_id)
    task = AttemptTask(project=project, job=job, failing_run_id=run_id, head_sha=head_sha)
    backend, settings = make_backend(
        model_spec,
        config.agent,
        stack,
        substitutions={"FAILING_RUN_ID": run_id, "PROJECT": project, "JOB": job},
        api_key=api_key,
    )
    if recorder is not None:
        await recorder.started(task)
    print(f"attempt on {project}/{job}, failing run {run_id}", file=out)
    try:
        outcome = await run_attempt(
            backend,
            session,
            task,
            config.project(project).budgets,
            settings=settings,
            secrets=[api_key] if api_key else (),
        )
    except BaseException:
        if recorder is not None:
            with anyio.CancelScope(shield=True):  # recorded even on Ctrl-C
                await recorder.finished(None)
        raise
    if recorder is not None:
        await recorder.finished(outcome)
    return outcome


async def agent_run_command(
    config: GreenloopConfig,
    project: str,
    job: str,
    model_spec: str | None = None,
    *,
    run_id: str | None = None,
    attempt_id: str | None = None,
    transcript_path: Path | None = None,
    report_path: Path | None = None,
    open_session: SessionOpener | None = None,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    recorder: RunRecorder | None = None,
) -> int:
    """Run one attempt for `project`/`job` and print how it ended; returns the exit code (see module doc)."""
    out = out or sys.stdout
    err = sys.stderr if out is sys.stdout else out
    env = os.environ if env is None else env
    try:
        cfg = config.project(project)
    except KeyError:
        print(f"greenloop: unknown project: {project!r}", file=err)
        return 2
    if not cfg.watches(job):
        print(f"greenloop: project {project!r} does not watch job {job!r}", file=err)
        return 2
    attempt_id = attempt_id or uuid.uuid4().hex[:12]
    api_key = env.get(API_KEY_ENV) or None
    opener = open_session or open_in_process_session(config)
    failure: AgentError | None = None
    outcome: AttemptOutcome | None = None
    async with AsyncExitStack() as stack:
        session = await stack.enter_async_context(opener(project, job, attempt_id))
        # Errors are caught inside the session's block: the MCP client would wrap them in an ExceptionGroup.
        try:
            outcome = await _attempt(
                session, stack, config, project, job, run_id, model_spec or "anthropic", api_key, out, recorder
            )
        except AgentError as exc:
            failure = exc
    if failure is not None:
        print(f"greenloop: {failure}", file=err)
        return 2
    if outcome is None:
        return 0
    _print_outcome(outcome, out)
    if transcript_path is not None:
        await anyio.Path(transcript_path).write_text(
            json.dumps(outcome.transcript, indent=1, ensure_ascii=False), encoding="utf-8"
        )
        print(f"transcript:  {transcript_path}", file=out)
    if outcome.report_markdown is not None:
        if report_path is not None:
            await anyio.Path(report_path).write_text(outcome.report_markdown, encoding="utf-8")
            print(f"report:      {report_path}", file=out)
        else:
            print("\n" + outcome.report_markdown, file=out)
    return 0 if outcome.succeeded else 1
