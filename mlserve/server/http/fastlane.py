"""The fast lane: an HTTP/1.1 front on the same port that serves v2 infer itself and hands every
other connection to the aiohttp application.

Why: aiohttp's request and response objects, router and writer cost about as much per request as
the rest of the hot path together; the parser (httptools, i.e. llhttp) and the event loop do not.
So every connection starts here. A request head is found in the buffer, parsed with httptools, and
if it is a plain HTTP/1.1 `POST /v2/models/{m}[/versions/{v}]/infer` with a Content-Length body,
the lane reads that body and calls the very `V2Handlers.infer` the aiohttp route runs (the same
gate, decode, service call, encode, error table, metrics and logs) with a light request object,
then writes the `web.Response` it returns. Anything else (other routes, chunked bodies,
`Expect: 100-continue`, upgrades, HTTP/1.0, odd or oversize heads, parse errors) is handed over:
the transport gets aiohttp's own RequestHandler, which is fed the bytes read so far, and the
connection stays aiohttp's from then on. Because the lane keeps whole requests, not a parser's
position, the hand-over always starts at the first byte of the request the lane did not serve.

The lane bounds what aiohttp does not: how long a head may take to arrive (slowloris), the gap
between body reads, idle keep-alive time, the number of open connections, and what a client that
does not read its answers can make the server buffer (reading pauses while the transport's write
buffer is over its high-water mark, or while pipelined bytes pile up behind a request being served).
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import logging
import re
import socket
import time
from typing import Any

import httptools
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy

from mlserve.config import ServerConfig
from mlserve.monitor.metrics import Metrics
from mlserve.server.response import json_error
from mlserve.server.origin import BrowserGate
from mlserve.server.http.v2 import V2Handlers

log = logging.getLogger("mlserve.server")

INFER_PATH = re.compile(r"/v2/models/([^{}/]+)(?:/versions/([^{}/]+))?/infer")
"""The two infer routes, as aiohttp's `{model}` / `{version}` placeholders match them."""

_READ_AHEAD = 1 << 20
"""Pipelined bytes buffered behind a request being served before reading pauses."""

_SWEEP_S = 0.5
_STATUS_LINES = {status.value: f"HTTP/1.1 {status.value} {status.phrase}\r\n" for status in http.HTTPStatus}
_SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n"

_REMEMBERED_HEADS = 512
"""Served heads kept by their bytes (a client sends the same head request after request)."""
_REMEMBERED_HEAD_BYTES = 2048
"""Longer heads are parsed every time: the memory the remembered heads hold stays about 1 MiB."""


class LaneRequest:
    """The members of `web.Request` the gate and the v2 infer handler read, nothing more."""

    __slots__ = ("method", "path", "headers", "match_info", "remote", "content_length", "_body", "_items")

    def __init__(self, path: str, headers: CIMultiDictProxy, match_info: dict[str, str], remote: str | None,
                 content_length: int, body: bytes) -> None:
        self.method = "POST"
        self.path = path
        self.headers = headers
        self.match_info = match_info
        self.remote = remote
        self.content_length = content_length
        self._body = body
        self._items: dict[Any, Any] = {}

    async def read(self) -> bytes:
        return self._body

    def __setitem__(self, key: Any, value: Any) -> None:
        self._items[key] = value

    def __getitem__(self, key: Any) -> Any:
        return self._items[key]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._items.get(key, default)


class _Head:
    """httptools callbacks for one request head: path, headers, version, keep-alive."""

    __slots__ = ("url", "raw_headers", "is_complete")

    def __init__(self) -> None:
        self.url = b""
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.is_complete = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def headers(self) -> CIMultiDict[str]:
        """Decoded as aiohttp decodes them, built in one call."""
        return CIMultiDict([(name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                            for name, value in self.raw_headers])

    def on_headers_complete(self) -> None:
        self.is_complete = True


class _Served:
    """A head the lane serves: the route's parts, the declared body length, keep-alive."""

    __slots__ = ("path", "headers", "match_info", "length", "keep_alive")

    def __init__(self, path: str, headers: CIMultiDictProxy, match_info: dict[str, str], length: int,
                 keep_alive: bool) -> None:
        self.path, self.headers, self.match_info = path, headers, match_info
        self.length, self.keep_alive = length, keep_alive


def parse_head(data: bytes) -> _Served | None:
    """The head (through its blank line) of a request the lane serves, or None to hand it over."""
    head = _Head()
    parser = httptools.HttpRequestParser(head)
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # llhttp stops at an upgrade
        return None
    if (not head.is_complete or parser.get_method() != b"POST" or parser.get_http_version() != "1.1"
            or not head.url.isascii()):
        return None
    url = head.url.decode("latin-1")
    path, _, _ = url.partition("?")
    route = INFER_PATH.fullmatch(path)
    if route is None or "%" in path or {route[1], route[2]} & {".", ".."}:  # aiohttp would resolve these
        return None
    headers = head.headers()
    length = headers.get("Content-Length")
    if (length is None or not length.isdigit() or len(headers.getall("Content-Length")) != 1
            or "Transfer-Encoding" in headers or "Expect" in headers or "Upgrade" in headers):
        return None
    connection = headers.get("Connection", "keep-alive").lower()
    if connection not in ("keep-alive", "close"):
        return None
    match_info = {"model": route[1]} if route[2] is None else {"model": route[1], "version": route[2]}
    return _Served(path, CIMultiDictProxy(headers), match_info, int(length),
                   connection != "close" and parser.should_keep_alive())


class _Clock:
    """The Date header, formatted once a second."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second, self._line = 0, ""

    def date_line(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {email.utils.formatdate(now, usegmt=True)}\r\n"
        return self._line


class LaneFront:
    """What every lane connection shares: the infer handler, aiohttp's connection factory, the
    settings, the open connections (for the bound, the timeouts and the drain)."""

    def __init__(self, v2: V2Handlers, browser: BrowserGate, aiohttp_server: web.Server, config: ServerConfig,
                 max_head_bytes: int, metrics: Metrics) -> None:
        self.v2 = v2
        self.browser = browser
        self.lane_closed = metrics.http_connections.labels("lane")
        self.handed_over = metrics.http_connections.labels("aiohttp")
        self.aiohttp_server = aiohttp_server
        self.config = config
        self.max_body_bytes = config.max_body_bytes
        self.max_head_bytes = max_head_bytes
        self.clock = _Clock()
        self._heads: dict[bytes, _Served] = {}
        self.connections: set[LaneConnection] = set()
        self.is_closing = False
        self._sweeper: asyncio.Task | None = None

    def __call__(self) -> LaneConnection:
        return LaneConnection(self)

    def is_for_aiohttp(self, head: _Served) -> bool:
        """A request the browser checks refuse, or one from a page (an Origin to answer with CORS):
        aiohttp's front middleware answers it, so both fronts refuse and allow exactly alike."""
        return "Origin" in head.headers or self.browser.check("POST", head.path, head.headers) is not None

    def served_head(self, raw: bytes) -> _Served | None:
        """The head the lane serves for these bytes, or None to hand the request over. Both checks
        depend on the bytes and the settings alone, so a served head is remembered by its bytes and
        shared by the requests that repeat it (nothing downstream changes a head's parts)."""
        head = self._heads.get(raw)
        if head is not None:
            return head
        head = parse_head(raw)
        if head is None or self.is_for_aiohttp(head):
            return None
        if len(raw) <= _REMEMBERED_HEAD_BYTES:
            if len(self._heads) >= _REMEMBERED_HEADS:
                self._heads.clear()
            self._heads[raw] = head
        return head

    @property
    def num_connections(self) -> int:
        return len(self.connections) + len(self.aiohttp_server.connections)

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        """One coarse timer for every connection's deadline instead of a timer per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_SWEEP_S)
            now = loop.time()
            for conn in list(self.connections):
                conn.check_deadline(now)

    async def drain(self, grace_s: float) -> None:
        """Idle connections close now; those serving a request close once it is answered."""
        self.is_closing = True
        for conn in list(self.connections):
            conn.close_when_idle()
        deadline = time.monotonic() + grace_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self._sweeper is not None:
            self._sweeper.cancel()


class LaneConnection(asyncio.Protocol):
    """One connection while the lane owns it: requests in order, one at a time (pipelined ones wait
    in the buffer), until a request the lane does not serve hands the connection to aiohttp."""

    def __init__(self, front: LaneFront) -> None:
        self._front = front
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._buffer = bytearray()
        self._head: _Served | None = None
        self._head_size = 0
        self._is_busy = False
        self._is_write_paused = False
        self._is_read_paused = False
        self._deadline = 0.0
        self._timeout_status = 0
        self._task: asyncio.Task | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        front = self._front
        if front.num_connections >= front.config.max_connections or front.is_closing:
            reason = "the server is stopping" if front.is_closing else \
                f"the server is at its limit of {front.config.max_connections} connections"
            self._write(json_error(503, reason, {"Retry-After": "1"}), keep_alive=False)
            transport.close()
            return
        front.connections.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, (tuple, list)) else None
        self._arm(front.config.keepalive_timeout_s, 0)

    def connection_lost(self, exc: Exception | None) -> None:
        self._front.connections.discard(self)
        self._front.lane_closed.inc()
        self._transport = None  # a request being served runs to its end (aiohttp does not cancel either)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._is_busy or self._is_write_paused:
            if len(self._buffer) > _READ_AHEAD:
                self._pause_reading()
            return
        self._advance()

    def pause_writing(self) -> None:
        self._is_write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._is_write_paused = False
        if not self._is_busy:
            self._advance()

    # -- requests --------------------------------------------------------------------------------

    def _advance(self) -> None:
        """Serve the next whole request in the buffer, wait for more bytes, or hand over."""
        if self._transport is None or self._is_write_paused:
            return
        self._resume_reading()
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n", 0, self._front.max_head_bytes + 4)
            if end < 0:
                if len(self._buffer) > self._front.max_head_bytes:
                    self._hand_over()
                elif self._buffer and not self._timeout_status:  # a head has begun: its clock starts
                    self._arm(self._front.config.header_timeout_s, 408)
                return
            head = self._front.served_head(bytes(self._buffer[: end + 4]))
            if head is None:
                self._hand_over()
                return
            self._head, self._head_size = head, end + 4
            if head.length > self._front.max_body_bytes:  # refused from the head alone: the gate says 413
                self._start(head, b"")
                return
        head = self._head
        end = self._head_size + head.length
        if len(self._buffer) < end:
            self._arm(self._front.config.body_timeout_s, 408)  # the gap between reads of a body
            return
        body = bytes(self._buffer[self._head_size : end])
        del self._buffer[:end]
        self._start(head, body)

    def _start(self, head: _Served, body: bytes) -> None:
        self._is_busy = True
        self._deadline, self._timeout_status = 0.0, 0
        request = LaneRequest(head.path, head.headers, head.match_info, self._remote, head.length, body)
        self._task = self._loop.create_task(self._serve(request, head.keep_alive))

    async def _serve(self, request: LaneRequest, keep_alive: bool) -> None:
        response = await self._front.v2.infer(request)  # type: ignore[arg-type]
        self._task = None
        self._head = None
        if self._transport is None:
            return
        keep_alive = keep_alive and response.keep_alive is not False and not self._front.is_closing
        self._write(response, keep_alive)
        self._is_busy = False
        if not keep_alive:
            self._transport.close()
            return
        self._arm(self._front.config.keepalive_timeout_s, 0)
        if self._buffer:
            self._advance()

    def _write(self, response: web.Response, keep_alive: bool) -> None:
        body = response.body
        assert isinstance(body, bytes)
        status = response.status
        lines = [f"{name}: {value}\r\n" for name, value in response.headers.items()]
        lines.append(f"Content-Length: {len(body)}\r\n{self._front.clock.date_line()}{_SERVER_LINE}")
        lines.append("\r\n" if keep_alive else "Connection: close\r\n\r\n")
        status_line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} {response.reason}\r\n"
        assert self._transport is not None
        self._transport.write((status_line + "".join(lines)).encode("latin-1") + body)

    def _hand_over(self) -> None:
        """The rest of this connection is aiohttp's, starting with the bytes read so far."""
        transport = self._transport
        assert transport is not None
        self._front.connections.discard(self)
        self._front.handed_over.inc()
        self._transport = None
        handler = self._front.aiohttp_server()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        self._resume_reading(transport)
        if self._buffer:
            handler.data_received(bytes(self._buffer))
        self._buffer.clear()

    # -- deadlines, reading, closing -------------------------------------------------------------

    def _arm(self, seconds: float, status: int) -> None:
        self._deadline = self._loop.time() + seconds if seconds > 0 else 0.0
        self._timeout_status = status

    def check_deadline(self, now: float) -> None:
        if (self._is_busy or self._is_write_paused or not self._deadline or now < self._deadline
                or self._transport is None):
            return
        if self._timeout_status:
            what = "request head" if self._head is None else "request body"
            self._write(json_error(408, f"the {what} did not arrive in time"), keep_alive=False)
        self._transport.close()

    def close_when_idle(self) -> None:
        if not self._is_busy and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _pause_reading(self) -> None:
        if not self._is_read_paused and self._transport is not None:
            self._is_read_paused = True
            self._transport.pause_reading()

    def _resume_reading(self, transport: asyncio.Transport | None = None) -> None:
        transport = transport or self._transport
        if self._is_read_paused and transport is not None:
            self._is_read_paused = False
            transport.resume_reading()


class LaneSite(web.BaseSite):
    """A TCP site whose connections start in the lane; the runner stops it like any site, and its
    stop drains the lane's connections before aiohttp drains its own."""

    __slots__ = ("_front", "_host", "_port", "_grace_s")

    def __init__(self, runner: web.AppRunner, front: LaneFront, host: str, port: int, grace_s: float) -> None:
        super().__init__(runner)
        self._front, self._host, self._port, self._grace_s = front, host, port, grace_s

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    async def start(self) -> None:
        await super().start()
        self._server = await asyncio.get_running_loop().create_server(
            self._front, self._host, self._port, reuse_address=True, backlog=1024)
        self._front.start()

    async def stop(self) -> None:
        await super().stop()
        await self._front.drain(self._grace_s)
