"""The local replica setup (deploy/local/replicas.py) as the tests drive it: an S3 repository on a
moto server, steady client load through nginx, and small HTTP helpers."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.server_process import ROOT

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
}


def load_replicas_module():
    """deploy/local/replicas.py is a script, not a package module: load it from its path."""
    spec = importlib.util.spec_from_file_location("mlserve_local_replicas", ROOT / "deploy" / "local" / "replicas.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    version: str | None
    upstream: str | None


def infer(base_url: str, model: str, user: str | None = None, timeout: float = 30.0) -> Answer:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]}]})
    headers = {"Content-Type": "application/json", **({"X-User-Id": user} if user else {})}
    req = urllib.request.Request(f"{base_url}/v2/models/{model}/infer", body.encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
            assert payload["outputs"][0]["data"] == [1.0, 2.0, 3.0], payload
            return Answer(resp.status, payload["model_version"], resp.headers.get("X-Mlserve-Upstream"))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, None, exc.headers.get("X-Mlserve-Upstream"))
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        return Answer(0, repr(exc), None)


@dataclass
class SteadyLoad:
    """Client threads sending requests through nginx, each at most every `pause_s`, until stopped or
    `max_s` passes. Counts every answer; a failed one keeps its status for the message."""

    url: str
    model: str
    num_threads: int = 4
    pause_s: float = 0.05
    max_s: float = 90.0
    answers: Counter = field(default_factory=Counter)
    upstreams: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            answer = infer(self.url, self.model)
            with self._lock:
                self.answers[answer.status] += 1
                self.upstreams[answer.upstream] += 1
                if answer.status != 200:
                    self.failures.append(answer)
            self._stop.wait(self.pause_s)

    def __enter__(self) -> SteadyLoad:
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.num_threads)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.answers.values())

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        """Block until `count` more answers have come back (the load is really running)."""
        target, deadline = self.total + count, time.monotonic() + timeout
        while self.total < target:
            assert time.monotonic() < deadline, f"load stalled at {self.total} answers"
            time.sleep(0.05)


def poll(predicate, timeout: float, interval: float = 0.1) -> float:
    """Seconds until `predicate()` held; fails the test past `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not true after {timeout} s"
        time.sleep(interval)
    return time.monotonic() - start


def call_json(url: str, body=None, method: str = "GET") -> tuple[int, dict]:
    """(status, JSON body) of one call; (0, {}) when nothing answers (a replica just killed)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


@contextlib.contextmanager
def redis_replicas(args: list[str], workdir: Path, num_replicas: int = 3, env: dict[str, str] | None = None):
    """`num_replicas` replicas behind nginx sharing one real redis-server (replicas.py --state redis);
    every replica must exit 0 at the end, else the failure shows each one's log."""
    replicas = load_replicas_module().Replicas(
        args, num_replicas=num_replicas, workdir=workdir, state="redis",
        env={"PYTHONPATH": str(ROOT), "MLSERVE_LIMITS_SHUTDOWN_DELAY_S": "0.2", **(env or {})},
    )
    try:
        yield replicas.start()
    finally:
        codes = replicas.stop()
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(replicas.workdir.glob("*.log")))
    assert codes == [0] * num_replicas, logs
