"""Open-loop load: requests leave at a fixed arrival rate whether or not earlier ones came back.

    python -m benchmarks.openloop --url http://127.0.0.1:P/v2/models/mlp/infer --body F --rate 2000 --seconds 5

Latency is measured from each request's scheduled send time, so a server that falls behind is
charged for the wait (no coordinated omission). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from urllib.parse import urlsplit

import numpy as np
import orjson
import uvloop

MAX_CONNECTIONS = 256


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that carries one request at a time."""

    def __init__(self, on_response) -> None:
        self._on_response = on_response
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.scheduled_at = 0.0
        self.is_busy = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buffer[:end]).lower()
        start = head.find(b"content-length:")
        length = int(head[start + 15:].split(b"\r\n", 1)[0]) if start >= 0 else 0
        if len(self._buffer) < end + 4 + length:
            return
        status = int(head[9:12])
        del self._buffer[: end + 4 + length]
        self._on_response(self, status)

    def connection_lost(self, exc) -> None:
        self._on_response(self, 0)


class OpenLoop:
    """Sends at `rate` per second over a pool of connections; a request with no free connection waits
    in a backlog, and its wait counts in its latency."""

    def __init__(self, host: str, port: int, request: bytes | list[bytes]) -> None:
        """`request`: the bytes of one request, or several sent in turn."""
        self._host, self._port = host, port
        self._requests = [request] if isinstance(request, bytes) else list(request)
        self._sent = 0
        self._idle: deque[_Connection] = deque()
        self._backlog: deque[float] = deque()
        self._num_open = 0
        self.latencies: list[float] = []
        self.status_list: list[int] = []
        """Each answer's status, in the order of `latencies` (0: the connection closed)."""
        self.statuses: dict[int, int] = {}

    def _on_response(self, conn: _Connection, status: int) -> None:
        if status == 0:  # connection closed
            self._num_open -= 1
            if conn in self._idle:
                self._idle.remove(conn)
                return
        if not conn.is_busy:
            return
        conn.is_busy = False
        self.latencies.append(time.perf_counter() - conn.scheduled_at)
        self.status_list.append(status)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 0:
            return
        if self._backlog:
            self._send(conn, self._backlog.popleft())
        else:
            self._idle.append(conn)

    def _send(self, conn: _Connection, scheduled_at: float) -> None:
        conn.scheduled_at = scheduled_at
        conn.is_busy = True
        conn.transport.write(self._requests[self._sent % len(self._requests)])
        self._sent += 1

    async def _dispatch(self, scheduled_at: float) -> None:
        if self._idle:
            self._send(self._idle.popleft(), scheduled_at)
        elif self._num_open < MAX_CONNECTIONS:
            self._num_open += 1
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: _Connection(self._on_response), self._host, self._port)
            self._send(conn, scheduled_at)
        else:
            self._backlog.append(scheduled_at)

    async def run(self, rate: float, seconds: float) -> dict:
        total = int(rate * seconds)
        started = time.perf_counter()
        pending = set()
        for i in range(total):
            when = started + i / rate
            delay = when - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self._dispatch(when))
            pending.add(task)
            task.add_done_callback(pending.discard)
        while len(self.latencies) < total and time.perf_counter() - started < seconds + 3:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        ms = np.array(self.latencies) * 1e3 if self.latencies else np.zeros(1)
        return {
            "rate": rate, "sent": total, "completed": len(self.latencies), "req_per_s": len(self.latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "statuses": self.statuses,
        }


def _request_bytes(url: str, body: bytes, header_length: str | None, token: str = "") -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    headers = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {len(body)}"]
    if token:
        headers.append(f"Authorization: Bearer {token}")
    if header_length:
        headers += ["Content-Type: application/octet-stream", f"Inference-Header-Content-Length: {header_length}"]
    else:
        headers.append("Content-Type: application/json")
    return parts.hostname, parts.port, ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", required=True)
    parser.add_argument("--header-length")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--token", default="", help="API key sent as a bearer token")
    args = parser.parse_args()
    with open(args.body, "rb") as fh:
        host, port, request = _request_bytes(args.url, fh.read(), args.header_length, args.token)
    result = uvloop.run(OpenLoop(host, port, request).run(args.rate, args.seconds))
    print(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode())


if __name__ == "__main__":
    main()
