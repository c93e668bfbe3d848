"""The model loop: one remediation attempt, acting only through the MCP session's tools.

`run_attempt` lists the session's tools, hands them to the model as Anthropic tool definitions, and
answers every `tool_use` block by calling the MCP tool and returning a `tool_result` (is_error when the
tool failed or was refused). It loops until the model ends its turn or a guard stops it, and always
returns an `AttemptOutcome`; it raises only `ToolSessionError` when the tools cannot even be listed.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
from mcp import MCPError
from mcp_types import CallToolResult, ListToolsResult, TextContent
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.accounting import ModelCall, UsageTotals, call_from_usage, total_of
from agent.context import ContextKeeper
from agent.errors import ModelError, ScriptError, ToolSessionError
from agent.guards import Guards, GuardStop
from agent.models import ModelBackend, ModelRequest
from agent.prompt import build_system_prompt, build_task_message
from agent.prompt_cache import with_breakpoints
from agent.report import WriteAttempt, render_report
from agent.transcript import Transcript
from agent.types import AttemptTask, StopReason
from infra.jsonlog import log_event
from mcp_server.errors import OUTSIDE_FAILURE_PREFIXES
from mcp_server.models import FileSlice, JobLogs, PullRequestInfo, PullRequestMerged, Pushed, ToolName
from policy.config import AgentSettings, Budgets
from policy.redaction import redact

__all__ = ["AttemptOutcome", "ToolSession", "run_attempt"]

logger = logging.getLogger("greenloop.agent")

_T = TypeVar("_T")


_CUT_OFF = (
    "Your last response was cut off at the output token limit, so this tool call was not run. "
    "Continue with a shorter response."
)
_CONTINUE = "Your last response was cut off at the output token limit. Continue with a shorter response."
_MAX_TOOL_PAGES = 20


class ToolSession(Protocol):
    """The slice of `mcp.Client` the loop uses."""

    async def list_tools(self, *, cursor: str | None = None) -> ListToolsResult:
        """One page of the server's tools."""
        ...

    async def call_tool(self, name: str, arguments: dict[str, Any] | None = None) -> CallToolResult:
        """Call one tool; tool failures come back as `is_error` results."""
        ...


class AttemptOutcome(BaseModel):
    """How one attempt ended. `transcript` and `report_markdown` are already redacted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stop_reason: StopReason
    stop_detail: str
    pr_number: int | None = None
    pr_url: str | None = None
    pushed_sha: str | None = None
    merged: bool = False
    turns: int
    tool_calls: int
    tool_errors: int
    usage: UsageTotals
    calls: list[ModelCall]
    cost_usd: float
    transcript: list[dict[str, Any]]
    report_markdown: str | None = None
    # The run was stopped by the outside (the model API failed after the SDK's retries), not by itself.
    transient: bool = False

    @property
    def succeeded(self) -> bool:
        """True when a pull request was opened."""
        return self.stop_reason is StopReason.SUCCEEDED_PR


def _structured(result: CallToolResult, text: str) -> dict[str, Any] | None:
    """The result's structured payload as a dict, unwrapping MCPServer's {"result": ...} envelope."""
    payload: Any = result.structured_content
    if payload is None and text.lstrip().startswith("{"):
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
    if isinstance(payload, dict) and set(payload) == {"result"} and isinstance(payload["result"], dict):
        payload = payload["result"]
    return payload if isinstance(payload, dict) else None


# How the MCP SDK wraps a tool's error message ("Error executing tool get_job_logs: Forge unavailable: ...").
_SDK_ERROR_PREFIX = re.compile(r"^Error executing tool [A-Za-z0-9_-]+: ")


def _render(result: CallToolResult) -> str:
    """The text a tool result shows the model."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{getattr(block, 'type', 'non-text')} content omitted]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _cap(text: str, limit: int) -> str:
    """Keep the head and (mostly) the tail of an over-long tool result; logs fail at the end."""
    if len(text) <= limit:
        return text
    head = limit // 3
    tail = limit - head
    return f"{text[:head]}\n[... {len(text) - limit} characters omitted ...]\n{text[-tail:]}"


def _tool_definition(tool: Any) -> dict[str, Any]:
    schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
    if schema.get("type") != "object":
        schema = {"type": "object", "properties": {}}
    return {"name": tool.name, "description": tool.description or tool.name, "input_schema": schema}


class _Run:
    def __init__(
        self,
        backend: ModelBackend,
        session: ToolSession,
        task: AttemptTask,
        budgets: Budgets,
        settings: AgentSettings,
        secrets: Sequence[str],
        max_tool_result_chars: int,
        context: ContextKeeper | None = None,
        calls: list[ModelCall] | None = None,
    ) -> None:
        self.backend = backend
        self.session = session
        self.task = task
        self.settings = settings
        self.secrets = tuple(s for s in secrets if s)
        self.max_chars = max_tool_result_chars
        self.guards = Guards(budgets)
        self.context = context if context is not None else ContextKeeper()
        self.transcript = Transcript(secrets=self.secrets)
        self.calls: list[ModelCall] = calls if calls is not None else []
        self.turns = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.tools: list[dict[str, Any]] = []
        self.required: dict[str, list[str]] = {}
        self.messages: list[dict[str, Any]] = []
        self.cached_through: int | None = None  # the message the previous request ended with
        self.last_text: str | None = None
        self.first_log: str | None = None
        self.writes: list[WriteAttempt] = []
        self.pr_opened = False
        self.pr_number: int | None = None
        self.pr_url: str | None = None
        self.pushed_sha: str | None = None
        self.merged = False
        self.transient = False  # set when the model API failed in a way worth a later try
        self.outside_errors = 0  # tool errors in a row caused by the forge being down or rate limited

    # -- plumbing ------------------------------------------------------------------------------------

    async def _within_deadline(self, during: str, call: Callable[[], Awaitable[_T]]) -> _T:
        # Security: every outside call is bounded by what is left of the run's wall clock.
        with anyio.move_on_after(self.guards.remaining_seconds()):
            return await call()
        raise self.guards.wall_timeout(during)

    async def _list_tools(self) -> None:
        cursor: str | None = None
        seen: dict[str, dict[str, Any]] = {}
        try:
            for _ in range(_MAX_TOOL_PAGES):
                page = await self._within_deadline("listing tools", partial(self.session.list_tools, cursor=cursor))
                for tool in page.tools:
                    seen[tool.name] = _tool_definition(tool)
                cursor = page.next_cursor
                if cursor is None:
                    break
        except (MCPError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise ToolSessionError(f"Tool session error: could not list tools: {type(exc).__name__}.") from exc
        except GuardStop as stop:
            raise ToolSessionError(f"Tool session error: could not list tools: {stop.detail}.") from None
        if not seen:
            raise ToolSessionError("Tool session error: the MCP server offers no tools.")
        # Sent once per attempt, in one stable order: a change would invalidate the cached prefix.
        self.tools = sorted(seen.values(), key=lambda d: str(d["name"]))
        for d in self.tools:
            req = d["input_schema"].get("required")
            self.required[d["name"]] = [r for r in req if isinstance(r, str)] if isinstance(req, list) else []

    # -- the loop ------------------------------------------------------------------------------------

    async def execute(self) -> AttemptOutcome:
        await self._list_tools()
        system_text = build_system_prompt(self.task)
        system = [{"type": "text", "text": system_text}]
        self.transcript.setup(
            task=self.task.model_dump(mode="json"), model=self.settings.model, system=system_text, tools=self.tools
        )
        self.messages = [{"role": "user", "content": [{"type": "text", "text": build_task_message(self.task)}]}]
        reason, detail = StopReason.NO_FIX, "the model ended its turn without opening a pull request"
        try:
            while True:
                ended = await self._turn(system)
                if ended is not None:
                    reason, detail = ended
                    break
        except GuardStop as stop:
            reason, detail = stop.reason, stop.detail
        if self.pr_opened:
            if reason is not StopReason.NO_FIX:
                detail = f"pull request opened; then stopped: {reason.value}: {detail}"
            else:
                detail = "pull request opened" + (" and merged" if self.merged else "")
            reason = StopReason.SUCCEEDED_PR
        return self._outcome(reason, detail)

    def _request(self, system: list[dict[str, Any]]) -> ModelRequest:
        tools, messages = self.tools, list(self.messages)
        if self.settings.prompt_caching:
            tools, system, messages = with_breakpoints(tools, system, messages, previous_last=self.cached_through)
            self.cached_through = len(messages) - 1
        return ModelRequest(
            model=self.settings.model,
            max_tokens=self.settings.max_output_tokens,
            system=system,
            tools=tools,
            messages=messages,
        )

    async def _turn(self, system: list[dict[str, Any]]) -> tuple[StopReason, str] | None:
        """One model call and its tool calls. Returns the stop when the model ended its turn."""
        self.guards.before_model_call(self.turns)
        elided, chars = self.context.compact(self.turns + 1)
        if elided:
            self.transcript.note(
                self.turns + 1, f"elided {elided} old tool result(s) ({chars} characters) from the conversation"
            )
        request = self._request(system)
        turn = self.turns + 1
        self.transcript.request(turn, request)
        started = time.monotonic()
        try:
            response = await self._within_deadline("waiting for the model", lambda: self.backend.create(request))
        except (ModelError, ScriptError) as exc:
            self.transient = isinstance(exc, ModelError) and exc.transient
            raise GuardStop(StopReason.MODEL_ERROR, str(exc)) from None
        self.turns = turn
        call = call_from_usage(
            turn=turn,
            model=self.settings.model,
            usage=response.usage,
            latency_seconds=time.monotonic() - started,
            prices=self.settings.prices,
        )
        self.calls.append(call)
        self.transcript.response(turn, response, call)
        log_event(
            logger,
            "agent.model_call",
            turn=turn,
            stop_reason=response.stop_reason,
            input_tokens=call.input_tokens,
            output_tokens=call.output_tokens,
            cache_creation_input_tokens=call.cache_creation_input_tokens,
            cache_read_input_tokens=call.cache_read_input_tokens,
            cost_usd=call.cost_usd,
        )
        self.messages.append(
            {"role": "assistant", "content": [b.model_dump(mode="json", exclude_none=True) for b in response.content]}
        )
        texts = [b.text for b in response.content if b.type == "text" and b.text.strip()]
        if texts:
            self.last_text = "\n".join(texts)
        self.guards.after_response(total_of(self.calls).budget_tokens)
        tool_uses = [b for b in response.content if b.type == "tool_use"]

        if response.stop_reason == "max_tokens":
            self.guards.allow_truncated_continue()
            self.transcript.note(turn, "output cut off at max_tokens; asked the model to continue")
            if tool_uses:
                self.messages.append(
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": b.id,
                                "is_error": True,
                                "content": [{"type": "text", "text": _CUT_OFF}],
                            }
                            for b in tool_uses
                        ],
                    }
                )
            else:
                self.messages.append({"role": "user", "content": [{"type": "text", "text": _CONTINUE}]})
            return None
        if not tool_uses:
            if response.stop_reason == "pause_turn":
                return None
            if response.stop_reason == "model_context_window_exceeded":
                raise GuardStop(StopReason.TOKEN_BUDGET, "the conversation outgrew the model's context window")
            if response.stop_reason == "refusal":
                return StopReason.NO_FIX, "the model refused to continue"
            return StopReason.NO_FIX, "the model ended its turn without opening a pull request"
        results: list[dict[str, Any]] = []
        self.messages.append({"role": "user", "content": results})
        for block in tool_uses:
            results.append(await self._answer(turn, block.id, block.name, block.input))
        return None

    # -- tools ---------------------------------------------------------------------------------------

    def _refusal(self, turn: int, tool_use_id: str, name: str, text: str) -> dict[str, Any]:
        self.tool_errors += 1
        self.transcript.tool_result(turn, tool_use_id=tool_use_id, name=name, is_error=True, text=text, source="agent")
        return {
            "type": "tool_result",
            "tool_use_id": tool_use_id,
            "is_error": True,
            "content": [{"type": "text", "text": text}],
        }

    async def _answer(self, turn: int, tool_use_id: str, name: Any, arguments: Any) -> dict[str, Any]:
        """Run one tool call and build its `tool_result`. Raises `GuardStop` when a guard trips."""
        self.tool_calls += 1
        name = name if isinstance(name, str) else repr(name)
        self.transcript.tool_call(turn, tool_use_id=tool_use_id, name=name, arguments=arguments)
        self.guards.before_tool_call(name, arguments)
        block = await self._checked_call(turn, tool_use_id, name, arguments)
        self.guards.after_tool_result(is_error=bool(block["is_error"]))
        return block

    async def _checked_call(self, turn: int, tool_use_id: str, name: str, arguments: Any) -> dict[str, Any]:
        # Security: only tools the server listed are called, with an object of arguments; the server
        # validates the rest, and refusals reach the model as is_error results, never as crashes.
        if name not in self.required:
            available = ", ".join(sorted(self.required))
            return self._refusal(turn, tool_use_id, name, f"Unknown tool: {name!r}. Available tools: {available}.")
        if not isinstance(arguments, dict):
            return self._refusal(
                turn,
                tool_use_id,
                name,
                f"Invalid arguments: {name} takes a JSON object, got {type(arguments).__name__}.",
            )
        missing = [r for r in self.required[name] if r not in arguments]
        if missing:
            return self._refusal(
                turn, tool_use_id, name, f"Invalid arguments: {name} is missing required field(s): {missing!r}."
            )
        path = arguments.get("path")
        content = arguments.get("content")
        if name == ToolName.WRITE_REPO_FILE and isinstance(path, str) and isinstance(content, str):
            try:
                self.guards.before_write(path, content)
            except GuardStop as stop:
                self.writes.append(WriteAttempt(path=path, result=f"not run: {stop.reason.value}", refused=True))
                raise

        is_error = True
        try:
            result = await self._within_deadline(f"calling {name}", lambda: self.session.call_tool(name, arguments))
            text = _render(result)
            is_error = result.is_error
        except GuardStop:
            raise
        except MCPError as exc:
            result, text = None, f"Tool error: {name} failed: {exc}"
        except Exception as exc:  # boundary: a broken session must end as tool errors, not a crash
            logger.exception("tool call raised")
            result, text = None, f"Tool error: {name} failed: {type(exc).__name__}."
        text = _cap(redact(text, extra_secrets=self.secrets), self.max_chars) or "(no output)"
        if is_error:
            self.tool_errors += 1
        outside = is_error and _SDK_ERROR_PREFIX.sub("", text, count=1).startswith(OUTSIDE_FAILURE_PREFIXES)
        self.outside_errors = self.outside_errors + 1 if outside else 0
        repeat = None if is_error else self.context.repeat_note(name, arguments, text)
        self.transcript.tool_result(
            turn, tool_use_id=tool_use_id, name=name, is_error=is_error, text=repeat or text, source="server"
        )
        first_log = self.first_log
        self._learn(name, arguments, result, text, is_error)
        block = {
            "type": "tool_result",
            "tool_use_id": tool_use_id,
            "is_error": is_error,
            "content": [{"type": "text", "text": repeat or text}],
        }
        if repeat is None and not is_error:
            # The attempt's failure excerpt is pinned: it stays in the conversation for the whole run.
            pinned = first_log is None and self.first_log is not None
            self.context.add(turn, name, arguments, text, block, pinned=pinned)
        return block

    def _learn(
        self, name: str, arguments: dict[str, Any], result: CallToolResult | None, text: str, is_error: bool
    ) -> None:
        """Update what the run knows from one tool result (writes, logs, PR, push, merge)."""
        path = arguments.get("path")
        if name == ToolName.WRITE_REPO_FILE:
            content = arguments.get("content")
            shown = path if isinstance(path, str) else repr(path)
            if is_error:
                self.writes.append(
                    WriteAttempt(
                        path=shown, result=text.strip().splitlines()[0] if text.strip() else "error", refused=True
                    )
                )
            else:
                size = len(content) if isinstance(content, str) else 0
                self.writes.append(WriteAttempt(path=shown, result=f"written ({size} characters)", refused=False))
                if isinstance(path, str) and isinstance(content, str):
                    self.guards.seen_content(path, content)
        if is_error or result is None:
            return
        data = _structured(result, text) or {}
        if name == ToolName.GET_JOB_LOGS:
            if self.first_log is None:  # our server's JobLogs; another server's plain text is the log itself
                logs = JobLogs.model_validate(data) if set(data) >= set(JobLogs.model_fields) else None
                self.first_log = logs.excerpt if logs is not None else text
            return
        try:
            if name == ToolName.READ_REPO_FILE and isinstance(path, str):
                # Only a whole-file read tells the file's content (the tool pages long files).
                read = FileSlice.model_validate(data)
                if not read.truncated and read.start_line == 1:
                    self.guards.seen_content(path, read.content)
            elif name == ToolName.COMMIT_AND_PUSH:
                self.pushed_sha = Pushed.model_validate(data).sha or self.pushed_sha
            elif name == ToolName.CREATE_PULL_REQUEST:
                self.pr_opened = True  # the tool succeeded; its reply says which pull request
                pr = PullRequestInfo.model_validate(data)
                self.pr_number, self.pr_url = pr.number, pr.url
            elif name == ToolName.MERGE_PULL_REQUEST:
                self.pr_opened = self.merged = True  # the tool succeeded; its reply says which, and how
                merge = PullRequestMerged.model_validate(data)
                self.merged = merge.merged
                # The merge names its pull request: recorded even when create_pull_request's reply was lost.
                self.pr_number = merge.number
        except ValidationError as exc:  # a server that is not ours, or a changed schema: learn nothing more
            if data:  # a structured reply of another shape is worth a line; plain text is not
                log_event(
                    logger, "agent.unexpected_tool_result", level=logging.WARNING, tool=name, error=str(exc)[:300]
                )

    # -- the outcome ---------------------------------------------------------------------------------

    def _transient(self, reason: StopReason) -> bool:
        """Whether the outside stopped the run: the model API after the SDK's retries, or a streak of tool
        errors that were all the forge being unavailable or rate limited."""
        if reason is StopReason.MODEL_ERROR:
            return self.transient
        return reason is StopReason.ERROR_STREAK and self.outside_errors >= self.guards.budgets.max_error_streak

    def _outcome(self, reason: StopReason, detail: str) -> AttemptOutcome:
        self.transcript.stop(reason=reason.value, detail=detail, turns=self.turns)
        totals = total_of(self.calls)
        report = None
        if reason is not StopReason.SUCCEEDED_PR:
            report = render_report(
                task=self.task,
                stop_reason=reason,
                stop_detail=detail,
                first_log=self.first_log,
                writes=self.writes,
                hypothesis=self.last_text,
                turns=self.turns,
                tokens=totals.budget_tokens,
                cost_usd=totals.cost_usd,
                secrets=self.secrets,
            )
        log_event(
            logger,
            "agent.stopped",
            stop_reason=reason.value,
            detail=detail,
            turns=self.turns,
            tokens=totals.budget_tokens,
            cost_usd=totals.cost_usd,
            pr_url=self.pr_url,
        )
        return AttemptOutcome(
            stop_reason=reason,
            stop_detail=redact(detail, extra_secrets=self.secrets),
            pr_number=self.pr_number,
            pr_url=self.pr_url,
            pushed_sha=self.pushed_sha,
            merged=self.merged,
            turns=self.turns,
            tool_calls=self.tool_calls,
            tool_errors=self.tool_errors,
            usage=totals,
            calls=self.calls,
            cost_usd=totals.cost_usd,
            transcript=self.transcript.events,
            report_markdown=report,
            transient=self._transient(reason),
        )


async def run_attempt(
    backend: ModelBackend,
    session: ToolSession,
    task: AttemptTask,
    budgets: Budgets,
    *,
    settings: AgentSettings | None = None,
    secrets: Sequence[str] = (),
    max_tool_result_chars: int = 60_000,
    context: ContextKeeper | None = None,
    calls: list[ModelCall] | None = None,
) -> AttemptOutcome:
    """Run one remediation attempt to its end.

    `secrets` are extra strings to redact from the transcript, report and tool results (e.g. the
    model API key). `settings` gives the model name, output limit and prices. `context` decides what of
    earlier tool results the conversation keeps (a fresh `ContextKeeper` with its defaults when None).
    `calls`, when given, is the list the run appends each model call's accounting to as it goes (it must be
    empty): the caller reads the usage so far from it while the run is under way (the dispatcher's heartbeat).

    Raises:
        ToolSessionError: the MCP session could not list its tools; nothing was attempted.
    """
    run = _Run(
        backend, session, task, budgets, settings or AgentSettings(), secrets, max_tool_result_chars, context, calls
    )
    return await run.execute()
