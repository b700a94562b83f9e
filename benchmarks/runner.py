"""Starting pinned servers and measuring one load point against them (wrk or the open-loop generator)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
LUA = Path(__file__).with_name("load.lua")
INFER_PATH = "/v2/models/mlp/versions/1/infer"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(slots=True)
class Body:
    """One request body on disk; `header_length` set for the binary tensor extension."""

    label: str
    path: Path
    header_length: str | None = None


@dataclass(slots=True)
class Point:
    """One measured load point."""

    server: str
    load: str
    body: str
    req_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float | None
    cpu_percent: float
    errors: int
    statuses: dict[str, int] = field(default_factory=dict)
    repeats: list[int] = field(default_factory=list)
    """req/s of every round of this point when it was repeated."""
    per_cpu_s: float = 0.0
    """Requests per CPU-second of the server process: what one whole core would do, on a shared machine."""

    def __post_init__(self) -> None:
        self.per_cpu_s = self.req_per_s / (self.cpu_percent / 100) if self.cpu_percent > 0 else 0.0


@dataclass(slots=True)
class Server:
    kind: str
    url: str
    pid: int
    grpc_target: str = ""
    """host:port of mlserve's gRPC server (empty for the others)."""
    token: str = ""
    """The API key every request carries (mlserve serves with keys required, as a user runs it)."""


def bodies(work: Path) -> tuple[Body, Body]:
    """One row of 768 FP32 values, as v2 JSON and as the binary extension (binary output too)."""
    x = np.random.default_rng(7).standard_normal(768, dtype=np.float32)
    plain = {"inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "data": x.tolist()}]}
    json_path = work / "request.json"
    json_path.write_bytes(orjson.dumps(plain))
    header = orjson.dumps({
        "inputs": [{"name": "x", "shape": [1, 768], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    })
    binary_path = work / "request.bin"
    binary_path.write_bytes(header + x.tobytes())
    return Body("json", json_path), Body("binary", binary_path, str(len(header)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _command(kind: str, work: Path, port: int, grpc_port: int = 0) -> list[str]:
    if kind == "mlserve":
        return [sys.executable, "-m", "mlserve", "start", "--models", str(work / "models"), "--port", str(port),
                "--grpc-port", str(grpc_port), "--log-level", "warning", "--auth-keys", str(work / "keys.json")]
    model = work / "models" / "mlp" / "1" / "model.onnx"
    return [sys.executable, "-m", "benchmarks.reference_servers", kind, "--port", str(port), "--model", str(model)]


def bench_key(work: Path) -> str:
    """An infer-scope key in work/keys.json (created once); every server is sent it, mlserve checks it."""
    from mlserve.keys import create_key

    token_file = work / "bench.token"
    if not token_file.exists():
        token_file.write_text(create_key(work / "keys.json", "bench", ("infer",)))
    return token_file.read_text().strip()


@contextlib.contextmanager
def start_server(kind: str, work: Path, core: str, env: dict[str, str] | None = None):
    """Run one server pinned to `core` until the block ends; `env` adds settings (MLSERVE_*)."""
    port, grpc_port = _free_port(), _free_port() if kind == "mlserve" else 0
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    log = open(work / f"{kind}-{port}.log", "wb")
    proc = subprocess.Popen(["taskset", "-c", core, *_command(kind, work, port, grpc_port)], stdout=log,
                            stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url, work / f"{kind}-{port}.log")
        yield Server(kind, url, proc.pid, f"127.0.0.1:{grpc_port}" if grpc_port else "", bench_key(work))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"server not ready after {timeout} s")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _batch_totals(server: Server) -> tuple[float, float] | None:
    """mlserve's rows-per-batch histogram sum and count for mlp version 1."""
    if server.kind != "mlserve":
        return None
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    totals = {"sum": 0.0, "count": 0.0}
    for family in text_string_to_metric_families(text):
        if family.name == "mlserve_batch_size":
            for sample in family.samples:
                suffix = sample.name.rsplit("_", 1)[1]
                if suffix in totals and sample.labels.get("model") == "mlp":
                    totals[suffix] += sample.value
    return totals["sum"], totals["count"]


def _mean_batch(server: Server, before, after) -> float | None:
    if server.kind == "naive":
        return 1.0
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _measure(server: Server, command: list[str], env: dict[str, str]) -> tuple[str, float, float | None]:
    """Run one load generator; return its output, the server's CPU % of one core, and its mean batch."""
    before_batch, before_cpu, started = _batch_totals(server), _cpu_seconds(server.pid), time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
    elapsed, cpu = time.monotonic() - started, _cpu_seconds(server.pid) - before_cpu
    return out, 100 * cpu / elapsed, _mean_batch(server, before_batch, _batch_totals(server))


def wrk_point(name: str, server: Server, body: Body, concurrency: int, seconds: float, core: str,
              count_status: bool = False, path: str = INFER_PATH) -> Point:
    """Closed loop: `concurrency` connections, each sending its next request when the last came back."""
    env = {**os.environ, "BENCH_BODY": str(body.path), "BENCH_HEADER_LENGTH": body.header_length or "",
           "BENCH_COUNT_STATUS": "1" if count_status else "0", "BENCH_TOKEN": server.token}
    command = ["taskset", "-c", core, "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
               "-s", str(LUA), server.url + path]
    out, cpu, mean_batch = _measure(server, command, env)
    line = next(x for x in out.splitlines() if x.startswith("BENCH_JSON "))
    r = json.loads(line.removeprefix("BENCH_JSON "))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    return Point(name, f"c={concurrency}", body.label, r["requests"] / (r["duration_us"] / 1e6),
                 r["p50_us"] / 1e3, r["p95_us"] / 1e3, r["p99_us"] / 1e3, mean_batch, cpu, errors,
                 {str(k): v for k, v in r["statuses"].items()})


def grpc_point(name: str, server: Server, body: Body, concurrency: int, seconds: float, core: str,
               stream: bool = False, num_streams: int = 1) -> Point:
    """Closed loop over gRPC (benchmarks.grpcload): ModelInfer with raw tensors, `concurrency` in flight
    (unary calls, or outstanding on `num_streams` ModelStreamInfer streams)."""
    command = ["taskset", "-c", core, sys.executable, "-m", "benchmarks.grpcload", "--target", server.grpc_target,
               "--body", str(body.path), "--concurrency", str(concurrency), "--seconds", str(seconds),
               "--token", server.token, *(["--stream", "--streams", str(num_streams)] if stream else [])]
    out, cpu, mean_batch = _measure(server, command, {**os.environ, "PYTHONPATH": str(ROOT)})
    r = json.loads(out.strip().splitlines()[-1])
    return Point(name, f"c={concurrency}", body.label, r["requests"] / (r["duration_us"] / 1e6),
                 r["p50_us"] / 1e3, r["p95_us"] / 1e3, r["p99_us"] / 1e3, mean_batch, cpu, r["errors"],
                 r["statuses"])


def open_loop(name: str, server: Server, body: Body, rate: float, seconds: float, core: str) -> Point:
    """Open loop: requests leave at `rate` per second whatever the server does."""
    command = ["taskset", "-c", core, sys.executable, "-m", "benchmarks.openloop", "--url", server.url + INFER_PATH,
               "--body", str(body.path), "--rate", str(rate), "--seconds", str(seconds), "--token", server.token]
    if body.header_length:
        command += ["--header-length", body.header_length]
    out, cpu, mean_batch = _measure(server, command, {**os.environ, "PYTHONPATH": str(ROOT)})
    r = json.loads(out.strip().splitlines()[-1])
    statuses = {str(k): v for k, v in r["statuses"].items()}
    errors = sum(v for k, v in statuses.items() if k != "200") + r["sent"] - r["completed"]
    return Point(name, f"open {rate:g}/s", body.label, r["req_per_s"], r["p50_ms"], r["p95_ms"], r["p99_ms"],
                 mean_batch, cpu, errors, statuses)


def engine_samples_per_s(model: Path, batches: list[int], seconds: float, core: str) -> dict[str, float]:
    command = ["taskset", "-c", core, sys.executable, "-m", "benchmarks.engine", "--model", str(model),
               "--batch", *map(str, batches), "--seconds", str(seconds)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
    return json.loads(out)
