"""A lean keep-alive HTTP/1.1 GET client on asyncio protocols, for the forge client's API GETs.

Why it exists: an unchanged reconcile pass is one conditional GET per project answered 304, and under
`httpx2`/`httpcore2` about 90% of that pass's CPU was the client's request path (building request and
header objects, the connection pool's scan of every connection on each request, response decoding), about
ten times the cost of the exchange itself. This client does only what those GETs need:

- one request line and a handful of headers written in one `write`; the answer parsed as its bytes arrive
  (an `asyncio.Protocol`, no stream layer): bodies by `Content-Length` or `Transfer-Encoding: chunked` (or
  to EOF on `Connection: close`), `gzip` decoded; a connection with bytes after the answer is not reused;
- idle connections kept in a LIFO list (reused newest first, no scan), at most `max_connections` open at
  once; a connection the server closed while idle is dropped before use, and a GET that fails on a reused
  connection before any answer byte arrives is sent once more on a new one (the server may close an idle
  connection just as the request leaves);
- one deadline (`timeout` seconds) over the whole exchange: waiting for a connection slot, connecting,
  writing and reading (the connection is aborted when it passes; one timer per client, set for the earliest
  deadline in flight, rather than a timer per request); a connection whose exchange failed, timed out or was
  cancelled is closed, never reused;
- a request's bytes remembered by path, query and headers: an unchanged pass sends every project the same
  request as the pass before (same token, same ETag), so it is built and checked once;
- TLS for `https` bases (`httpx2.create_ssl_context()`: the same verification as the rest of the client).

It knows nothing of GitHub: retries, rate limits, ETags and tokens are `mcp_server.forge.ForgeClient`'s.
Writes and log downloads (redirects, streamed tails) stay on `httpx2`.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit

import httpx2

__all__ = ["ConditionalGetClient", "LeanHTTPError", "LeanResponse"]

_NO_BODY = frozenset({204, 304})
_MAX_HEADER_BYTES = 256 * 1024
# A header line: after a CRLF, an RFC 9110 token name, a colon, the value without surrounding blanks.
_HEADER_RE = re.compile(r"\r\n([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\r\n]*?)[ \t]*(?=\r\n)")
_TARGET_SAFE = "/?&=%:@!$'()*+,;~-._"  # RFC 3986 path and query characters, '%' kept as is


class LeanHTTPError(Exception):
    """The exchange failed. `timeout`: the deadline passed; `sent`: the request may have reached the server."""

    def __init__(self, message: str, *, timeout: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.sent = sent


class LeanResponse(NamedTuple):
    """A complete answer: status, headers (names lower-cased, repeated ones joined by ", ") and body.

    A named tuple: one is built per request, and a tuple is the cheapest immutable record to build."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.content)


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: answers are parsed as their bytes arrive, one exchange at a time."""

    def __init__(self, max_body: int, loop: asyncio.AbstractEventLoop) -> None:
        self._max_body = max_body
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[LeanResponse, bool]] | None = None
        self._head: tuple[int, dict[str, str], int] | None = None  # status, headers, offset of the body
        self._chunks: list[bytes] = []
        self._chunk_at = 0  # offset of the next chunk-size line (chunked bodies)
        self._chunked_bytes = 0
        self._received = False  # any byte of the current answer arrived
        self.closed = False

    # -- asyncio.Protocol -----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        self._received = True
        self._buffer += data
        try:
            answer = self._parse(eof=False)
        except LeanHTTPError as exc:
            self.close()
            waiter.set_exception(exc)
            return
        if answer is not None:
            self._waiter = None
            waiter.set_result(answer)

    def eof_received(self) -> bool:
        self._ended(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended(exc)

    # -- exchange -----------------------------------------------------------------------------------------

    def usable(self) -> bool:
        """Whether an idle connection can carry another request (the server has not closed it)."""
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    def send(self, request: bytes) -> asyncio.Future[tuple[LeanResponse, bool]]:
        """Send `request`; the future of its whole answer and whether the connection can be reused then.

        The caller awaits the future, closes the connection if that fails, and calls `finished` after it.
        Its exception is `_Stale` when the connection closed before any byte of the answer (the request may
        be sent again), `LeanHTTPError` for any other failure, including `expire` (the deadline passed).
        """
        transport = self._transport
        if transport is None or self.closed:
            raise _Stale
        waiter: asyncio.Future[tuple[LeanResponse, bool]] = self._loop.create_future()
        self._waiter = waiter
        if self._buffer:
            self._buffer.clear()
        self._head = None
        self._chunks = []
        self._chunk_at = 0
        self._chunked_bytes = 0
        self._received = False
        transport.write(request)
        return waiter

    def finished(self) -> None:
        """The exchange is over (answered, failed or cancelled): bytes arriving now are out of step."""
        self._waiter = None

    def expire(self) -> None:
        """The exchange's deadline passed: it fails as timed out, and the connection is aborted."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(LeanHTTPError("timed out", timeout=True))
        if self._transport is not None:
            self._transport.abort()
        self.closed = True

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _ended(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            return
        if not self._received:
            waiter.set_exception(_Stale())
            return
        try:
            answer = self._parse(eof=True)
        except LeanHTTPError as error:
            waiter.set_exception(error)
            return
        if answer is None:
            why = f" ({exc.__class__.__name__})" if exc is not None else ""
            waiter.set_exception(LeanHTTPError(f"connection closed in the answer{why}"))
        else:
            waiter.set_result(answer)

    def _parse(self, *, eof: bool) -> tuple[LeanResponse, bool] | None:
        """The complete answer in the buffer and whether the connection stays reusable, or None: not yet."""
        buffer = self._buffer
        if self._head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEADER_BYTES:
                    raise LeanHTTPError("answer headers too large")
                return None
            status, headers = _parse_head(buffer[: end + 2].decode("latin-1"))
            if 100 <= status < 200:
                raise LeanHTTPError(f"unexpected interim answer {status}")
            self._head = (status, headers, end + 4)
            self._chunk_at = end + 4
        status, headers, start = self._head
        keep_alive = headers.get("connection", "").lower() != "close"
        if status in _NO_BODY:
            body, end = b"", start
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            end = self._read_chunks()
            if end < 0:
                return None
            body = b"".join(self._chunks)
        elif "content-length" in headers:
            length = _content_length(headers["content-length"])
            if length > self._max_body:
                raise LeanHTTPError("answer body too large")
            end = start + length
            if len(buffer) < end:
                return None
            body = bytes(buffer[start:end])
        else:  # the body runs to the end of the connection
            if len(buffer) - start > self._max_body:
                raise LeanHTTPError("answer body too large")
            if not eof:
                return None
            keep_alive = False
            body, end = bytes(buffer[start:]), len(buffer)
        # Reusable only when nothing follows the answer: stray bytes would be read as the next one's.
        reusable = keep_alive and not self.closed and len(buffer) == end
        return LeanResponse(status, headers, self._decoded(headers, body) if body else body), reusable

    def _read_chunks(self) -> int:
        """Consume the complete chunks in the buffer; the offset after the last (empty) chunk and its trailers
        once they are in, else -1."""
        buffer = self._buffer
        while True:
            line_end = buffer.find(b"\r\n", self._chunk_at)
            if line_end < 0:
                return -1
            try:
                size = int(bytes(buffer[self._chunk_at : line_end]).split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise LeanHTTPError("malformed chunk size") from exc
            if size == 0:
                trailers_end = buffer.find(b"\r\n\r\n", line_end)  # at line_end itself when there are none
                return trailers_end + 4 if trailers_end >= 0 else -1
            if size < 0 or self._chunked_bytes + size > self._max_body:
                raise LeanHTTPError("answer body too large")
            data_end = line_end + 2 + size
            if len(buffer) < data_end + 2:
                return -1
            if buffer[data_end : data_end + 2] != b"\r\n":
                raise LeanHTTPError("chunk not terminated by CRLF")
            self._chunks.append(bytes(buffer[line_end + 2 : data_end]))
            self._chunked_bytes += size
            self._chunk_at = data_end + 2

    def _decoded(self, headers: Mapping[str, str], body: bytes) -> bytes:
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("identity", ""):
            return body
        if encoding != "gzip":
            raise LeanHTTPError(f"unsupported content encoding {encoding!r}")
        try:
            body = zlib.decompressobj(wbits=31).decompress(body, self._max_body + 1)
        except zlib.error as exc:
            raise LeanHTTPError("answer body is not valid gzip") from exc
        if len(body) > self._max_body:
            raise LeanHTTPError("answer body too large")
        return body


class ConditionalGetClient:
    """GETs against one origin (`base_url`, with its path prefix) over reused HTTP/1.1 connections."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str],
        timeout: float,
        max_connections: int = 100,
        max_body_bytes: int = 64 * 2**20,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) base URL: {base_url!r}")
        self._host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self._port = parts.port or default_port
        self._ssl: ssl.SSLContext | None = httpx2.create_ssl_context() if parts.scheme == "https" else None
        self._prefix = parts.path.rstrip("/") + "/"
        host_header = self._host if self._port == default_port else f"{self._host}:{self._port}"
        if ":" in self._host:  # an IPv6 literal
            host_header = f"[{self._host}]" if self._port == default_port else f"[{self._host}]:{self._port}"
        fixed = {"Host": host_header, "Accept-Encoding": "gzip", **headers}
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
        if self._fixed.count("\n") != len(fixed) or self._fixed.count("\r") != len(fixed):
            raise ValueError("header names and values must not contain CR or LF")
        self._timeout = timeout
        self._max_connections = max_connections
        self._in_use = 0  # requests holding one of the `max_connections` slots
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._idle: list[_Connection] = []
        self._max_idle = max_connections
        self._max_body = max_body_bytes
        self._closed = False
        self._requests: dict[tuple[str, tuple[tuple[str, str | int], ...], tuple[tuple[str, str], ...]], bytes] = {}
        # Deadlines: one timer per client, not one per request. `_busy` holds each exchange in flight and its
        # deadline; the timer is set for the earliest of them and, when it fires, expires those that passed.
        self._busy: dict[_Connection, float] = {}
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = float("inf")
        self._watch_loop: asyncio.AbstractEventLoop | None = None
        self.connections_opened = 0
        """Connections opened since the client was built (reuse keeps it at the concurrency reached)."""

    @property
    def idle_connections(self) -> int:
        """Connections open and waiting for the next request."""
        return len(self._idle)

    async def get(
        self, path: str, *, params: Mapping[str, str | int] | None = None, headers: Mapping[str, str] | None = None
    ) -> LeanResponse:
        """GET `path` (relative to the base URL, may carry a query) with `params` and extra `headers`.

        Raises:
            LeanHTTPError: connecting, sending or reading failed, or the deadline passed.
        """
        if self._closed:
            raise LeanHTTPError("client closed", sent=False)
        request = self._request(path, params, headers)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        if self._in_use < self._max_connections and not self._slot_waiters:
            self._in_use += 1
        else:  # every connection busy: wait for one, within the same deadline
            await self._wait_for_slot(loop, deadline)
        try:
            conn = self._reusable()
            while True:
                fresh = conn is None
                if conn is None:
                    conn = await self._connect(loop, deadline)
                busy = self._busy
                busy[conn] = deadline
                if deadline < self._watch_at or loop is not self._watch_loop:
                    self._watch_until(loop, deadline)
                try:
                    return self._done(conn, await conn.send(request))
                except _Stale as exc:
                    conn.close()
                    if fresh:
                        raise LeanHTTPError("connection closed before an answer") from exc
                except BaseException:
                    conn.close()  # failed, timed out or cancelled halfway: the connection's state is unknown
                    raise
                finally:
                    del busy[conn]
                    conn.finished()
                conn = None  # closed by the server while idle: send once more on a new connection
        finally:
            self._release_slot()

    async def aclose(self) -> None:
        """Close every idle connection; later calls fail."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        if self._watch is not None and not self._busy:
            self._watch.cancel()
            self._watch, self._watch_at = None, float("inf")

    def _request(self, path: str, params: Mapping[str, str | int] | None, headers: Mapping[str, str] | None) -> bytes:
        """The request's bytes, remembered: a pass sends each project the same request (path, query, token
        and ETag) as the pass before, until something changes."""
        key = (path, tuple(params.items()) if params else (), tuple(headers.items()) if headers else ())
        request = self._requests.get(key)
        if request is not None:
            return request
        target = self._prefix + path
        if params:
            target += ("&" if "?" in target else "?") + _query(params)
        if not target.isascii() or not target.isprintable() or " " in target:
            target = quote(target, safe=_TARGET_SAFE)
        extra = ""
        if headers:
            extra = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
            if extra.count("\n") != len(headers) or extra.count("\r") != len(headers):
                raise ValueError("header names and values must not contain CR or LF")  # Security: no injection
        request = f"GET {target} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1")
        if len(self._requests) >= _MAX_REQUESTS:
            self._requests.clear()  # a new token makes every request new: start over rather than grow
        self._requests[key] = request
        return request

    def _reusable(self) -> _Connection | None:
        """The newest idle connection the server has not closed (the others found on the way are closed)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot just as the wait ended: pass it on
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                raise LeanHTTPError("timed out waiting for a connection", timeout=True, sent=False) from exc
            raise

    def _release_slot(self) -> None:
        """Hand the slot to the first request still waiting, else free it."""
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    def _watch_until(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch = loop.call_at(when, self._expire_due, loop)
        self._watch_at = when
        self._watch_loop = loop

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Expire the exchanges whose deadline passed; set the timer for the earliest one left."""
        self._watch, self._watch_at = None, float("inf")
        now = loop.time()
        later = float("inf")
        for conn, deadline in list(self._busy.items()):
            if deadline <= now:
                conn.expire()
            elif deadline < later:
                later = deadline
        if later < float("inf"):
            self._watch_until(loop, later)

    def _done(self, conn: _Connection, answer: tuple[LeanResponse, bool]) -> LeanResponse:
        response, reusable = answer
        if reusable and not self._closed and conn.usable() and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self._max_body, loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise LeanHTTPError("timed out connecting", timeout=True, sent=False) from exc
        except OSError as exc:
            raise LeanHTTPError(f"connect failed: {exc.__class__.__name__}", sent=False) from exc
        self.connections_opened += 1
        return conn


class _Stale(Exception):
    """A reused connection closed before any byte of the answer arrived."""


def _parse_head(text: str) -> tuple[int, dict[str, str]]:
    """The status and headers of an answer head (its status line and header lines, each ending in CRLF)."""
    first = text.index("\r\n")
    version, _, rest = text[:first].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise LeanHTTPError(f"malformed status line {text[:60]!r}")
    fields = _HEADER_RE.findall(text, first)
    if len(fields) != text.count("\r\n") - 1:
        raise LeanHTTPError("malformed header line")
    headers = {name.lower(): value for name, value in fields}
    if len(headers) != len(fields):  # a repeated header: its values joined, in order
        headers = {}
        for name, value in fields:
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(code), headers


def _query(params: Mapping[str, str | int]) -> str:
    """`params` as a query string, as `urlencode` writes it (remembered: a pass sends the same few)."""
    key = tuple(params.items())
    query = _QUERIES.get(key)
    if query is None:
        query = urlencode(params)
        if len(_QUERIES) < _MAX_QUERIES:
            _QUERIES[key] = query
    return query


_QUERIES: dict[tuple[tuple[str, str | int], ...], str] = {}
_MAX_QUERIES = 4096
_MAX_REQUESTS = 50_000  # remembered requests per client (~1 KiB each; one a project and list)


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise LeanHTTPError("malformed content-length")
    return int(values.pop())
