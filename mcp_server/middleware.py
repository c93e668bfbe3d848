"""What wraps every tool call: the session it runs for, its argument checks, its deadline, its audit event and
the redaction of its result.

Two layers, one per side of the SDK's own argument validation:

- `SessionMiddleware` (an `MCPServer` middleware) sees each `tools/call` first: it resolves the session
  (`SessionCache`), refuses arguments no tool declares, runs the call under the session's lock, masks the
  session's secrets in the result (the last gate before the model), and records one `AuditEvent` whatever
  the outcome. It also trims `tools/list` to the read tools for a read-only grant.
- `tool(...)` wraps each tool function: write tools only for agent grants, one deadline per call, and every
  exception turned into a message the model may see (refusals as they are, anything unexpected as a generic
  message with the detail in the server log).

The tools reach their session through `bound_session()` and redact what they show with `redactor(s)`: within
a call, each text is redacted once (`CallState.redact` remembers what it produced).
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import pydantic_core
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel

from mcp_server.audit import AuditEvent, Outcome
from mcp_server.deadline import DEFAULT_CALL_DEADLINE_SECONDS, call_deadline, off_loop
from mcp_server.errors import OUTSIDE_FAILURE_PREFIXES, ForgeRateLimited, ForgeUnavailable, McpServerError, ToolRefused
from mcp_server.models import READ_TOOLS
from mcp_server.session import Mode, SessionBinding, SessionGrant
from mcp_server.session_cache import SessionCache
from policy.errors import PolicyViolation
from policy.redaction import redact, redact_obj

__all__ = [
    "CallState",
    "SessionMiddleware",
    "ToolSpec",
    "bound_session",
    "client_name",
    "mark_redacted",
    "redactor",
    "structured_text",
    "tool",
]

logger = logging.getLogger("greenloop.mcp.server")

_INTERNAL_ERROR = "Internal error: the tool failed unexpectedly; the details are in the server log."
_INLINE_REDACT_CHARS = 16_000  # results with more text than this are redacted in a worker thread
_AUDIT_STRING_CHARS = 2000  # longer argument strings (file contents) are stored as a head and a length


# --------------------------------------------------------------------------------------------------------------
# Per-call state: the middleware binds the session, the tool wrapper records how the call ended.


@dataclass
class CallState:
    """One tool call: its session, its deadline, how it ended, and the text its redaction already produced."""

    binding: SessionBinding
    deadline_seconds: float = DEFAULT_CALL_DEADLINE_SECONDS
    outcome: Outcome | None = None
    message: str | None = None
    # Text this call's redaction produced (or cut at line breaks from it): shown as it is, never redacted twice.
    clean: set[str] = field(default_factory=set)

    def redact(self, text: str) -> str:
        """`text` with the session's secrets masked, once per call: text it already redacted comes back as is.

        Safe from a worker thread (one set insertion under the GIL)."""
        secrets, known = self.binding.live_secrets(), self.binding.known_clean
        if text in self.clean or known.remembered(text, secrets):
            return text
        shown = redact(text, extra_secrets=secrets)
        if shown == text:
            known.remember(text, secrets)
        self.clean.add(shown)
        return shown


_CURRENT: ContextVar[CallState | None] = ContextVar("greenloop_mcp_call", default=None)


def redactor(s: SessionBinding) -> Callable[[str], str]:
    """The redaction for what `s`'s tools show: the current call's (each text redacted once), else the session's."""
    call = _CURRENT.get()
    return call.redact if call is not None and call.binding is s else s.redact


def mark_redacted(redacted_by: Callable[[str], str], text: str) -> None:
    """Record that `text` is whole lines of what `redacted_by` produced, so the last gate shows it as it is.

    Only the current call's own redactor vouches for its text; any other redaction's output is gated again."""
    call = _CURRENT.get()
    if call is not None and redacted_by == call.redact:
        call.clean.add(text)


def bound_session() -> SessionBinding:
    """The session the current tool call acts for.

    Raises:
        ToolRefused: called outside the server's middleware (no session is bound).
    """
    call = _CURRENT.get()
    if call is None:  # only reachable when a tool is invoked outside the server's middleware
        raise ToolRefused("Access denied: this session is not bound to a project.")
    return call.binding


# --------------------------------------------------------------------------------------------------------------
# The tool wrapper.

_F = TypeVar("_F", bound=Callable[..., Awaitable[BaseModel]])


@dataclass(frozen=True)
class ToolSpec:
    """One tool as the server registers it: the guarded function, whether it writes, its annotations and the
    names of its parameters (anything else in a call is refused)."""

    fn: Callable[..., Awaitable[BaseModel]]
    write: bool
    annotations: ToolAnnotations
    parameters: frozenset[str]

    @property
    def name(self) -> str:
        """The tool's name (its function's)."""
        return self.fn.__name__


def tool(*, title: str, write: bool, destructive: bool = False, idempotent: bool = True) -> Callable[[_F], ToolSpec]:
    """Make a tool of an async function: it runs under the session's wall and its errors become model-readable
    ToolErrors. The function keeps its name, docstring and signature (the tool's input schema)."""

    def decorator(fn: _F) -> ToolSpec:
        @functools.wraps(fn)
        async def guarded(**kwargs: Any) -> BaseModel:
            call = _CURRENT.get()
            seconds = call.deadline_seconds if call is not None else DEFAULT_CALL_DEADLINE_SECONDS
            try:
                if write:
                    # Security: write tools exist only on agent servers, and act only for agent grants.
                    bound_session().require_agent()
                # Security: no call may hold its session (or the server) past its deadline.
                with call_deadline(seconds, fn.__name__):
                    return await fn(**kwargs)
            except (ToolRefused, PolicyViolation) as exc:
                raise ToolError(_finish(call, "refused", str(exc))) from None
            except McpServerError as exc:
                # Forge and git failures: their messages are written to be shown (no tokens, no host paths).
                raise ToolError(_finish(call, "error", _shown(exc))) from None
            except OSError as exc:
                if isinstance(exc, TimeoutError | ConnectionError):  # not the filesystem: a crash like any other
                    raise ToolError(_crashed(call, fn.__name__, exc)) from None
                # The filesystem refused: say what it said, never the host path it names.
                reason = exc.strerror or exc.__class__.__name__
                message = f"Refused: the filesystem refused the request: {reason}."
                raise ToolError(_finish(call, "refused", message)) from None
            except Exception as exc:  # top-level boundary of the tool: log the detail, show a generic message
                raise ToolError(_crashed(call, fn.__name__, exc)) from None

        return ToolSpec(
            fn=guarded,
            write=write,
            parameters=frozenset(inspect.signature(fn).parameters),
            annotations=ToolAnnotations(
                title=title,
                read_only_hint=not write,
                destructive_hint=destructive,
                idempotent_hint=idempotent,
                open_world_hint=False,
            ),
        )

    return decorator


def _shown(exc: McpServerError) -> str:
    """The message of a forge or git failure; an outage of the forge always begins with an outside prefix."""
    text = str(exc)
    if isinstance(exc, ForgeUnavailable | ForgeRateLimited) and not text.startswith(OUTSIDE_FAILURE_PREFIXES):
        text = f"{OUTSIDE_FAILURE_PREFIXES[0]} {text}"
    return text


def _crashed(call: CallState | None, tool: str, exc: BaseException) -> str:
    """Log an unexpected failure in full (redacted) and record it; returns the generic message for the model."""
    detail = _redact(call, "".join(traceback.format_exception(exc)))
    logger.error(json.dumps({"event": "mcp_tool_crashed", "tool": tool, "detail": detail}))
    _finish(call, "error", f"unexpected {exc.__class__.__name__}")
    return _INTERNAL_ERROR


def _redact(call: CallState | None, text: str) -> str:
    return call.redact(text) if call is not None else redact(text)


def _finish(call: CallState | None, outcome: Outcome, message: str) -> str:
    """Record how the call ended; returns the redacted message for the model."""
    shown = _redact(call, message)
    if call is not None:
        call.outcome, call.message = outcome, shown
    return shown


# --------------------------------------------------------------------------------------------------------------
# The server middleware: session, argument check, last gate, audit.


class SessionMiddleware:
    """Binds each tools/call to its session, audits it and redacts its result; trims tools/list."""

    def __init__(self, sessions: SessionCache) -> None:
        self._sessions = sessions

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/list":
            result = await call_next(ctx)
            grant = self._sessions.grant_for(ctx)
            # Security: a read-only grant on an agent server sees (and may call) only the read tools.
            if grant is not None and grant.mode is Mode.READ_ONLY:
                return _filter_tools(result, READ_TOOLS)
            return result
        if ctx.method != "tools/call":
            return await call_next(ctx)
        params = ctx.params or {}
        grant = self._sessions.grant_for(ctx)
        client = _client_name(grant, ctx) if grant is not None else ""
        name, arguments = params.get("name", ""), params.get("arguments")
        return await self.audited_call(grant, name, arguments, client, lambda: call_next(ctx))

    async def audited_call(
        self,
        grant: SessionGrant | None,
        name: object,
        arguments: Any,
        client: str,
        invoke: Callable[[], Awaitable[HandlerResult]],
    ) -> HandlerResult:
        """One `tools/call` of tool `name` for `grant` by `client`, run by `invoke` (the SDK's handler chain, or
        the stdio server's lean path, `mcp_server.stdio_lean`): bound to its session, its arguments checked, its
        result redacted, and audited whatever its outcome."""
        return await _audited_call(self._sessions, grant, str(name)[:100], arguments, client, invoke)

    @property
    def sessions(self) -> SessionCache:
        """The session cache this middleware binds calls with."""
        return self._sessions


async def _audited_call(
    sessions: SessionCache,
    grant: SessionGrant | None,
    tool: str,
    arguments: Any,
    client: str,
    invoke: Callable[[], Awaitable[HandlerResult]],
) -> HandlerResult:
    started = time.perf_counter()
    if grant is None:
        return _error_result("Access denied: this session is not bound to a project.")
    try:
        binding = await sessions.binding(grant)
    except (ToolRefused, PolicyViolation, McpServerError) as exc:
        logger.error(json.dumps({"event": "mcp_session_failed", "project": grant.project, "error": str(exc)}))
        return _error_result(f"Session unavailable: {exc}")
    except Exception as exc:  # top-level boundary: the session could not be built
        logger.error(json.dumps({"event": "mcp_session_failed", "project": grant.project, "error": type(exc).__name__}))
        return _error_result("Session unavailable: the server could not prepare this project; see the server log.")

    call = CallState(binding, deadline_seconds=sessions.deadline_seconds)
    data: dict[str, Any] | None = None
    token = _CURRENT.set(call)
    try:
        unknown = _unknown_arguments(sessions.parameters.get(tool), arguments)
        if unknown:
            # Security: no tool takes a repository (or anything it doesn't declare): refuse, don't ignore.
            call.outcome = "refused"
            call.message = f"Invalid arguments: {tool} takes no argument {', '.join(repr(u) for u in unknown)}."
            data = _error_result(call.message)
        else:
            async with binding.lock:
                data = _as_dict(await invoke())
        if data is not None:
            # Security: the last gate before the model: nothing leaves without the live secrets masked. A large
            # result is redacted in a worker thread, so it holds up no other session.
            payload, rebuild = _to_mask(data)
            if _text_chars(payload, call.clean) > _INLINE_REDACT_CHARS:
                data = await off_loop(_gate, call, payload, rebuild)
            else:
                data = _gate(call, payload, rebuild)
        if call.outcome is None:
            if data is not None and data.get("isError"):
                # The SDK refused the call before the tool ran: unknown tool or arguments outside the schema.
                call.outcome, call.message = "refused", _first_text(data)
            else:
                call.outcome = "ok"
        return data
    except BaseException as exc:
        call.outcome = call.outcome or "error"
        call.message = call.message or f"protocol error: {exc.__class__.__name__}"
        raise
    finally:
        _CURRENT.reset(token)
        event = AuditEvent(
            project=binding.project.name,
            client=call.redact(client),
            tool=call.redact(tool),
            arguments=_audit_arguments(binding, arguments),
            outcome=call.outcome or "error",
            message=call.redact(call.message)[:2000] if call.message else None,
            result_bytes=_json_size(data) if data is not None else 0,
            duration_ms=(time.perf_counter() - started) * 1000.0,
            attempt_id=binding.attempt_id,
        )
        with anyio.CancelScope(shield=True):
            await binding.audit.record(event)


def _as_dict(result: HandlerResult) -> dict[str, Any] | None:
    if isinstance(result, BaseModel):
        dumped: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True)
        return dumped
    return result


def _json_size(data: Mapping[str, Any]) -> int:
    """`len(json.dumps(data, separators=(",", ":")))`, the audited size of a result. pydantic's serialiser gives
    the same text, faster, when it is printable ASCII and holds no float (json escapes non-ASCII and DEL, and
    writes floats its own way)."""
    try:
        out = pydantic_core.to_json(data)
    except (ValueError, TypeError):  # a lone surrogate: json's own escaping
        out = b"\x80"
    if out.isascii() and b"\x7f" not in out and not _holds_float(data):
        return len(out)
    return len(json.dumps(data, separators=(",", ":")))


def _holds_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, Mapping):
        return any(_holds_float(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_float(v) for v in value)
    return False


def _error_result(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True, "resultType": "complete"}


def _audit_arguments(s: SessionBinding, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, Mapping):
        return {}
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if isinstance(value, str) and len(value) > _AUDIT_STRING_CHARS:
            value = f"{value[:200]}... ({len(value)} characters)"
        out[str(key)] = value
    redacted: dict[str, Any] = s.redact_obj(out)
    return redacted


def _unknown_arguments(declared: frozenset[str] | None, arguments: Any) -> list[str]:
    if declared is None or not isinstance(arguments, Mapping):
        return []
    return sorted(str(k)[:64] for k in arguments if k not in declared)[:5]


def _text_chars(value: Any, clean: set[str]) -> int:
    """How many characters of text not yet redacted a JSON-like result holds (what redacting it costs)."""
    if isinstance(value, str):
        return 0 if value in clean else len(value)
    if isinstance(value, Mapping):
        return sum(_text_chars(v, clean) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_chars(v, clean) for v in value)
    return 0


def structured_text(structured: Any) -> str:
    """The SDK's text block for a structured result: its JSON, indented by 2 (`func_metadata.convert_result`)."""
    return pydantic_core.to_json(structured, fallback=str, indent=2).decode()


def _to_mask(data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """What of a result the gate redacts, and whether its one text block is the JSON of `structuredContent`
    (then rebuilt from the redacted structure instead of being redacted a second time as text)."""
    structured = data.get("structuredContent")
    blocks = data.get("content")
    if isinstance(structured, dict) and isinstance(blocks, list) and len(blocks) == 1:
        block = blocks[0]
        if (
            isinstance(block, dict)
            and block.keys() == {"type", "text"}
            and block["type"] == "text"
            and block["text"] == structured_text(structured)
        ):
            return {k: v for k, v in data.items() if k != "content"}, True
    return data, False


def _gate(call: CallState, payload: dict[str, Any], rebuild: bool) -> dict[str, Any]:
    """The result (`payload`, from `_to_mask`) with the session's secrets masked in every string (keys too),
    each string once; with `rebuild`, its text block made again from the masked structured content."""
    secrets = call.binding.live_secrets()
    clean = call.binding.known_clean.container(secrets, also=call.clean)
    gated: dict[str, Any] = redact_obj(payload, extra_secrets=secrets, clean=clean)
    if rebuild:
        gated["content"] = [{"type": "text", "text": structured_text(gated["structuredContent"])}]
    return gated


def _first_text(result: Mapping[str, Any]) -> str | None:
    for block in result.get("content") or ():
        if isinstance(block, Mapping) and isinstance(block.get("text"), str):
            return str(block["text"])
    return None


def _filter_tools(result: HandlerResult, allowed: tuple[str, ...]) -> HandlerResult:
    data = _as_dict(result)
    if data is None:
        return result
    data["tools"] = [t for t in data.get("tools", ()) if isinstance(t, Mapping) and t.get("name") in allowed]
    return data


def _client_name(grant: SessionGrant, ctx: ServerRequestContext[Any, Any]) -> str:
    params = getattr(ctx.session, "client_params", None)
    return client_name(grant, ctx.params, getattr(getattr(params, "client_info", None), "name", None))


def client_name(grant: SessionGrant, params: Mapping[str, Any] | None, session_client: object) -> str:
    """Who made a call, as audited: the grant's client and the client's name (from the request's `_meta`
    clientInfo, else `session_client`, the name its session announced)."""
    info: Any = None
    meta = (params or {}).get("_meta")
    if isinstance(meta, Mapping):
        info = meta.get("io.modelcontextprotocol/clientInfo")
    if not isinstance(info, Mapping):
        info = {"name": session_client}
    name = info.get("name") if isinstance(info, Mapping) else None
    return f"{grant.client}/{str(name)[:64]}" if name else grant.client
