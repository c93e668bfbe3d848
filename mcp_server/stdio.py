"""The MCP server over stdio without worker threads or relay tasks: the SDK's server, fed by the event loop.

The SDK's `stdio_server` reads and writes the process's stdin and stdout through `anyio.wrap_file`, so every
message pays worker-thread hops (one for the line read, two for the write and its flush), and it relays each
message through a reader task and a writer task joined to the server by memory streams. On a loaded machine
those hops are the larger part of a small call's latency. `run_stdio` hands the SDK's server (its JSON-RPC
dispatcher, its session, its handlers) a read stream that parses each line of stdin where the server asks
for it and a write stream that writes each message to stdout where it is sent, both on the event loop over
non-blocking pipes. Parsing and serialising are the SDK's own (`jsonrpc_message_adapter.validate_json`,
`model_dump_json(by_alias=True, exclude_unset=True)`, one message a line), as in its `stdio_server`. As the
SDK does, it claims fds 0 and 1 while serving: fd 0 reads the null device and fd 1 goes to stderr, so nothing
a tool or a child process prints can corrupt the wire; both are restored on exit.

Each line read is first offered to `mcp_server.stdio_lean.LeanStdio`, which answers the steady state (`tools/call`,
`tools/list`, `ping`) itself, byte for byte as the SDK would; what it leaves goes to the SDK as above.

When stdin or stdout is not a pipe (a file, a terminal), the SDK's own transport runs instead (no lean loop).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import MCPServer
from mcp.shared.message import SessionMessage

from mcp_server.stdio_lean import LeanStdio

__all__ = ["run_stdio"]

# One JSON-RPC message a line; a write_repo_file call carries a whole file, so lines may be long.
_MAX_LINE_BYTES = 64 * 1024 * 1024


class _PipeReadStream:
    """The messages of stdin, one a line, parsed when the server receives them (a line that is not a JSON-RPC
    message is handed over as its parse error, as the SDK's transport does)."""

    def __init__(self, reader: asyncio.StreamReader, lean: LeanStdio | None = None) -> None:
        self._reader = reader
        self._lean = lean
        self._closed = False

    async def receive(self) -> SessionMessage | Exception:
        if self._closed:
            raise anyio.ClosedResourceError
        while True:
            line = await self._reader.readline()
            if not line:
                if self._lean is not None:
                    await self._lean.aclose()
                raise anyio.EndOfStream
            if self._lean is None or not await self._lean.feed(line):
                break
        try:
            message = types.jsonrpc_message_adapter.validate_json(line.decode("utf-8", errors="replace"), by_name=False)
        except Exception as exc:  # handed to the server, which answers it as the SDK's transport would
            return exc
        return SessionMessage(message)

    def __aiter__(self) -> _PipeReadStream:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> _PipeReadStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _PipeWriteStream:
    """Messages written to stdout, one a line, as they are sent; waits only when the pipe is full."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._closed = False
        self.lean: LeanStdio | None = None

    async def send(self, item: SessionMessage, /) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self.lean is not None:
            self.lean.observe(item.message)
        await self.write_line((item.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n").encode("utf-8"))

    async def write_line(self, line: bytes) -> None:
        """One message, already serialised with its line break."""
        try:
            self._writer.write(line)
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:  # the client went away
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        self._closed = True

    async def __aenter__(self) -> _PipeWriteStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@asynccontextmanager
async def _claimed_pipes(server: MCPServer[Any]) -> AsyncIterator[tuple[_PipeReadStream, _PipeWriteStream]]:
    """Private duplicates of fds 0 and 1 as event-loop pipes, with fd 0 on the null device and fd 1 on stderr."""
    loop = asyncio.get_running_loop()
    saved_in, saved_out = os.dup(0), os.dup(1)
    wire_in = os.fdopen(os.dup(0), "rb", buffering=0)
    wire_out = os.fdopen(os.dup(1), "wb", buffering=0)
    try:
        devnull = os.open(os.devnull, os.O_RDONLY)
        try:
            os.dup2(devnull, 0)
        finally:
            os.close(devnull)
        os.dup2(2, 1)
        reader = asyncio.StreamReader(limit=_MAX_LINE_BYTES)
        read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), wire_in)
        write_transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, wire_out)
        writer = asyncio.StreamWriter(write_transport, protocol, None, loop)
        try:
            write_stream = _PipeWriteStream(writer)
            lean = write_stream.lean = LeanStdio(server, write_stream.write_line)
            yield _PipeReadStream(reader, lean), write_stream
        finally:
            read_transport.close()
            write_transport.close()
    finally:
        wire_in.close()
        wire_out.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


async def run_stdio(server: MCPServer[Any]) -> None:
    """Serve `server` over this process's stdin and stdout until stdin closes."""
    if not (_is_pipe(0) and _is_pipe(1)):
        await server.run_stdio_async()
        return
    lowlevel = server._lowlevel_server  # what `MCPServer.run_stdio_async` runs, with our streams
    async with _claimed_pipes(server) as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
