"""A lean keep-alive HTTP/1.1 GET client on asyncio streams, for the forge client's API GETs.

Why it exists: an unchanged reconcile pass is one conditional GET per project answered 304, and under
`httpx2`/`httpcore2` about 90% of that pass's CPU was the client's request path (building request and
header objects, the connection pool's scan of every connection on each request, response decoding), about
ten times the cost of the exchange itself. This client does only what those GETs need:

- one request line and a handful of headers written in one `write`, the status line and headers read in
  one `readuntil`, bodies by `Content-Length` or `Transfer-Encoding: chunked` (or to EOF on
  `Connection: close`), `gzip` decoded;
- idle connections kept in a LIFO list (reused newest first, no scan), at most `max_connections` open at
  once; a connection the server closed while idle is dropped before use, and a GET that fails on a reused
  connection before any answer byte arrives is sent once more on a new one (the server may close an idle
  connection just as the request leaves);
- one deadline (`timeout` seconds) over the whole exchange: waiting for a connection slot, connecting,
  writing and reading; a connection whose exchange was interrupted is closed, never reused;
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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import httpx2

__all__ = ["ConditionalGetClient", "LeanHTTPError", "LeanResponse"]

_NO_BODY = frozenset({204, 304})
_MAX_HEADER_BYTES = 256 * 1024
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")  # query characters `urlencode` leaves as they are
_TARGET_SAFE = "/?&=%:@!$'()*+,;~-._"  # RFC 3986 path and query characters, '%' kept as is


class LeanHTTPError(Exception):
    """The exchange failed. `timeout`: the deadline passed; `sent`: the request may have reached the server."""

    def __init__(self, message: str, *, timeout: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.sent = sent


@dataclass(frozen=True, slots=True)
class LeanResponse:
    """A complete answer: status, headers (names lower-cased, repeated ones joined by ", ") and body."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not JSON)."""
        return json.loads(self.content)


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """Whether an idle connection can carry another request (the server has not closed it)."""
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


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
        _check_header_text(self._fixed)
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[_Connection] = []
        self._max_idle = max_connections
        self._max_body = max_body_bytes
        self._closed = False

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
        target = self._prefix + path
        if params:
            target += ("&" if "?" in target else "?") + _query(params)
        if not target.isascii() or not target.isprintable() or " " in target:
            target = quote(target, safe=_TARGET_SAFE)
        extra = ""
        if headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            if extra.count("\n") != len(headers) or extra.count("\r") != len(headers):
                raise ValueError("header names and values must not contain CR or LF")  # Security: no injection
        request = f"GET {target} HTTP/1.1\r\n{self._fixed}{extra}\r\n".encode("latin-1")
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:
                    return await self._exchange(request)
        except TimeoutError as exc:
            raise LeanHTTPError("timed out", timeout=True) from exc

    async def aclose(self) -> None:
        """Close every idle connection; later calls fail."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def _exchange(self, request: bytes) -> LeanResponse:
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable():
                conn.close()
                continue
            try:
                return await self._on(conn, request)
            except _Stale:
                conn.close()  # closed by the server while idle: send once more on a new connection
                break
        conn = await self._connect()
        try:
            return await self._on(conn, request)
        except _Stale as exc:
            conn.close()
            raise LeanHTTPError("connection closed before an answer") from exc

    async def _connect(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
                limit=_MAX_HEADER_BYTES,
            )
        except OSError as exc:
            raise LeanHTTPError(f"connect failed: {exc.__class__.__name__}", sent=False) from exc
        return _Connection(reader, writer)

    async def _on(self, conn: _Connection, request: bytes) -> LeanResponse:
        """One exchange on `conn`; returns it to the idle list when the answer leaves it reusable."""
        done = False
        try:
            response, reusable = await self._roundtrip(conn, request)
            done = True
        finally:
            if not done:  # failed, timed out or cancelled halfway: the connection's state is unknown
                conn.close()
        if reusable and not self._closed and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return response

    async def _roundtrip(self, conn: _Connection, request: bytes) -> tuple[LeanResponse, bool]:
        reader = conn.reader
        try:
            conn.writer.write(request)
            await conn.writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale from exc
            raise LeanHTTPError("connection closed in the answer's headers") from exc
        except (ConnectionError, BrokenPipeError) as exc:
            raise _Stale from exc
        except asyncio.LimitOverrunError as exc:
            raise LeanHTTPError("answer headers too large") from exc
        except OSError as exc:
            raise LeanHTTPError(f"read failed: {exc.__class__.__name__}") from exc
        status, headers = _parse_head(head)
        if 100 <= status < 200:
            raise LeanHTTPError(f"unexpected interim answer {status}")
        keep_alive = headers.get("connection", "").lower() != "close"
        try:
            if status in _NO_BODY:
                body = b""
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                body = await self._chunked(reader)
            elif "content-length" in headers:
                length = _content_length(headers["content-length"])
                if length > self._max_body:
                    raise LeanHTTPError("answer body too large")
                body = await reader.readexactly(length)
            else:
                keep_alive = False
                body = await reader.read(self._max_body + 1)
                while body and len(body) <= self._max_body and not reader.at_eof():
                    more = await reader.read(self._max_body + 1 - len(body))
                    if not more:
                        break
                    body += more
                if len(body) > self._max_body:
                    raise LeanHTTPError("answer body too large")
        except asyncio.IncompleteReadError as exc:
            raise LeanHTTPError("connection closed in the answer's body") from exc
        except (asyncio.LimitOverrunError, ValueError) as exc:
            raise LeanHTTPError("malformed answer body framing") from exc
        except OSError as exc:
            raise LeanHTTPError(f"read failed: {exc.__class__.__name__}") from exc
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if body and encoding == "gzip":
            try:
                body = zlib.decompressobj(wbits=31).decompress(body, self._max_body + 1)
            except zlib.error as exc:
                raise LeanHTTPError("answer body is not valid gzip") from exc
            if len(body) > self._max_body:
                raise LeanHTTPError("answer body too large")
        elif encoding not in ("identity", ""):
            raise LeanHTTPError(f"unsupported content encoding {encoding!r}")
        return LeanResponse(status, headers, body), keep_alive

    async def _chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, ignored
                    pass
                return b"".join(parts)
            total += size
            if total > self._max_body:
                raise LeanHTTPError("answer body too large")
            chunk = await reader.readexactly(size + 2)
            if chunk[-2:] != b"\r\n":
                raise ValueError("chunk not terminated by CRLF")
            parts.append(chunk[:-2])


class _Stale(Exception):
    """A reused connection failed before any byte of the answer arrived."""


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise LeanHTTPError(f"malformed status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise LeanHTTPError("malformed header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(code), headers


def _query(params: Mapping[str, str | int]) -> str:
    """`params` as a query string (`urlencode`'s, without its per-character work for plain values)."""
    plain = all(_PLAIN.fullmatch(str(k)) and _PLAIN.fullmatch(str(v)) for k, v in params.items())
    return "&".join(f"{k}={v}" for k, v in params.items()) if plain else urlencode(params)


def _content_length(value: str) -> int:
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise LeanHTTPError("malformed content-length")
    return int(values.pop())


def _check_header_text(text: str) -> None:
    # Security: a header value with a bare CR or LF could inject headers or a second request.
    if any(line.count("\r") or "\n" in line for line in text.split("\r\n")):
        raise ValueError("header names and values must not contain CR or LF")
