"""HTTP/1.1 over a plain socket, for tests that must choose what travels on which connection
(pipelining, hand-over, slow clients): requests are bytes the test writes, answers are read back
exactly as the server framed them."""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                  version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    given = {k.lower() for k in (headers or {})}
    if "content-length" not in given and "transfer-encoding" not in given and (body or method == "POST"):
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class RawConnection:
    """One client connection; `read_answer` reads exactly one response off it."""

    def __init__(self, port: int, timeout: float = 30.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so the window the server sees is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self._pending = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(1 << 16)
        self._pending += chunk
        return bool(chunk)

    def read_answer(self) -> RawAnswer:
        while b"\r\n\r\n" not in self._pending:
            if not self._fill():
                raise ConnectionError(f"closed before a response head ({self._pending[:200]!r})")
        head, self._pending = self._pending.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(self._pending) < length:
            if not self._fill():
                raise ConnectionError("closed inside a response body")
        body, self._pending = self._pending[:length], self._pending[length:]
        return RawAnswer(int(status_line.split()[1]), headers, body)

    def call(self, data: bytes) -> RawAnswer:
        self.send(data)
        return self.read_answer()

    def is_closed_by_server(self) -> bool:
        """Waits (up to the socket's timeout) for the server to close its side: True when it did,
        False when bytes came instead or nothing happened in time."""
        try:
            return not self._fill() and not self._pending
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()
