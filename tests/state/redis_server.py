"""A real redis-server (Debian's) on a free loopback port, for the state store's tests and the replicas."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

NO_REDIS = "redis-server not installed (Debian package redis-server; `make test` installs it when run as root)"


def has_redis() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """`redis-server` with no persistence; `stop()` kills it, `start()` brings it back on the same port."""

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None) -> None:
        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        self.port, self.workdir, self.password = port, workdir, password
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0, extra_args: list[str] | None = None) -> RedisServer:
        """Start it; `extra_args` (after the defaults, so they win) e.g. a deployment's own arguments."""
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir)]
        if self.password:
            args += ["--requirepass", self.password]
        args += extra_args or []
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self, graceful: bool = False) -> None:
        """Kill it; `graceful` lets it shut down as SIGTERM asks (it writes its append-only file)."""
        if self.proc is not None and self.proc.poll() is None:
            if graceful:
                self.proc.terminate()
            else:
                self.proc.kill()
            self.proc.wait(10)
