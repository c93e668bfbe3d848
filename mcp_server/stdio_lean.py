"""The stdio server's steady state without the SDK's per-request layers: `tools/call`, `tools/list` and `ping`
answered straight from the line read off stdin.

The SDK serves each request through its era replay relay, its dispatcher's per-request task and cancel scope, a
per-request `Connection`, runner and session, the OpenTelemetry and request-state middleware, the surface and
params validation, the `MCPServer` tool manager and its result conversion: about half a small call's CPU. Here,
`LeanStdio.feed` looks at each line before the SDK does and answers the requests it can answer exactly as the SDK
would, byte for byte; everything else (the opening request that decides the protocol era, `initialize`,
`server/discover`, notifications, responses, anything malformed or unusual) goes on to the SDK unchanged, which
answers it as always. A request is taken only when the SDK would accept it as it is; the moment one is not
plainly well formed, the SDK gets it and produces its own answer or error.

- `tools/call` of a registered tool with arguments its validator accepts (the SDK's precompiled per-tool
  pydantic model) runs in one task of its own (requests are served concurrently, as the SDK does): the same
  `SessionMiddleware.audited_call` (session, argument check, deadline, audit, the last redaction gate), the tool
  function, the SDK's own result conversion and wire shaping (`ServerRunner._serialize`), one JSON line.
  A tool error is the SDK's `isError` result with its text and its log line.
- `tools/list` and `ping` depend only on the request (a stdio server's grant is fixed): the SDK answers the first
  of each; its answer is kept and given again, with the new id, to the same request.
- `notifications/cancelled` for a call in flight here stops it, which then answers nothing (as the SDK does);
  the notification goes on to the SDK too. When stdin closes, calls in flight are stopped and answered
  "Connection closed" (JSON-RPC error -32000), as the SDK's dispatcher does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import mcp_types as types
import pydantic_core
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.connection import Connection
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.runner import ServerRunner
from mcp.shared.dispatcher import as_request_id, coerce_request_id
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request
from mcp.shared.jsonrpc_dispatcher import handler_exception_to_error_data
from mcp_types import methods as spec_methods
from mcp_types.version import LATEST_MODERN_VERSION

from mcp_server.middleware import SessionMiddleware, client_name, structured_text

__all__ = ["LeanStdio"]

logger = logging.getLogger("greenloop.mcp.stdio")
# The SDK's tool-call log lines (`MCPServer._handle_call_tool`), written the same on the lean path.
_sdk_logger = logging.getLogger("mcp.server.mcpserver.server")

_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_CALL_KEYS = frozenset({"name", "arguments", "_meta"})
_ENVELOPE_KEYS = frozenset(
    {types.PROTOCOL_VERSION_META_KEY, types.CLIENT_INFO_META_KEY, types.CLIENT_CAPABILITIES_META_KEY}
)
_REPLAYED = frozenset({"tools/list", "ping"})
_MAX_REMEMBERED = 256  # distinct envelopes (and replayed requests) remembered per connection
_SHUTDOWN_WRITE_SECONDS = 1.0  # the SDK dispatcher's bound on its "Connection closed" answer at shutdown


class _NotPlainJson(ValueError):
    """NaN or Infinity: Python's json reads them, the SDK's parser does not."""


def _refuse_constant(name: str) -> Any:
    raise _NotPlainJson(name)


def _request_id_json(request_id: types.RequestId) -> bytes:
    return pydantic_core.to_json(request_id)


def _response_line(request_id: types.RequestId, result_json: bytes) -> bytes:
    """`JSONRPCResponse(jsonrpc="2.0", id=..., result=...)` as the SDK's stdio writes it, from the result's JSON."""
    return b'{"jsonrpc":"2.0","id":' + _request_id_json(request_id) + b',"result":' + result_json + b"}\n"


def _error_line(request_id: types.RequestId, error: types.ErrorData) -> bytes:
    message = types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error)
    return message.model_dump_json(by_alias=True, exclude_unset=True).encode("utf-8") + b"\n"


@dataclass
class _InFlight:
    scope: anyio.CancelScope
    peer_cancelled: bool = False


@dataclass
class _Era:
    """What the opening request decided, and what the legacy handshake committed (version, client name)."""

    modern: bool | None = None  # None: not decided yet; the lean path stays off until it is
    legacy_version: str | None = None
    legacy_client: str | None = None
    pending_initialize: dict[types.RequestId, Mapping[str, Any] | None] = field(default_factory=dict)


class LeanStdio:
    """Answers the steady-state requests of one stdio connection; see the module's docstring."""

    def __init__(self, server: MCPServer[Any], write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write
        self._lowlevel = server._lowlevel_server
        gates = [m for m in server.middleware if isinstance(m, SessionMiddleware)]
        self._gate = gates[0] if len(gates) == 1 else None
        self._tools: dict[str, Tool] = {}
        for tool in server._tool_manager.list_tools():
            if tool.context_kwarg is None and not tool.resolved_params and tool.is_async:
                self._tools[tool.name] = tool
        # Only its `_serialize` is used: the SDK's own wire shaping of a result (cache hints, the per-version
        # sieve, `resultType`, the serverInfo stamp); it reads the server and nothing of the connection.
        self._shaper = ServerRunner(self._lowlevel, Connection.from_envelope(LATEST_MODERN_VERSION, None, None), None)
        self._era = _Era()
        self._off = self._gate is None
        self._answers: dict[str, bytes] = {}  # replay key -> the SDK's result, as JSON
        self._orders: dict[tuple[str, str], tuple[str, ...] | Literal[False]] = {}  # see `_direct`
        self._surface_ok: set[str] = set()  # (version, _meta) of tools/call requests the SDK's surface accepts
        self._awaited: dict[types.RequestId, str] = {}  # request id -> replay key, until the SDK answers
        self._in_flight: dict[types.RequestId, _InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- reading ---------------------------------------------------------------------------------------------

    async def feed(self, line: bytes) -> bool:
        """Answer `line` here (True), or leave it to the SDK (False: the caller hands the SDK the line)."""
        if self._off:
            return False
        message = _plain_message(line)
        era = self._era
        if message is None:
            # Something the SDK may read otherwise; before the era is decided, that is the SDK's alone to read.
            self._off = era.modern is None
            return False
        method, params = message.get("method"), message.get("params", {})
        if "id" not in message or method is None:
            if method == "notifications/cancelled":
                self._peer_cancelled(params)
            return False  # notifications and responses are the SDK's
        request_id: types.RequestId = message["id"]
        if era.modern is None:  # the opening request decides the era (`serve_dual_era_loop`); the SDK serves it
            era.modern = method != "initialize" and types.PROTOCOL_VERSION_META_KEY in _meta_of(params)
        if method == "initialize":
            if not era.modern:
                era.pending_initialize[coerce_request_id(request_id)] = params
            return False
        version = self._version(params)
        if version is None:
            return False
        if method == "tools/call":
            return self._start_call(request_id, params, version)
        if method in _REPLAYED:
            return await self._replay(request_id, method, params, version)
        return False

    def _version(self, params: Mapping[str, Any]) -> str | None:
        """The protocol version the SDK would serve a request with these params at, if it would serve it."""
        meta = _meta_of(params)
        if self._era.modern:
            if not isinstance(params.get("_meta"), dict) or not meta.keys() <= _ENVELOPE_KEYS:
                return None
            route = classify_inbound_request({"params": params})
            return None if isinstance(route, InboundLadderRejection) else route.protocol_version
        if "_meta" in params:  # legacy requests carry no envelope here (nor a progress token)
            return None
        return self._era.legacy_version

    # --- tools/list and ping: the SDK's first answer, given again --------------------------------------------

    async def _replay(self, request_id: types.RequestId, method: str, params: Mapping[str, Any], version: str) -> bool:
        key = json.dumps([self._era.modern, version, method, params], sort_keys=True, separators=(",", ":"))
        answer = self._answers.get(key)
        if answer is None:
            self._awaited[coerce_request_id(request_id)] = key
            return False
        await self._send(_response_line(request_id, answer))
        return True

    def observe(self, message: types.JSONRPCMessage) -> None:
        """Note what the SDK answered (called for every message it writes): a replayable request's result, and
        the legacy handshake's outcome."""
        if not isinstance(message, types.JSONRPCResponse | types.JSONRPCError) or self._off:
            return
        request_id = coerce_request_id(message.id) if message.id is not None else None
        key = self._awaited.pop(request_id, None) if request_id is not None else None
        if key is not None and isinstance(message, types.JSONRPCResponse) and len(self._answers) < _MAX_REMEMBERED:
            self._answers[key] = pydantic_core.to_json(message.result)
        era = self._era
        if request_id is not None and request_id in era.pending_initialize:
            params = era.pending_initialize.pop(request_id)
            if isinstance(message, types.JSONRPCResponse):
                version = message.result.get("protocolVersion")
                era.legacy_version = version if isinstance(version, str) else None
                info = (params or {}).get("clientInfo")
                era.legacy_client = info.get("name") if isinstance(info, Mapping) else None

    # --- tools/call ------------------------------------------------------------------------------------------

    def _start_call(self, request_id: types.RequestId, params: Mapping[str, Any], version: str) -> bool:
        gate = self._gate
        name, arguments = params.get("name"), params.get("arguments", {})
        if gate is None or not params.keys() <= _CALL_KEYS or not isinstance(name, str):
            return False
        if not isinstance(arguments, dict):
            return False
        tool = self._tools.get(name)
        declared = gate.sessions.parameters.get(name)
        if tool is None or declared is None or not arguments.keys() <= declared:
            return False  # the SDK answers (unknown tool) or the middleware refuses (undeclared argument)
        try:
            self._check_surface(version, params)
            validated = tool.fn_metadata.validate_arguments(arguments)
        except Exception:  # the SDK's answer (and its error text) for arguments it refuses
            return False
        key = coerce_request_id(request_id)
        if key in self._in_flight:
            return False  # a duplicate id: the SDK's rules
        grant = gate.sessions.grant_of(get_access_token())
        client = client_name(grant, params, None if self._era.modern else self._era.legacy_client) if grant else ""
        entry = _InFlight(anyio.CancelScope())
        self._in_flight[key] = entry
        task = asyncio.get_running_loop().create_task(
            self._call(request_id, key, entry, grant, tool, validated, arguments, client, version)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _call(
        self,
        request_id: types.RequestId,
        key: types.RequestId,
        entry: _InFlight,
        grant: Any,
        tool: Tool,
        validated: dict[str, Any],
        arguments: dict[str, Any],
        client: str,
        version: str,
    ) -> None:
        assert self._gate is not None
        answered = False

        async def invoke() -> dict[str, Any]:
            result = await _run_tool(tool, validated, lambda returned: self._direct(tool, version, returned))
            return result if isinstance(result, dict) else self._shaper._serialize("tools/call", version, result)

        try:
            try:
                with entry.scope:
                    result = await self._gate.audited_call(grant, tool.name, arguments, client, invoke)
            finally:
                self._in_flight.pop(key, None)
            if entry.peer_cancelled:  # a request the peer cancelled is never answered
                return
            if entry.scope.cancelled_caught:  # stdin closed: stopped, answered as the SDK's dispatcher does
                raise anyio.get_cancelled_exc_class()()
            answered = True
            data = dict(result) if isinstance(result, Mapping) else {}
            await self._send(_response_line(request_id, pydantic_core.to_json(data)))
        except anyio.get_cancelled_exc_class():
            if not answered and not entry.peer_cancelled:
                closed = types.ErrorData(code=types.CONNECTION_CLOSED, message="Connection closed")
                with anyio.move_on_after(_SHUTDOWN_WRITE_SECONDS, shield=True):
                    await self._send(_error_line(request_id, closed))
        except Exception as exc:  # the dispatcher's exception-to-wire boundary, as the SDK's
            error = handler_exception_to_error_data(exc)
            if error is None:
                logger.exception("handler for 'tools/call' raised")
                error = types.ErrorData(code=0, message=str(exc))
            if not entry.peer_cancelled:
                await self._send(_error_line(request_id, error))

    async def _send(self, line: bytes) -> None:
        try:
            await self._write(line)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            logger.debug("dropped an answer: stdout is closed")

    def _direct(self, tool: Tool, version: str, returned: Any) -> dict[str, Any] | None:
        """A tool's successful result on the wire as `convert_result` and `ServerRunner._serialize` make it, built
        directly (None: leave it to them). Its keys, their order and every value are checked against the SDK's
        own answer on the first result of each tool at each protocol version; a tool whose shape differs keeps
        the SDK's path."""
        meta = tool.fn_metadata
        key = (tool.name, version)
        order = self._orders.get(key)
        if order is False or meta.wrap_output or meta.output_schema is None or type(returned) is not meta.output_model:
            return None
        structured = returned.model_dump(mode="json", by_alias=True)
        values: dict[str, Any] = {
            "content": [{"type": "text", "text": structured_text(structured)}],
            "structuredContent": structured,
            "isError": False,
            "resultType": "complete",
            "_meta": {types.SERVER_INFO_META_KEY: self._lowlevel.server_info_stamp},
        }
        if order is None:  # the first: the SDK's answer, and whether ours is the same
            sdk = self._shaper._serialize("tools/call", version, meta.convert_result(returned))
            keys = tuple(sdk)
            same = set(keys) <= values.keys() and pydantic_core.to_json(
                {k: values[k] for k in keys}
            ) == pydantic_core.to_json(sdk)
            self._orders[key] = keys if same else False
            return sdk
        return {k: values[k] for k in order}

    def _check_surface(self, version: str, params: Mapping[str, Any]) -> None:
        """The SDK's surface validation of a `tools/call` (`validate_client_request`). With the name a string and
        the arguments an object (checked before), only the `_meta` can fail it: an accepted `_meta` is known
        good for the rest of the connection.

        Raises:
            Exception: what the SDK's validation raises.
        """
        key = json.dumps([version, params.get("_meta")], sort_keys=True, separators=(",", ":"))
        if key not in self._surface_ok:
            spec_methods.validate_client_request("tools/call", version, params)
            if len(self._surface_ok) < _MAX_REMEMBERED:
                self._surface_ok.add(key)

    def _peer_cancelled(self, params: Mapping[str, Any]) -> None:
        request_id = as_request_id(params.get("requestId"))
        entry = self._in_flight.get(coerce_request_id(request_id)) if request_id is not None else None
        if entry is not None:
            entry.peer_cancelled = True
            entry.scope.cancel()

    async def aclose(self) -> None:
        """Stop the calls still in flight (each answers "Connection closed") and wait for them."""
        for entry in list(self._in_flight.values()):
            entry.scope.cancel()
        tasks = list(self._tasks)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def _run_tool(
    tool: Tool, validated: dict[str, Any], direct: Callable[[Any], dict[str, Any] | None]
) -> dict[str, Any] | types.CallToolResult | types.InputRequiredResult:
    """The tool's result as `MCPServer._handle_call_tool` (through `Tool.run`) makes it: shaped by `direct`
    when it can, else converted by the SDK; or its error result, with the SDK's text and log line."""
    try:
        try:
            returned = await tool.fn(**validated)
            shaped = direct(returned)
            return shaped if shaped is not None else tool.fn_metadata.convert_result(returned)
        except MCPError:
            raise
        except UnexpectedToolError as exc:
            raise UnexpectedToolError(f"Error executing tool {tool.name}: {exc}") from exc
        except ToolError as exc:
            raise ToolError(f"Error executing tool {tool.name}: {exc}") from exc
        except Exception as exc:
            raise UnexpectedToolError(f"Error executing tool {tool.name}") from exc
    except UnexpectedToolError as exc:
        _sdk_logger.exception("Tool %r raised an unexpected exception", tool.name)
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)
    except ToolError as exc:
        _sdk_logger.info("Tool %r failed: %r", tool.name, str(exc))
        return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)


def _plain_message(line: bytes) -> dict[str, Any] | None:
    """The JSON-RPC message on `line` if it is plainly well formed (the SDK reads it the same), else None."""
    try:
        message = json.loads(line.decode("utf-8", errors="replace"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or not message.keys() <= _REQUEST_KEYS:
        return None
    if not isinstance(message.get("method"), str) or not isinstance(message.get("params", {}), dict):
        return None
    if "id" in message and as_request_id(message["id"]) is None:
        return None
    return message


def _meta_of(params: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = params.get("_meta")
    return meta if isinstance(meta, Mapping) else {}
