"""Starts a real `mlserve start` process on a free port, for end-to-end tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlserveProcess:
    """A live server: `url`, `port`, `log()`; `stop()` sends SIGTERM and returns the exit code."""

    def __init__(self, models: str | Path, *args: str, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path = ROOT) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        if "--grpc-port" not in args:  # gRPC's default port is fixed: test servers take one only when asked
            args = (*args, "--grpc-port", "0")
        command = [sys.executable, "-m", "mlserve", "start", "--models", str(models), "--port", str(self.port), *args]
        # the checkout first, then whatever the caller's path adds (the GPU check's carried packages)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        full_env = {**os.environ, "PYTHONPATH": path, **(env or {})}
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)

    def wait_ready(self, timeout: float = 120.0) -> MlserveProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"mlserve not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def serving(models: str | Path, *args: str, log_path: Path, env: dict[str, str] | None = None, cwd: Path = ROOT):
    """A ready server for the block (started in `cwd`); on leaving it gets SIGTERM and must exit 0."""
    proc = MlserveProcess(models, *args, log_path=log_path, env=env, cwd=cwd).wait_ready()
    try:
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, f"mlserve exited with {code}:\n{proc.log()}"
