"""The MCP server over stdio without worker threads: the SDK's transport, fed by the event loop.

The SDK's `stdio_server` reads and writes the process's stdin and stdout through `anyio.wrap_file`, so every
message pays worker-thread hops (one for the line read, two for the write and its flush): on a loaded
machine the larger part of a small call's latency. `run_stdio` keeps the SDK's transport (its JSON-RPC
parsing, its streams, its server) and only hands it stdin and stdout as non-blocking pipes served by the
event loop. As the SDK does, it claims fds 0 and 1 while serving: fd 0 reads the null device and fd 1 goes
to stderr, so nothing a tool or a child process prints can corrupt the wire; both are restored on exit.

When stdin or stdout is not a pipe (a file, a terminal), the SDK's own transport runs instead.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server

__all__ = ["run_stdio"]

# One JSON-RPC message a line; a write_repo_file call carries a whole file, so lines may be long.
_MAX_LINE_BYTES = 64 * 1024 * 1024


class _PipeLines:
    """Lines of a pipe, read on the event loop (what the SDK's transport iterates over)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _PipeLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


class _PipeWriter:
    """Text written to a pipe on the event loop, waiting only when the pipe is full."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> int:
        self._writer.write(text.encode("utf-8"))
        await self._writer.drain()
        return len(text)

    async def flush(self) -> None:
        await self._writer.drain()


def _is_pipe(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@asynccontextmanager
async def _claimed_pipes() -> AsyncIterator[tuple[_PipeLines, _PipeWriter]]:
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
            yield _PipeLines(reader), _PipeWriter(writer)
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
    async with (
        _claimed_pipes() as (lines, out),
        stdio_server(stdin=cast(anyio.AsyncFile[str], lines), stdout=cast(anyio.AsyncFile[str], out)) as (
            read_stream,
            write_stream,
        ),
    ):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
